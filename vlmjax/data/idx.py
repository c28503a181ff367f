"""Reader for the IDX format of MNIST-style datasets (optionally gzip-compressed)."""

import gzip
import os
import zlib
from typing import BinaryIO

import numpy as np

from vlmjax.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
REPAIR = "re-install or re-download it"
# A damaged .gz fails in zlib (a corrupt deflate stream), gzip (bad CRC or header: an OSError)
# or as an early end of the stream; a plain file fails with an OSError.
_READ_ERRORS = (OSError, EOFError, zlib.error)


def _open(path: str) -> BinaryIO:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _parse_header(head: bytes, path: str, fix: str) -> tuple[np.dtype, tuple[int, ...]]:
    """(element type, dimensions) from the magic number 0x0000TTNN (type TT, NN dimensions)
    and the NN big-endian sizes that follow it."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); check data.dir")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its IDX header; the file is truncated: {fix}")
    shape = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_DTYPES[head[2]]), shape


def _damaged(path: str, error: Exception, fix: str) -> DataError:
    if isinstance(error, zlib.error | EOFError | gzip.BadGzipFile):
        return DataError(f"IDX file {path} is damaged (corrupt gzip data: {error}); {fix}")
    return DataError(f"cannot read IDX file {path}: {error}; {fix}")


def read_idx_header(path: str, fix: str = REPAIR) -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and dimensions an IDX file declares, reading only its header."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) == 4:
                head += f.read(4 * head[3])
    except _READ_ERRORS as e:
        raise _damaged(path, e, fix) from e
    return _parse_header(head, path, fix)


def read_idx(path: str, fix: str = REPAIR) -> np.ndarray:
    """Reads a whole IDX file; `fix` ends the message of a DataError for a damaged file."""
    try:
        with _open(path) as f:
            data = f.read()
    except _READ_ERRORS as e:
        raise _damaged(path, e, fix) from e
    dtype, shape = _parse_header(data, path, fix)
    offset = 4 + 4 * len(shape)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its header promises {expected}; "
                        f"the file is truncated or corrupt: {fix}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes `array` (uint8 or int32) as an IDX file, gzip-compressed if the name ends in .gz."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    code = codes[np.dtype(array.dtype)]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with opener(path, "wb") as f:
        f.write(header + body)
