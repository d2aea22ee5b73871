"""Reading a learner state file (``Learner.save`` / ``LearnerPool.save``) safely.

A state file is an ``.npz`` (a zip of ``.npy`` arrays, see
``vsml_runtime.base``). Nothing a file claims is trusted before it is
checked, and nothing is read beyond what the checked claims allow:

1. ``read_meta``: the ``meta`` entry (at most ``STATE_FILE_META_BYTES``)
   is parsed and its fields checked (types, sizes, format version);
2. ``check_entries``: the zip directory must list exactly the entries a
   learner of those sizes has, each of the size its shape implies (so a
   zip bomb cannot inflate beyond the sizes the learner really holds);
3. ``read_arrays``: each entry's ``.npy`` header must give the expected
   dtype and shape; exactly that many bytes are read.

Every failure raises ``FormatError`` (a ``ValueError``); a missing file
raises ``FileNotFoundError``. Pickles are never loaded.
"""

from __future__ import annotations

import errno
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .format import FormatError
from .limits import STATE_FILE_META_BYTES

STATE_FORMAT = "vsml-learner-state"
STATE_FORMAT_VERSION = 1
STATE_PREFIX = "state."
STD_PREFIX = "standardizer."
MAX_SIZE = 1 << 31  # no size in a state file may exceed this (the engine refuses far less)
_NPY_HEADER_MAX = 70_000  # magic + header of a .npy entry (headers are read with max_header_size 64 KiB)

EntrySpecs = dict[str, tuple[np.dtype, tuple[int, ...]]]


def _zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"learner state {path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except (PermissionError, IsADirectoryError):
        raise
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.ENOSPC, errno.EMFILE, errno.ENFILE):
            raise  # a real I/O problem, not a bad file
        raise FormatError(f"{path} is not a readable learner state: {exc}") from exc
    except Exception as exc:  # BadZipFile, EOFError, ValueError... of a corrupt or truncated file
        raise FormatError(f"{path} is not a readable learner state: {type(exc).__name__}: {exc}") from exc


def _info(z: zipfile.ZipFile, name: str, path: Path) -> zipfile.ZipInfo:
    try:
        return z.getinfo(name + ".npy")
    except KeyError:
        raise FormatError(f"{path} is not a learner state: no {name!r} entry") from None


def _read_entry(
    z: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype | None, shape: tuple[int, ...] | None
) -> np.ndarray:
    """One .npy entry, checked against (dtype, shape) when given, reading no more than its header allows."""
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f, max_header_size=1 << 16)
        elif version in ((2, 0), (3, 0)):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f, max_header_size=1 << 16)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if got_dtype.hasobject or fortran:
            raise ValueError("object or Fortran-ordered arrays are not learner state")
        if dtype is not None and (got_dtype != dtype or got_shape != shape):
            raise ValueError(f"expected {dtype} {shape}, the file holds {got_dtype} {got_shape}")
        count = math.prod(got_shape)
        nbytes = count * got_dtype.itemsize
        if nbytes > info.file_size:
            raise ValueError(f"the entry is shorter ({info.file_size} bytes) than its header says ({nbytes})")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError("truncated entry")
        if f.read(1):  # also makes zipfile check the entry's CRC
            raise ValueError("the entry holds more bytes than its header says")
        return np.frombuffer(data, dtype=got_dtype).reshape(got_shape).copy()


def _int(meta: dict[str, Any], key: str, lo: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_SIZE:
        raise FormatError(f"learner state meta: {key} must be an integer in [{lo}, {MAX_SIZE}], got {v!r}")
    return v


def check_meta(meta: Any) -> dict[str, Any]:
    """``meta`` if it is a state meta of this format with well-typed sizes; FormatError otherwise."""
    if not isinstance(meta, dict):
        raise FormatError("learner state meta is not a JSON object")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_FORMAT_VERSION:
        raise FormatError(f"not a {STATE_FORMAT} v{STATE_FORMAT_VERSION} state: {meta.get('format')!r}")
    for key, lo in (("n_learners", 1), ("n_features", 1), ("n_classes", 2), ("examples_per_step", 1)):
        _int(meta, key, lo)
    for key in ("params_sha256", "model_path"):
        if not isinstance(meta.get(key), str):
            raise FormatError(f"learner state meta: {key} must be a string")
    names = meta.get("state_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FormatError("learner state meta: state_names must be a list of strings")
    std = meta.get("standardize")
    ok = std in (False, True, None, "online", "online-scalar", "model") or (
        isinstance(std, list)
        and len(std) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in std)
    )
    if not ok:
        raise FormatError(f"learner state meta: unknown standardize {std!r}")
    return meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``meta`` of a state file (FormatError if unreadable or inconsistent)."""
    p = Path(path)
    with _zip(p) as z:
        info = _info(z, "meta", p)
        if info.file_size > STATE_FILE_META_BYTES:
            raise FormatError(f"{p}: the meta entry is {info.file_size} bytes (at most {STATE_FILE_META_BYTES})")
        try:
            arr = _read_entry(z, info, None, None)
            if arr.dtype.kind != "U" or arr.shape != ():
                raise ValueError(f"meta must be a string, got {arr.dtype} {arr.shape}")
            meta = json.loads(str(arr))
        except FormatError:
            raise
        except Exception as exc:  # zipfile, zlib, npy header and JSON errors of a corrupt file
            raise FormatError(f"{p} is not a readable learner state: {type(exc).__name__}: {exc}") from exc
    return check_meta(meta)


def check_entries(path: str | os.PathLike[str], specs: EntrySpecs) -> None:
    """FormatError unless the zip lists exactly ``specs`` (+ meta), each of its shape's size (nothing is read)."""
    p = Path(path)
    with _zip(p) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        want = sorted([f"{k}.npy" for k in specs] + ["meta.npy"])
        if sorted(names) != want:
            extra = sorted(set(names) - set(want))
            missing = sorted(set(want) - set(names))
            raise FormatError(f"{p}: the entries are not those of this learner (extra {extra}, missing {missing})")
        for info in infos:
            if info.filename == "meta.npy":
                continue
            dtype, shape = specs[info.filename[:-4]]
            nbytes = math.prod(shape) * dtype.itemsize
            if not nbytes <= info.file_size <= nbytes + _NPY_HEADER_MAX:
                raise FormatError(
                    f"{p}: entry {info.filename} declares {info.file_size} bytes, a {dtype} {shape} array is {nbytes}"
                )


def read_arrays(path: str | os.PathLike[str], specs: EntrySpecs) -> dict[str, np.ndarray]:
    """Every entry of ``specs`` (+ ``meta``) read and checked against its dtype and shape."""
    p = Path(path)
    check_entries(p, specs)
    out: dict[str, np.ndarray] = {}
    with _zip(p) as z:
        try:
            out["meta"] = _read_entry(z, z.getinfo("meta.npy"), None, None)
            for key, (dtype, shape) in specs.items():
                out[key] = _read_entry(z, z.getinfo(key + ".npy"), dtype, shape)
        except Exception as exc:
            raise FormatError(f"{p} is not a readable learner state: {type(exc).__name__}: {exc}") from exc
    return out


def entry_specs(shapes: dict[str, tuple[int, ...]], n_learners: int, n_features: int, per_feature: bool) -> EntrySpecs:
    """The entries (but meta) a learner state of these sizes holds: name -> (dtype, shape)."""
    f32, f64, i64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)
    width = n_features if per_feature else 1
    specs: EntrySpecs = {STATE_PREFIX + k: (f32, tuple(s)) for k, s in shapes.items()}
    specs[STD_PREFIX + "count"] = (f64, (n_learners,))
    specs[STD_PREFIX + "mean"] = (f64, (n_learners, width))
    specs[STD_PREFIX + "m2"] = (f64, (n_learners, width))
    specs["steps"] = (i64, (n_learners,))
    specs["seeds"] = (i64, (n_learners,))
    return specs
