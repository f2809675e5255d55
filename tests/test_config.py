"""Typed configs: overrides and dict loading reject bad keys and types, naming them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from scoredistill.config import ConfigError, apply_overrides, from_dict, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True)
class Run:
    steps: int = 100
    name: str = "run"
    ema: float | None = None
    loss: Literal["mse", "huber"] = "mse"
    fast: bool = False
    optim: Optim = field(default_factory=Optim)


def test_overrides_parse_and_nest():
    cfg = apply_overrides(
        Run(), ["steps=5", "optim.lr=0.5", "optim.betas=[0, 0.99]", "ema=null", "fast=true"]
    )
    assert cfg == Run(steps=5, optim=Optim(lr=0.5, betas=(0.0, 0.99)), fast=True)
    assert apply_overrides(Run(), ["name=123"]).name == "123"  # str fields keep the text
    assert apply_overrides(Run(), ["optim.lr=3"]).optim.lr == 3.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=5", "unknown config key 'stepz'"),
        ("optim.momentum=0.9", "unknown config key 'optim.momentum'"),
        ("steps=five", "'steps' expects int"),
        ("steps=1.5", "'steps' expects int"),
        ("fast=1", "'fast' expects bool"),
        ("loss=l1", "'loss' must be one of"),
        ("steps.x=1", "not a section"),
        ("steps", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Run(), [override])


def test_dict_round_trip_and_unknown_keys():
    cfg = Run(steps=7, optim=Optim(lr=0.1))
    assert from_dict(Run, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"'optim\.lrr'"):
        from_dict(Run, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="expects a mapping"):
        from_dict(Run, {"optim": 3})
