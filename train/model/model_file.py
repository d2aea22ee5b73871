"""The `model.pt` file: V_M plus the config that rebuilds the model.

A model file is a plain ``torch.save`` of a dict of tensors, strings, numbers,
lists and dicts, loadable with ``torch.load(..., weights_only=True)`` (no
pickled code: a model file from a stranger cannot run code)::

    {"format": "vsml-model", "format_version": 1,
     "config": VSMLConfig.to_dict(), "params": {name: Tensor},
     "meta": {"method": ..., "seed": ..., "version": ..., ...}}

Writes are atomic (temp file in the same folder + rename), so a crash never
leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_bytes
from .config import VSMLConfig
from .params import Params, check_params

FORMAT = "vsml-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or not a VSML model."""


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: config, V_M (base shapes) and free-form metadata."""

    config: VSMLConfig
    params: Params
    meta: dict[str, Any] = field(default_factory=dict)

    def params_hash(self) -> str:
        """sha256 of V_M (names, shapes, float32 little-endian bytes), hex."""
        return params_hash(self.params)


def params_hash(params: Params) -> str:
    """sha256 over V_M in name order; identical V_M give identical hashes."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def write_torch_file(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors and plain values to ``path`` atomically (model, Meta RNN, checkpoint)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_torch_file(
    path: str | os.PathLike[str],
    *,
    fmt: str,
    version: int,
    noun: str,
    title: str,
    error: type[Exception] = ValueError,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a file ``write_torch_file`` wrote, with ``weights_only=True``, and check its format header.

    Args:
        fmt, version: the expected ``"format"`` and ``"format_version"`` entries.
        noun: what the file is, in messages ("model file").
        title: what a file of this format is called ("VSML model file").
        error: the exception raised, with a message naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{noun} {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt files
        raise error(f"{path} is not a readable {noun} (corrupt or truncated?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{path} is not a {title} (no 'format': '{fmt}' entry)")
    if payload.get("format_version") != version:
        raise error(f"{path} has format_version {payload.get('format_version')}, this version reads {version}")
    return payload


def save_model(path: str | os.PathLike[str], model: ModelFile) -> None:
    """Save atomically; V_M must have base shapes (no population axis)."""
    if check_params(model.params, model.config) is not None:
        raise ValueError("save_model expects one V_M (no population axis)")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "params": {k: v.detach().to("cpu").clone() for k, v in model.params.items()},
        # plain values only (JSON round trip; unknown objects become strings) so that the
        # file always loads with weights_only=True
        "meta": json.loads(json.dumps({**model.meta, "params_sha256": params_hash(model.params)}, default=str)),
    }
    write_torch_file(path, payload)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ModelFile:
    """Load and validate a model file; raises ``ModelFileError`` naming the problem."""
    path = Path(path)
    payload = read_torch_file(
        path,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        noun="model file",
        title="VSML model file",
        error=ModelFileError,
        map_location=map_location,
    )
    try:
        config = VSMLConfig.from_dict(payload["config"])
        params = dict(payload["params"])
        check_params(params, config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from exc
    meta = dict(payload.get("meta", {}))
    recorded = meta.get("params_sha256")
    if recorded is not None and recorded != params_hash(params):
        raise ModelFileError(f"{path}: V_M does not match its recorded sha256 (file corrupted or edited)")
    return ModelFile(config=config, params=params, meta=meta)
