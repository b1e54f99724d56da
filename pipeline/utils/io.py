"""Atomic writes (temp file in the same directory + ``os.replace``) and safe checkpoint loading."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.errors import CheckpointError

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_save_torch", "load_checkpoint", "sha256_file"]


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_save_torch(path: Path | str, obj: Any) -> None:
    _atomic(path, lambda f: torch.save(obj, f), "wb")


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated file or one holding non-tensor objects
        raise CheckpointError(f"cannot load checkpoint {path} safely (weights_only=True): {e}") from None


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
