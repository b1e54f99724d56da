"""Atomic writes (temp file in the same directory + ``os.replace``) and safe checkpoint loading.

A temp file is named ``.<name>.<random>.tmp``.  A process killed mid-write (SIGKILL) leaves it behind; the stages
remove such leftovers when they start (:func:`remove_stale_temp_files`), and ``.dvcignore`` keeps them out of DVC's
outputs.  A full disk raises :class:`~pipeline.errors.DiskFullError` naming the file, not the writer's own error.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.errors import CheckpointError, DiskFullError

if TYPE_CHECKING:  # torch is imported where it is used: supervising processes import this module without it
    import torch

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_save_torch", "load_checkpoint", "sha256_file",
           "remove_stale_temp_files", "TEMP_GLOB"]

#: the names :func:`_atomic` gives its temp files
TEMP_GLOB = ".*.tmp"


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised from is "no space left" (torch wraps the OSError in its own)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _atomic(path: Path | str, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            try:
                free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
            except OSError:
                free = "free space unknown"
            raise DiskFullError(f"no space left on the device while writing {path} ({free} there); free some space "
                                "and rerun: nothing was replaced, and a training resumes from its last complete epoch "
                                "checkpoint") from None
        raise


def remove_stale_temp_files(*dirs: Path | str) -> list[Path]:
    """Delete the temp files an interrupted atomic write left in ``dirs`` and their subdirectories (call it when a
    stage starts, before it writes there: a temp file of a live writer of the same outputs would go too)."""
    removed = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for tmp in d.rglob(TEMP_GLOB):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed


def atomic_write_text(path: Path | str, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_save_torch(path: Path | str, obj: Any) -> None:
    import torch
    _atomic(path, lambda f: torch.save(obj, f), "wb")


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle); "
                              "expected a file written by torch.save holding a state_dict of tensors")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated file or one holding non-tensor objects
        raise CheckpointError(f"cannot load checkpoint {path} safely (weights_only=True): {type(e).__name__}: {e}; "
                              "expected a file written by torch.save holding tensors and plain containers only") from None


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
