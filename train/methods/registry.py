"""The meta-training methods by name, presets, and option parsing (docs/model.md §6).

A run is defined by four parts, each a frozen dataclass:

    model    VSMLConfig          (clone derives it from its options)
    options  the method's options (EsOptions, BpttOptions, CmaesOptions,
             CloneOptions), the task mix nested as ``options.tasks``
    run      RunOptions          (iterations, seed, checkpoints, meta-test,
                                  device, impl, compile)

A preset is a TOML (or JSON) file in ``train/presets/`` (package data of
``vsml_train``) with a ``method`` key and ``[model]``, ``[options]``,
``[options.tasks]`` and ``[run]`` tables.
The dataclass <-> dict <-> string plumbing is ``vsml_train.options``.
Overrides ``{"key": value}`` name a field by its dotted path
(``options.tasks.steps``; ``tasks.`` is short for ``options.tasks.``) or by
its bare name when that is unique among the four parts. Unknown keys are
errors that list what exists.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..model.config import VSMLConfig
from ..options import from_plain, leaf_types, parse_value, to_plain
from .base import Trainer
from .bptt import BpttOptions, BpttTrainer
from .cmaes import CmaesOptions, CmaesTrainer
from .es import EsOptions, EsTrainer
from .runner import RunOptions

# shipped as package data of vsml_train (train/presets/), so an installed wheel has them too
PRESET_DIRS: list[Path] = [Path(str(resources.files("vsml_train") / "presets"))]


@dataclass(frozen=True)
class Method:
    """A meta-training method: its options class, trainer and how its model config is made."""

    name: str
    options_cls: type
    trainer: Callable[..., Trainer]
    derive_config: Callable[[Any], VSMLConfig] | None = None  # options -> config (clone)
    distributed: bool = False  # spreads its population over torch.distributed processes
    compute: bool = True  # takes the run's device / impl / compile (clone runs its own CPU rollout)


def _clone_method() -> Method | None:
    try:
        from .clone import CloneTrainer
        from .clone_options import CloneOptions, clone_config
    except ImportError:
        return None
    return Method("clone", CloneOptions, CloneTrainer, clone_config, compute=False)


METHODS: dict[str, Method] = {
    "es": Method("es", EsOptions, EsTrainer, distributed=True),
    "bptt": Method("bptt", BpttOptions, BpttTrainer),
    "cmaes": Method("cmaes", CmaesOptions, CmaesTrainer, distributed=True),
}
_clone = _clone_method()
if _clone is not None:
    METHODS = {"clone": _clone, **METHODS}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


# ---------------------------------------------------------------------------
# specs: the composed configuration of a run


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run, resolved."""

    method: str
    config: VSMLConfig
    options: Any
    run: RunOptions
    model_overrides: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        """What must not change when a run is resumed (plain values)."""
        return {
            "method": self.method,
            "model": self.config.to_dict(),
            "options": to_plain(self.options),
            "seed": self.run.seed,
        }


def find_preset(name: str) -> Path:
    """A preset by name (``train/presets/NAME.toml`` or ``.json``) or by path."""
    p = Path(name)
    if p.suffix in (".toml", ".json") and p.is_file():
        return p
    for d in PRESET_DIRS:
        for ext in (".toml", ".json"):
            if (d / f"{name}{ext}").is_file():
                return d / f"{name}{ext}"
    raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(list_presets()) or '(none)'}")


def list_presets() -> list[str]:
    return sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.iterdir() if p.suffix in (".toml", ".json")})


def read_preset(name: str) -> dict[str, Any]:
    """The raw tables of a preset file."""
    path = find_preset(name)
    data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    unknown = sorted(set(data) - {"method", "description", "model", "options", "run"})
    if unknown:
        raise ValueError(f"{path}: unknown preset tables {unknown}; expected method, description, model, options, run")
    return data


def option_paths(method: str) -> dict[str, Any]:
    """Every settable option of ``method``: dotted path -> type."""
    m = get_method(method)
    paths = {
        **leaf_types(VSMLConfig, "model."),
        **leaf_types(m.options_cls, "options."),
        **leaf_types(RunOptions, "run."),
    }
    return paths


def resolve_key(method: str, key: str) -> str:
    """The dotted path an override key names (dashes = underscores; bare names must be unique)."""
    key = key.strip().lstrip("-").replace("-", "_")
    paths = option_paths(method)
    if key.startswith("tasks."):
        key = "options." + key
    if key in paths:
        return key
    matches = [p for p in paths if p.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"option {key!r} is ambiguous for method {method!r}: use one of {', '.join(matches)}")
    raise ValueError(
        f"unknown option {key!r} for method {method!r}; known options: "
        + ", ".join(sorted(p.split(".", 1)[1] if not p.startswith("options.tasks.") else p[8:] for p in paths))
    )


def _set_path(tables: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    d = tables
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def build_spec(
    method: str | None,
    preset: str | None,
    overrides: dict[str, Any] | None = None,
    *,
    string_values: bool = False,
    base_config: VSMLConfig | None = None,
) -> RunSpec:
    """Compose a run from a preset, then overrides.

    Args:
        method: the method (None: the preset's).
        preset: a preset name or file (None: the defaults of every part).
        overrides: {key: value}, keys as ``resolve_key`` accepts them.
        string_values: the values are command-line strings to parse by type.
        base_config: the model config to start from (e.g. of an ``--init``
            model) instead of ``VSMLConfig()``; preset and overrides change it.
    """
    tables: dict[str, Any] = read_preset(preset) if preset else {}
    pm = tables.pop("method", None)
    tables.pop("description", None)
    if method and pm and method != pm:
        raise ValueError(f"preset {preset!r} is for method {pm!r}, not {method!r}")
    method = method or pm
    if not method:
        raise ValueError("no method: pass --method or a preset that names one")
    m = get_method(method)
    paths = option_paths(method)
    for key, value in (overrides or {}).items():
        path = resolve_key(method, key)
        if string_values and isinstance(value, str):
            try:
                value = parse_value(value, paths[path])
            except ValueError as exc:
                raise ValueError(f"option {path}: {exc}") from exc
        _set_path(tables, path, value)
    options = from_plain(m.options_cls, tables.get("options", {}), "options")
    run = from_plain(RunOptions, tables.get("run", {}), "run")
    model = dict(tables.get("model", {}))
    base = m.derive_config(options) if m.derive_config is not None else base_config or VSMLConfig()
    config = VSMLConfig.from_dict({**base.to_dict(), **model})
    return RunSpec(method=method, config=config, options=options, run=run, model_overrides=model)


def make_trainer(spec: RunSpec, init: Any = None) -> Trainer:
    """The method's trainer for a resolved spec."""
    m = get_method(spec.method)
    if not m.compute:
        return m.trainer(spec.config, spec.options, spec.run.seed, init)
    r = spec.run
    return m.trainer(spec.config, spec.options, spec.run.seed, init, device=r.device, impl=r.impl, compile=r.compile)


__all__ = [
    "METHODS",
    "Method",
    "RunSpec",
    "build_spec",
    "find_preset",
    "from_plain",
    "get_method",
    "list_presets",
    "make_trainer",
    "option_paths",
    "parse_value",
    "read_preset",
    "resolve_key",
    "to_plain",
]
