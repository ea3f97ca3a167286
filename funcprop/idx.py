"""The IDX file format of MNIST: read and write, raw or gzip-compressed."""

from __future__ import annotations

import gzip
import math
import pathlib
import zlib

import numpy as np

from funcprop import atomic

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
      IsADirectoryError, PermissionError: if ``path`` is a directory or unreadable.
      ValueError: if the file is not a well-formed IDX file, saying what is wrong;
        in particular if its data are shorter or longer than its header declares
        (a gzip file is inflated only that far, so a gzip bomb is refused cheaply).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"read_idx: '{path}' is a directory; pass one IDX file in it, such as '{path / 'train-images-idx3-ubyte'}'"
        )
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"read_idx: no file at '{path}'") from None
    except PermissionError:
        raise PermissionError(
            f"read_idx: cannot read '{path}': permission denied; make it readable (chmod u+r) or copy it"
        ) from None
    with file:
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        # Read as a stream, never more than the header declares (and one byte to see
        # whether more follows): a gzip bomb with a small header costs nothing.
        stream = gzip.GzipFile(fileobj=file, mode="rb") if gzipped else file
        try:
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(
                    f"read_idx: '{path}' is not an IDX file: it must start with two zero "
                    f"bytes, a dtype code and a rank, but starts with {head.hex(' ')!r}"
                )
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                known = ", ".join(f"0x{c:02X} {d.newbyteorder('=')}" for c, d in _IDX_DTYPES.items())
                raise ValueError(f"read_idx: '{path}' has unknown dtype code 0x{code:02X}; IDX defines {known}")
            dims = stream.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(
                    f"read_idx: '{path}' is truncated: its header declares {ndim} "
                    f"dimensions ({4 + 4 * ndim} header bytes) but the file has "
                    f"{4 + len(dims)} bytes"
                )
            shape = tuple(int(d) for d in np.frombuffer(dims, ">i4"))
            if any(d < 0 for d in shape):
                raise ValueError(f"read_idx: '{path}' declares a negative dimension: {shape}")
            dtype = _IDX_DTYPES[code]
            expected = math.prod(shape) * dtype.itemsize
            data = bytearray()  # grows with what the file holds, not what it claims
            while len(data) < expected and (chunk := stream.read(min(expected - len(data), 1 << 24))):
                data += chunk
            longer = bool(stream.read(1))
        except (OSError, EOFError, zlib.error) as err:
            if not gzipped:
                raise
            raise ValueError(f"read_idx: '{path}' is a damaged gzip file ({err}); download or write it again") from None
    if len(data) < expected or longer:
        what, found = ("truncated", len(data)) if len(data) < expected else ("longer than its header says", "more")
        raise ValueError(
            f"read_idx: '{path}' is {what}: shape {shape} of {dtype.newbyteorder('=')} "
            f"needs {expected} data bytes but the file has {found}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``.

    The inverse of :func:`read_idx`, written atomically (:mod:`funcprop.atomic`): a write
    that fails leaves no partial file. Supported dtypes: uint8, int8, int16, int32,
    float32, float64.

    Raises:
      TypeError: for any other dtype (cast first, e.g. ``array.astype(np.int32)``).
      ValueError: for more than 255 dimensions or a dimension of 2**31 or more.
      OSError: if the file cannot be written, naming it.
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
        raise ValueError(f"write_idx: IDX allows at most 255 dimensions of size < 2**31, got shape {array.shape}")
    code = _IDX_CODES[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    payload = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic.write("write_idx", path, lambda f: f.write(payload), example="images.idx", what="an IDX file")
