"""The meta-training methods by name, presets, and option parsing (reference section 6).

A run is defined by four parts, each a frozen dataclass:

    model    VSMLConfig          (clone derives it from its options)
    options  the method's options (EsOptions, BpttOptions, CmaesOptions,
             CloneOptions), the task mix nested as ``options.tasks``
    run      RunOptions          (iterations, seed, checkpoints, meta-test)

A preset is a TOML (or JSON) file in ``train/presets/`` (package data of
``vsml_train``) with a ``method`` key and ``[model]``, ``[options]``,
``[options.tasks]`` and ``[run]`` tables.
Overrides ``{"key": value}`` name a field by its dotted path
(``options.tasks.steps``; ``tasks.`` is short for ``options.tasks.``) or by
its bare name when that is unique among the four parts. Unknown keys are
errors that list what exists.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import VSMLConfig
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


def _clone_method() -> Method | None:
    try:
        from .clone import CloneOptions, CloneTrainer, clone_config
    except ImportError:
        return None
    return Method("clone", CloneOptions, CloneTrainer, clone_config)


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
# dataclasses <-> plain dicts


def to_plain(obj: Any) -> Any:
    """A dataclass (nested) as JSON-able dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_cls(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def from_plain(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict (nested dataclasses from nested dicts); unknown keys raise."""
    if not isinstance(d, dict):
        raise ValueError(f"{where or cls.__name__}: expected a table of options, got {d!r}")
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"unknown {where or cls.__name__} keys {unknown}; expected a subset of {sorted(fields)}")
    kw = {}
    for k, v in d.items():
        sub = _nested_cls(hints[k])
        if sub is not None:
            kw[k] = from_plain(sub, v, f"{where}.{k}" if where else k)
        else:
            kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def parse_value(text: str, tp: Any) -> Any:
    """Parse a command-line string as type ``tp`` (bool, int, float, str, Literal, X | None, tuple[X, ...])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0])
    if origin is typing.Literal:
        if text not in args:
            raise ValueError(f"expected one of {list(args)}, got {text!r}")
        return text
    if origin is tuple:
        items = [s.strip() for s in text.split(",") if s.strip()]
        inner = args[0] if args else str
        return tuple(parse_value(s, inner) for s in items)
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if tp in (int, float, str):
        return tp(text)
    raise ValueError(f"cannot parse options of type {tp}")


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


def _leaves(cls: type, prefix: str) -> dict[str, Any]:
    """Dotted path -> type of every leaf field of dataclass ``cls``."""
    out: dict[str, Any] = {}
    for name, tp in _hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        sub = _nested_cls(tp)
        if sub is not None:
            out.update(_leaves(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def option_paths(method: str) -> dict[str, Any]:
    """Every settable option of ``method``: dotted path -> type."""
    m = get_method(method)
    paths = {**_leaves(VSMLConfig, "model."), **_leaves(m.options_cls, "options."), **_leaves(RunOptions, "run.")}
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
    return get_method(spec.method).trainer(spec.config, spec.options, spec.run.seed, init)
