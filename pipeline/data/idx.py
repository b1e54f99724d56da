"""Reader for IDX files (the MNIST format), gzipped or plain.

An IDX file is a 4-byte magic number followed by ``ndim`` big-endian int32
dimensions and then the payload in C order.  The magic is ``0x00 0x00 <dtype>
<ndim>``; MNIST uses dtype code 0x08 (uint8), so images have magic 0x00000803
and labels 0x00000801.  Every structural problem raises
:class:`pipeline.errors.DataError` with a message naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

__all__ = ["IDX_DTYPES", "read_idx"]

#: IDX dtype code -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_EXPECTED = "expected an IDX file (magic 0x0000<dtype><ndim>, big-endian int32 dims, payload = product(dims))"


def _read_bytes(path: Path) -> bytes:
    """Return the decompressed bytes of ``path`` (gzip is detected by its magic)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"IDX file missing: {path} (looked in {path.parent}; {_EXPECTED}, plain or .gz)"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc} ({_EXPECTED})") from exc
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataError(
                f"IDX file {path} is not gzip data: first bytes {raw[:4].hex() or '<empty>'} "
                f"(expected the gzip magic 1f8b for a .gz file)"
            )
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"IDX file {path} is a corrupt or truncated gzip stream ({type(exc).__name__}: {exc}); "
            f"expected a complete gzip file of an IDX payload"
        ) from exc


def read_idx(path: Path | str, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or plain) into a writable, native-endian array.

    Args:
        path: the ``.gz`` or plain IDX file.
        expected_ndim: if given, the number of dimensions the header must declare.

    Returns:
        An array with the dtype from the header and shape ``dims``.

    Raises:
        DataError: missing file, bad gzip, bad magic, unknown dtype code, wrong
            ``ndim``, or a payload shorter or longer than ``product(dims)``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, no 4-byte magic ({_EXPECTED})")
    b0, b1, code, ndim = data[0], data[1], data[2], data[3]
    if b0 != 0 or b1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {path} has bad magic 0x{data[:4].hex()} "
            f"(expected 0x0000 + dtype code in {{{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}}} + ndim >= 1, "
            f"e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"IDX file {path} declares {ndim} dimensions (magic 0x{data[:4].hex()}); expected {expected_ndim}"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"IDX file {path} is truncated in its header: {len(data)} bytes, "
            f"need {header_len} for {ndim} int32 dimensions"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if any(d < 0 for d in dims):
        raise DataError(f"IDX file {path} has negative dimensions {dims} (expected sizes >= 0)")
    dtype = IDX_DTYPES[code]
    expected_len = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload_len = len(data) - header_len
    if payload_len != expected_len:
        kind = "truncated" if payload_len < expected_len else "has extra bytes"
        raise DataError(
            f"IDX file {path} {kind}: payload is {payload_len} bytes, expected {expected_len} "
            f"for dims {dims} of {dtype.name}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
