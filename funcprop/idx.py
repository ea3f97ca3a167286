"""The IDX file format of MNIST: read and write, raw or gzip-compressed."""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the format of MNIST), raw or gzip-compressed.

    Layout: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, one big-endian
    int32 per dimension, then the data, big-endian, in C order. A gzip file is
    recognised by its magic bytes, whatever its name.

    Args:
      path: the file.

    Returns:
      The array, in native byte order, of the shape the header gives.

    Raises:
      FileNotFoundError: if there is no file at ``path``.
      ValueError: if the file is not a well-formed IDX file, saying what is wrong.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"read_idx: no file at '{path}'") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"read_idx: '{path}' is a damaged gzip file ({err}); "
                f"download or write it again"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"read_idx: '{path}' is not an IDX file: it must start with two zero "
            f"bytes, a dtype code and a rank, but starts with {raw[:4].hex(' ')!r}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {d.newbyteorder('=')}" for c, d in _IDX_DTYPES.items())
        raise ValueError(
            f"read_idx: '{path}' has unknown dtype code 0x{code:02X}; IDX defines {known}"
        )
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(
            f"read_idx: '{path}' is truncated: its header declares {ndim} dimensions "
            f"({start} header bytes) but the file has {len(raw)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    if any(d < 0 for d in shape):
        raise ValueError(f"read_idx: '{path}' declares a negative dimension: {shape}")
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - start
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise ValueError(
            f"read_idx: '{path}' is {what}: shape {shape} of {dtype.newbyteorder('=')} "
            f"needs {expected} data bytes but the file has {found}"
        )
    data = np.frombuffer(raw, dtype, offset=start).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``.

    The inverse of :func:`read_idx`. Supported dtypes: uint8, int8, int16, int32,
    float32, float64.

    Raises:
      TypeError: for any other dtype (cast first, e.g. ``array.astype(np.int32)``).
      ValueError: for more than 255 dimensions or a dimension of 2**31 or more.
    """
    path = pathlib.Path(path)
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _IDX_CODES:
        names = ", ".join(str(d) for d in _IDX_CODES)
        raise TypeError(
            f"write_idx: IDX has no code for dtype {array.dtype}; supported dtypes are "
            f"{names}; cast first, e.g. array.astype(np.int32)"
        )
    if array.ndim > 255 or any(d >= 2**31 for d in array.shape):
        raise ValueError(
            f"write_idx: IDX allows at most 255 dimensions of size < 2**31, got shape "
            f"{array.shape}"
        )
    code = _IDX_CODES[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    payload = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


