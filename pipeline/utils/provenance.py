"""Provenance recorded in every metrics file, and device selection."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the training stage's supervisor imports this module without torch
    import torch

__all__ = ["provenance", "resolve_device", "git_commit", "record_code_version"]


#: what decides results: a difference here from ``HEAD`` marks the commit ``-dirty`` (generated reports do not)
SOURCE_PATHS = ("pipeline", "workflow", "params.yaml", "requirements.txt", "dvc.yaml")


@functools.lru_cache(maxsize=None)
def git_commit(root: Path | str = ".") -> str:
    """``HEAD`` commit, suffixed ``-dirty`` when tracked code or parameters differ from it; ``unknown`` outside git.

    Read once per process and cached: stages call it when they start (:func:`record_code_version`), so an hours-long
    training records the code it ran, not whatever was checked out when it finished."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_code_version() -> str:
    """Fix this process's provenance commit now (call at stage start); later :func:`provenance` calls reuse it."""
    return git_commit(Path(__file__).resolve().parents[2])


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA if present else CPU; ``cuda`` without a GPU is an error.

    Also switches TF32 off for matrix products and cuDNN convolutions: with TF32 (a default on recent GPUs) a float32
    model's forward pass carries ~1e-3 relative error, far above the rounding the certification's ``margin_tol``
    covers, so predictions, attacks and re-checks would not be the float32 model the bounds are about.
    """
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no CUDA device (use 'auto' or 'cpu')")
    return torch.device(requested)


def provenance(device: torch.device, params_digest: str, dtype: str = "float32",
               checkpoint_sha256: str | None = None, data_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """What a result was computed with; ``data_sha256``: each dataset file the run read (path under the data root)
    -> its sha256, so the tables can refuse to put rows computed on different data side by side."""
    import torch
    return {
        "commit": git_commit(Path(__file__).resolve().parents[2]),
        "params_digest": params_digest,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        "threads": torch.get_num_threads(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
        "dtype": dtype,
        "checkpoint_sha256": checkpoint_sha256,
        "data_sha256": dict(sorted((data_sha256 or {}).items())),
    }
