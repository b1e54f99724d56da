"""Safe reader for CIFAR-10 "python version" batch files.

The batches are pickled dicts (``batch_label``, ``labels``, ``data``,
``filenames``) written by Python 2 cPickle with protocol 2.  Plain
``pickle.load`` would execute any global a file names, so this module uses a
restricted unpickler that resolves only the globals a numpy uint8 array needs
and refuses everything else with :class:`pipeline.errors.DataError`.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError

__all__ = ["CIFAR_IMAGE_SHAPE", "ALLOWED_GLOBALS", "RestrictedUnpickler", "read_cifar_batch"]

CIFAR_IMAGE_SHAPE: tuple[int, int, int] = (3, 32, 32)
_ROW_LEN = 3 * 32 * 32
_NUM_CLASSES = 10
_REQUIRED_KEYS = ("data", "labels", "filenames")


def _reconstruct() -> Any:
    """Return numpy's array ``_reconstruct`` without touching the deprecated ``numpy.core`` shim."""
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


#: (module, name) -> object; the only globals a CIFAR pickle may reference.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` allows only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global or raise DataError naming the forbidden one."""
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            raise DataError(
                f"CIFAR batch {self._path} references forbidden global {module}.{name}; "
                f"refusing to load it (expected only numpy array globals: {allowed})"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: CIFAR batches have none."""
        raise DataError(f"CIFAR batch {self._path} uses a persistent id; expected a plain pickled dict")


def _text(value: Any) -> str:
    """Decode a bytes key or file name (Python 2 str) to ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


def _load_dict(path: Path) -> dict[str, Any]:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` and return a dict with ``str`` keys."""
    try:
        with path.open("rb") as fh:
            obj = RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(
            f"CIFAR batch missing: {path} (looked in {path.parent}; expected the CIFAR-10 "
            f"python-version pickles data_batch_1..5 and test_batch)"
        ) from None
    except Exception as exc:  # any malformed stream: EOFError, UnpicklingError, ValueError, ...
        raise DataError(
            f"CIFAR batch {path} is not a readable pickle ({type(exc).__name__}: {exc}); "
            f"expected a protocol-2 pickled dict as in cifar-10-batches-py"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(obj).__name__}; expected a dict")
    try:
        return {_text(k): v for k, v in obj.items()}
    except (TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"CIFAR batch {path} has a non-text key ({exc}); expected bytes/str keys") from exc


def read_cifar_batch(path: Path | str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one CIFAR-10 batch safely.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.

    Returns:
        ``(images, labels, filenames)``: uint8 ``[N, 3, 32, 32]`` (R, G, B planes),
        int64 ``[N]`` in 0..9, and ``N`` file names.

    Raises:
        DataError: missing file, malformed pickle, forbidden global, missing key,
            or wrong shape/dtype/length/label range.
    """
    path = Path(path)
    d = _load_dict(path)
    missing = [k for k in _REQUIRED_KEYS if k not in d]
    if missing:
        raise DataError(
            f"CIFAR batch {path} lacks key(s) {missing}; found {sorted(d)}, expected {list(_REQUIRED_KEYS)}"
        )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_LEN:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR batch {path}: 'data' is {desc}; expected a uint8 ndarray of shape [N, {_ROW_LEN}]")
    n = data.shape[0]
    labels_raw, names_raw = d["labels"], d["filenames"]
    if not isinstance(labels_raw, (list, np.ndarray)) or len(labels_raw) != n:
        got = len(labels_raw) if hasattr(labels_raw, "__len__") else type(labels_raw).__name__
        raise DataError(f"CIFAR batch {path}: 'labels' has length {got}; expected a list of N={n} ints")
    if not isinstance(names_raw, list) or len(names_raw) != n:
        got = len(names_raw) if hasattr(names_raw, "__len__") else type(names_raw).__name__
        raise DataError(f"CIFAR batch {path}: 'filenames' has length {got}; expected a list of N={n} names")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels_raw):
        raise DataError(f"CIFAR batch {path}: 'labels' contains a non-integer; expected ints in 0..9")
    labels = np.asarray(labels_raw, dtype=np.int64).reshape(n)
    if n and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DataError(
            f"CIFAR batch {path}: labels range {labels.min()}..{labels.max()}; expected 0..{_NUM_CLASSES - 1}"
        )
    try:
        names = [_text(v) for v in names_raw]
    except (TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"CIFAR batch {path}: bad entry in 'filenames' ({exc}); expected bytes/str names") from exc
    images = np.ascontiguousarray(data.reshape(n, *CIFAR_IMAGE_SHAPE))
    if not images.flags.writeable:
        images = images.copy()
    return images, labels, names
