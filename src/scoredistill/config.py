"""Typed configs: frozen dataclasses, ``--set a.b=value`` overrides, strict dict loading.

Every run's configuration is a (possibly nested) frozen dataclass. This module turns
``key=value`` strings and plain dicts (``config.json``) into such dataclasses, checking every
key and type before any work starts, and naming the offending key in the error. Nothing here
evaluates code: values are parsed as JSON scalars/lists or taken as plain strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

__all__ = ["ConfigError", "apply_overrides", "from_dict", "to_dict"]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown(key: str, valid: typing.Iterable[str]) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(valid))}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} expects {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"config key {key!r} expects {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], *, prefix: str = "") -> C:
    """Build ``cls`` from a plain dict; unknown keys and wrong types raise ``ConfigError``."""
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown(prefix + key, types_)
    kwargs = {k: _coerce(prefix + k, v, types_[k]) for k, v in data.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """JSON if it parses (numbers, true/false/null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(cfg: Any, path: list[str], value: Any, full: str) -> Any:
    types_ = _field_types(type(cfg))
    head = path[0]
    if head not in types_:
        raise _unknown(full if len(path) == 1 else head, types_)
    if len(path) == 1:
        if isinstance(value, str) and types_[head] is not str:
            value = _parse_value(value)
        return dataclasses.replace(cfg, **{head: _coerce(full, value, types_[head])})
    child = getattr(cfg, head)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"config key {full!r}: {head!r} is not a section")
    return dataclasses.replace(cfg, **{head: _set_path(child, path[1:], value, full)})


def apply_overrides(cfg: C, overrides: typing.Iterable[str]) -> C:
    """Apply ``a.b=value`` strings to a (nested) frozen dataclass, returning a new one."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. nfe=8)")
        cfg = _set_path(cfg, key.strip().split("."), value, key.strip())
    return cfg


def resolve_with_objective(
    default: C, presets: dict[str, dict[str, Any]], preset: str | None, sets: list[str], registry
) -> tuple[C, Any]:
    """A run config with a method objective: preset items, then ``--set`` overrides.

    ``objective.<field>`` items go to the method's own dataclass (``registry[cfg.method]``), so an
    unknown or ill-typed objective field is rejected by name; the returned config holds the
    objective's resolved fields. Returns ``(config, objective instance)``.
    """
    if preset is not None and preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(presets)}")
    items = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in presets.get(preset, {}).items()
    ]
    items += list(sets)
    obj_sets = [s.split(".", 1)[1] for s in items if s.startswith("objective.")]
    cfg = apply_overrides(default, [s for s in items if not s.startswith("objective.")])
    method = cfg.method  # type: ignore[attr-defined]
    if method not in registry:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(registry)}")
    obj = from_dict(registry[method], cfg.objective, prefix="objective.")  # type: ignore[attr-defined]
    try:
        obj = apply_overrides(obj, obj_sets)
    except ConfigError as err:  # name the key as the user wrote it
        raise ConfigError(str(err).replace("config key '", "config key 'objective.", 1)) from None
    return dataclasses.replace(cfg, objective=dataclasses.asdict(obj)), obj
