"""Training checkpoints: everything a run needs to continue bit-exactly.

A checkpoint is written atomically (temp file + rename, ``atomic_write_bytes``)
and holds, as a ``torch.save`` dict loadable with ``weights_only=True``::

    {"format": "vsml-checkpoint", "format_version": 1,
     "sha256": hex digest of "body",
     "body": uint8 tensor = torch.save({
         "method", "iteration" (the next one to run), "spec" (config, options,
         seed: what the run was started with), "trainer" (its state_dict: V_M,
         Adam or CMA-ES state, RNG states), "metrics" (last values)})}

The digest over the serialised body turns any corrupted or truncated file into
a clear ``CheckpointError`` instead of silently wrong numbers. The data
sampler's position is the iteration: every episode is a function of (seed,
iteration).

Trust model: a checkpoint is YOUR OWN file. The tensors and plain values load
with ``weights_only=True``, but a CMA-ES checkpoint carries the ``cma``
optimizer pickled into a uint8 tensor, which ``pickle.loads`` rebuilds: do not
resume from a checkpoint you did not write. The deliverable ``model.pt`` never
contains pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model.model_file import read_torch_file, write_torch_file

FORMAT = "vsml-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or from another run."""


def _serialise(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically with a digest."""
    body = _serialise(payload)
    outer = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": bytes_to_tensor(body),
    }
    write_torch_file(path, outer)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint; ``CheckpointError`` says what is wrong."""
    path = Path(path)
    outer = read_torch_file(
        path,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        noun="checkpoint",
        title="VSML training checkpoint",
        error=CheckpointError,
    )
    body = outer.get("body")
    if not isinstance(body, Tensor) or body.dtype != torch.uint8:
        raise CheckpointError(f"{path}: checkpoint body missing")
    data = tensor_to_bytes(body)
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path}: checkpoint content does not match its sha256 (corrupted file)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: checkpoint body unreadable: {exc}") from exc
    for key in ("method", "iteration", "spec", "trainer"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def bytes_to_tensor(data: bytes) -> Tensor:
    """Raw bytes as a uint8 [len] tensor (storable under ``weights_only=True``)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_to_bytes(t: Tensor) -> bytes:
    """Inverse of ``bytes_to_tensor``."""
    return t.contiguous().numpy().tobytes()


def pickle_to_tensor(obj: Any) -> Tensor:
    """Pickle an object (e.g. a ``cma`` optimizer) into a uint8 tensor."""
    return bytes_to_tensor(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def tensor_to_pickle(t: Tensor) -> Any:
    """Unpickle what ``pickle_to_tensor`` stored. Runs pickle: only for your own checkpoints."""
    return pickle.loads(tensor_to_bytes(t))
