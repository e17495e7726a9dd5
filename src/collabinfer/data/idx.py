"""Reading the IDX format (MNIST-family files), gzipped or not.

The parser checks the magic number, the dimension count and that the payload
length matches the header, so a truncated download is a :class:`DataError`,
not a reshape traceback.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from collabinfer.errors import DataError

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx_bytes(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse one IDX blob into a numpy array."""
    if len(raw) < 4:
        raise DataError(f"{source}: too short to be an IDX file ({len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{source}: not an IDX file (bad magic number {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{source}: IDX payload is {len(raw) - header} bytes, header promises {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_file(path: Path) -> tuple[np.ndarray, bytes]:
    """Parse an IDX file (``.gz`` or plain); also returns the decompressed bytes for hashing."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return read_idx_bytes(data, str(path)), data
