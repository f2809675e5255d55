"""What every command shares: the parser class, flag types and the run-folder check."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..io import atomic_write_json

__all__ = [
    "Parser",
    "UsageError",
    "int_list",
    "name_list",
    "positive_int",
    "prepare_out",
    "seed_list",
    "unit_float",
]


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (a share)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def int_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(v) for v in text.split(",") if v)


def name_list(valid: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(v for v in text.split(",") if v)
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown name {name!r}; valid: {', '.join(valid)}"
                )
        return names

    return parse


def prepare_out(args: argparse.Namespace) -> Path:
    """The ``--out`` folder, created, with the command line as ``config.json``."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_json(out / "config.json", config)
    return out
