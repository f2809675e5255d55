"""Typed configs: frozen dataclasses, ``--set a.b=value`` overrides, strict dict loading.

Every run's configuration is a (possibly nested) frozen dataclass. This module turns
``key=value`` strings and plain dicts (``config.json``) into such dataclasses, checking every
key and type before any work starts, and naming the offending key in the error. Nothing here
evaluates code: values are parsed as JSON scalars/lists or taken as plain strings.

Numbers are checked too: a float must be finite everywhere, and a field annotated with a
:class:`Range` (``steps: PositiveInt``, ``lr: PositiveFloat``, ``seed: Seed``) must lie in it;
the error names the key and the valid range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Annotated, Any, TypeVar

from .errors import SEED_MAX, UserError

__all__ = [
    "ConfigError",
    "LearningRate",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OpenUnitFloat",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "Seed",
    "UnitFloat",
    "apply_overrides",
    "field_defaults",
    "from_dict",
    "preset_items",
    "resolve",
    "to_dict",
]

C = TypeVar("C")


class ConfigError(UserError):
    """A configuration key is unknown, its value has the wrong type or is out of range."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: ``lo <= x <= hi`` (``<`` where ``open_lo``/``open_hi``);
    ``note`` says what a boundary value means (``"0: only at the end"``). Use it as
    ``typing.Annotated[int, Range(1)]``; ``_coerce`` checks it wherever a value enters a config."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    note: str = ""

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.open_lo else '['}{num(self.lo)}, {num(self.hi)}"
            text += ")" if self.open_hi else "]"
        elif self.lo is not None:
            text = (">" if self.open_lo else ">=") + f" {num(self.lo)}"
        else:
            text = ("<" if self.open_hi else "<=") + f" {num(self.hi)}"
        return f"{text} ({self.note})" if self.note else text

    def contains(self, x: float) -> bool:
        above = self.lo is None or (x > self.lo if self.open_lo else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.open_hi else x <= self.hi)
        return above and below


PositiveInt = Annotated[int, Range(1)]  # steps, batch sizes, widths, intervals
NonNegativeInt = Annotated[int, Range(0)]  # counts where 0 means "none"
PositiveFloat = Annotated[float, Range(0, open_lo=True)]  # learning rates, temperatures, stds
NonNegativeFloat = Annotated[float, Range(0)]  # weights, clipping (0: off)
UnitFloat = Annotated[float, Range(0, 1)]  # fractions and probabilities
OpenUnitFloat = Annotated[float, Range(0, 1, open_lo=True, open_hi=True)]  # a split's share
Seed = Annotated[int, Range(0, SEED_MAX)]  # every derived seed stays inside torch's range
# Adam passes lr / (1 - beta1^t) to float32 kernels (max 3.4e38): 1e30 leaves room for any beta1
# up to 1 - 1e-8, and is far above any rate that trains
LearningRate = Annotated[float, Range(0, 1e30, open_lo=True)]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def field_defaults(cfg: Any) -> dict[str, Any]:
    """The JSON-ready tree of the values ``cfg``'s fields take when nobody sets them (the field
    defaults, nested configs included); a field without a default is left out, except that a
    nested config without one contributes its own fields' defaults."""
    tree: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                tree[f.name] = field_defaults(value)
            continue
        tree[f.name] = to_dict(default) if dataclasses.is_dataclass(default) else default
    return json.loads(json.dumps(tree))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown(key: str, valid: typing.Iterable[str]) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(valid))}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        value = _coerce(key, value, args[0])
        for rng in (m for m in args[1:] if isinstance(m, Range)):
            if not rng.contains(value):
                kind = "an integer" if args[0] is int else "a number"
                raise ConfigError(
                    f"config key {key!r} must be {kind} {rng.describe()}, got {value!r}"
                )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message (e.g. its range)
            return _coerce(key, value, options[0])
        for arg in options:
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
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"config key {key!r} is too large for a float: {value}") from None
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value}")
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


def preset_items(fields: dict[str, Any], prefix: str = "") -> list[str]:
    """A preset's (possibly nested) dict as ``key=value`` override strings."""
    items: list[str] = []
    for key, value in fields.items():
        if isinstance(value, dict) and value:
            items += preset_items(value, f"{prefix}{key}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            items.append(f"{prefix}{key}={text}")
    return items


def resolve(
    default: C,
    presets: typing.Mapping[str, typing.Mapping[str, Any]],
    preset: str | None,
    sets: typing.Iterable[str],
    registry: typing.Mapping[str, type] | None = None,
) -> tuple[C, Any]:
    """The one resolver: preset → typed config → ``--set`` overrides → validation.

    ``preset`` names an entry of ``presets`` (None: the defaults); its items, then ``sets``, are
    applied to ``default``. With a method ``registry``, ``objective.<field>`` items go to the
    method's own dataclass (``registry[cfg.method]``), so an unknown or ill-typed objective field
    is rejected by name, and the returned config holds the objective's resolved fields. Returns
    ``(config, objective instance or None)``; every error is a ``ConfigError`` naming the key.
    """
    if preset is not None and preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(presets)}")
    items = preset_items(dict(presets.get(preset, {}))) + list(sets)
    if registry is None:
        return apply_overrides(default, items), None
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
