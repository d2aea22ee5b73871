"""Options plumbing, written once: frozen dataclass <-> plain dict <-> command-line string.

Every options class of the project (``VSMLConfig``, the methods' options, the
task mix, ``RunOptions``, the Meta RNN's options) is a frozen dataclass; this
module turns one into JSON-able dicts and lists (``to_plain``), builds one
back from such a dict with unknown keys as errors (``from_plain``), parses a
command-line string by a field's type (``parse_value``) and lists the leaf
fields by dotted path (``leaf_types``). Standard library only: every layer
may import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def to_plain(obj: Any) -> Any:
    """A dataclass (nested) as JSON-able dicts and lists (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _nested_cls(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def from_plain(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict (nested dataclasses from nested dicts; lists become tuples).

    Raises:
        ValueError: ``d`` is not a dict, or has keys that are not fields of
            ``cls`` (the message lists what exists).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where or cls.__name__}: expected a table of options, got {d!r}")
    hints = typing.get_type_hints(cls)
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


def leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> type of every leaf field of dataclass ``cls`` (nested dataclasses descended)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if name not in names:
            continue
        sub = _nested_cls(tp)
        if sub is not None:
            out.update(leaf_types(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


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
