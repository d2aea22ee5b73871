"""Reader and writer for the IDX format of the MNIST distribution.

An IDX file is a big-endian header followed by the raw array:

    bytes 0-1   zero
    byte  2     element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
    byte  3     number of dimensions D
    4 * D bytes the dimensions, big-endian uint32
    the elements, C order, big-endian

Files may be gzip-compressed (detected by the gzip magic, not by the name).
Every problem with a file's content (bad magic, wrong element type or rank,
truncation, trailing bytes, label out of range, broken gzip stream) raises
``IDXFormatError``, a ``ValueError`` whose message names the file and the
problem. A missing file raises the usual ``FileNotFoundError``.

Dimension letters (docs/model.md §8): I examples (instances) of a dataset; images
have rows x cols pixels.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIMS = 8

# IDX element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}


class IDXFormatError(ValueError):
    """The content of an IDX file is corrupt or not what the caller expects."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (gzip detected by its magic number)."""
    data = path.read_bytes()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise IDXFormatError(path, f"corrupt or truncated gzip stream ({err})") from err


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any IDX file (raw or gzip) into a read-only native-endian array.

    Returns:
        The array with the shape stored in the header and the native-endian
        version of the stored element type.

    Raises:
        FileNotFoundError: no such file.
        IDXFormatError: bad magic, unknown element type, a size that does not
            match the header (truncated or trailing bytes), broken gzip.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(path, f"file too short for an IDX header ({len(data)} bytes, need at least 4)")
    zero, code, n_dims = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IDXFormatError(path, f"bad magic number 0x{data[:4].hex()}: an IDX file starts with two zero bytes")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXFormatError(path, f"bad magic number 0x{data[:4].hex()}: unknown element type 0x{code:02X} ({known})")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise IDXFormatError(path, f"bad magic number 0x{data[:4].hex()}: {n_dims} dimensions (1..{_MAX_DIMS})")
    header_size = 4 + 4 * n_dims
    if len(data) < header_size:
        raise IDXFormatError(path, f"truncated header: {len(data)} bytes, {n_dims} dimensions need {header_size}")
    shape = struct.unpack(f">{n_dims}I", data[4:header_size])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual < expected:
        raise IDXFormatError(path, f"truncated: header says shape {shape} ({expected} bytes of data), found {actual}")
    if actual > expected:
        raise IDXFormatError(path, f"{actual - expected} unexpected bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
        array.setflags(write=False)
    return array


def read_images(path: str | os.PathLike[str], *, shape: tuple[int, int] | None = (28, 28)) -> np.ndarray:
    """Read an image file (``*-images-idx3-ubyte[.gz]``).

    Args:
        path: the file.
        shape: the expected (H, W), or None to accept any.

    Returns:
        uint8 [I, rows, cols], read-only.
    """
    images = read_idx(path)
    if images.dtype != np.uint8:
        raise IDXFormatError(path, f"images must be uint8 (type 0x08), found {images.dtype}")
    if images.ndim != 3:
        raise IDXFormatError(
            path, f"images must have 3 dimensions [I, rows, cols], found {images.ndim}: {images.shape}"
        )
    if shape is not None and images.shape[1:] != tuple(shape):
        raise IDXFormatError(path, f"images must be {shape[0]}x{shape[1]}, found {images.shape[1]}x{images.shape[2]}")
    return images


def read_labels(path: str | os.PathLike[str], *, n_classes: int | None = None) -> np.ndarray:
    """Read a label file (``*-labels-idx1-ubyte[.gz]``).

    Args:
        path: the file.
        n_classes: if given, every label must lie in [0, n_classes).

    Returns:
        int64 [N], read-only.
    """
    raw = read_idx(path)
    if raw.dtype != np.uint8:
        raise IDXFormatError(path, f"labels must be uint8 (type 0x08), found {raw.dtype}")
    if raw.ndim != 1:
        raise IDXFormatError(path, f"labels must have 1 dimension [N], found {raw.ndim}: {raw.shape}")
    if n_classes is not None and raw.size and int(raw.max()) >= n_classes:
        bad = int(np.argmax(raw >= n_classes))
        raise IDXFormatError(
            path,
            f"label out of range: labels[{bad}] = {int(raw[bad])}, expected 0..{n_classes - 1} ({n_classes} classes)",
        )
    labels = raw.astype(np.int64)
    labels.setflags(write=False)
    return labels


def read_image_label_pair(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    n_classes: int | None = None,
    shape: tuple[int, int] | None = (28, 28),
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files and check they hold the same N.

    Returns:
        images uint8 [I, rows, cols] and labels int64 [N], both read-only.
    """
    images = read_images(images_path, shape=shape)
    labels = read_labels(labels_path, n_classes=n_classes)
    if len(images) != len(labels):
        raise IDXFormatError(labels_path, f"{len(labels)} labels but {len(images)} images in {images_path}")
    return images, labels


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when the name ends in ``.gz``.

    Used by tests and tools; the element type must be one IDX supports.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _TYPE_CODES:
        raise ValueError(f"{path}: IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= _MAX_DIMS:
        raise ValueError(f"{path}: IDX stores 1..{_MAX_DIMS} dimensions, array has {array.ndim}")
    code = _TYPE_CODES[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
