"""Property-based: hostile input to the command line ends with exit 2, exactly one line on
stderr, no traceback, and nothing written into an existing run folder (docs/errors.md).

The bad config values are generated from the configs' own ``Range`` annotations, so a field
annotated tomorrow is fuzzed tomorrow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoredistill.cli import main
from scoredistill.config import Range
from scoredistill.runs.distill import DistillConfig
from scoredistill.runs.kd import KDConfig
from scoredistill.runs.optimize import OptimizeConfig

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _contract(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (args, code, err)
    assert err.count("\n") == 1 and err.startswith("scoredistill: error: "), (args, err)
    assert "Traceback" not in err
    return err


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes() if path.is_file() else b"/")
    return h.hexdigest()


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder as a run leaves it (config, log, a checkpoint pointer)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text('{"method": "dmd"}\n')
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "checkpoints" / "latest.json").write_text('{"step": 1, "path": "step-1"}\n')
    return out


# ----------------------------------------------------------------------------- config values
def _ranged(cls: type, prefix: str = "") -> list[tuple[str, type, Range]]:
    """``(key, int|float, Range)`` of every range-annotated field of a (nested) config."""
    found = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            found += _ranged(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is typing.Annotated:
            base, *meta = typing.get_args(tp)
            found += [(prefix + f.name, base, m) for m in meta if isinstance(m, Range)]
    return found


KEYS = [(cmd, *k) for cmd, cls in [("distill", DistillConfig), ("optimize", OptimizeConfig),
                                    ("kd", KDConfig)] for k in _ranged(cls)]  # fmt: skip
BIG = 2**80


def _outside(base: type, rng: Range) -> st.SearchStrategy[str]:
    """Text of a value ``rng`` refuses (or that is no number of type ``base`` at all)."""
    options = [st.sampled_from(["NaN", "Infinity", "-Infinity", "abc", "[1]", "true", "{}"])]
    if base is int:
        options.append(st.sampled_from(["1.5", "1e400"]))
        if rng.lo is not None:
            options.append(st.integers(-BIG, int(rng.lo) - (0 if rng.open_lo else 1)).map(str))
        if rng.hi is not None:
            options.append(st.integers(int(rng.hi) + (0 if rng.open_hi else 1), BIG).map(str))
    else:
        if rng.lo is not None:
            below = st.floats(-1e300, rng.lo, exclude_max=not rng.open_lo)
            options.append(below.map(repr))
        if rng.hi is not None:
            above = st.floats(rng.hi, 1e300, exclude_min=not rng.open_hi)
            options.append(above.map(repr))
    return st.one_of(options)


@st.composite
def bad_settings(draw) -> tuple[str, str]:
    command, key, base, rng = draw(st.sampled_from(KEYS))
    return command, f"{key}={draw(_outside(base, rng))}"


def test_every_family_has_range_annotated_keys():
    commands = {cmd for cmd, *_ in KEYS}
    assert commands == {"distill", "optimize", "kd"} and len(KEYS) > 40
    assert ("distill", "train.steps", int, Range(1)) in KEYS


@FUZZ
@given(bad=bad_settings())
def test_an_out_of_range_set_value_is_refused_before_touching_the_run(bad, run_folder, capsys):
    command, item = bad
    before = _digest(run_folder)
    err = _contract([command, "--set", item, "--resume", "--out", str(run_folder)], capsys)
    assert repr(item.split("=")[0]) in err  # names the key
    assert _digest(run_folder) == before


# ----------------------------------------------------------------------------- npz files
def _good_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, means=np.eye(2), weights=np.ones(2), stds=np.ones(2))
    return buf.getvalue()


GOOD = _good_npz()


def _sample(testbed: Path, out: Path) -> list[str]:
    return ["sample", "--testbed", str(testbed), "--sampler", "ddim", "--nfe", "1", "--n", "8",
            "--out", str(out)]  # fmt: skip


@FUZZ
@given(
    data=st.one_of(
        st.integers(0, len(GOOD) - 1).map(lambda n: GOOD[:n]),  # truncated anywhere
        st.binary(max_size=600),  # anything at all
        st.binary(min_size=1, max_size=64).map(lambda b: b"PK\x03\x04" + b),  # a zip's start
    )
)
def test_a_corrupted_npz_is_refused_in_one_line(data, run_folder, tmp_path, capsys):
    path = tmp_path / "teacher.npz"
    path.write_bytes(data)
    before = _digest(run_folder)
    _contract(_sample(path, run_folder), capsys)
    assert _digest(run_folder) == before


@FUZZ
@given(
    shape=st.lists(st.integers(0, 10**7), min_size=0, max_size=4).map(tuple),
    descr=st.sampled_from(["<f8", "<U3", "|S2", "<c16", "|b1", "<i8", "<f2", "|V4"]),
    data=st.binary(max_size=64),
)
def test_a_forged_npy_header_is_refused_in_one_line(
    shape, descr, data, run_folder, tmp_path, capsys
):
    """``means.npy`` declaring any shape and dtype over a few bytes: refused from the header
    (no allocation of the declared size); the file has no stds/covs, so none is a mixture."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("means.npy", head.getvalue() + data)
        archive.writestr("weights.npy", _npy(np.ones(3)))
    _contract(_sample(path, run_folder), capsys)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# ----------------------------------------------------------------------------- flags
FLAGS = st.one_of(
    st.tuples(st.just("--cfg"), st.sampled_from(["nan", "inf", "-inf", "x"])),
    st.tuples(
        st.just("--seed"), st.one_of(st.integers(-BIG, -1), st.integers(2**32, BIG)).map(str)
    ),
    st.tuples(st.just("--testbed-seed"), st.integers(-BIG, -1).map(str)),
    st.tuples(st.sampled_from(["--n", "--nfe"]), st.integers(-BIG, 0).map(str)),
    st.tuples(st.sampled_from(["--n", "--nfe", "--seed"]), st.sampled_from(["1.5", "", "1e3"])),
    st.tuples(st.just("--sampler"), st.text(max_size=8).filter(lambda s: s.isprintable())),
)


@FUZZ
@given(flag=FLAGS)
def test_a_bad_flag_is_refused_in_one_line(flag, run_folder, capsys):
    name, value = flag
    args = ["sample", "--testbed", "cond2d", "--sampler", "ddim", "--nfe", "1", "--n", "8"]
    if name in args:
        at = args.index(name)
        args[at + 1] = value
    else:
        args += [name, value]
    before = _digest(run_folder)
    _contract([*args, "--out", str(run_folder)], capsys)
    assert _digest(run_folder) == before


RUN_FLAGS = st.one_of(
    st.tuples(st.just("--steps"), st.integers(-BIG, 0)),
    st.tuples(st.just("--seed"), st.one_of(st.integers(-BIG, -1), st.integers(2**32, BIG))),
)


@FUZZ
@given(flag=RUN_FLAGS, command=st.sampled_from(["distill", "optimize", "kd"]))
def test_a_bad_run_flag_is_refused_before_the_run(flag, command, run_folder, capsys):
    name, value = flag
    before = _digest(run_folder)
    _contract([command, name, str(value), "--resume", "--out", str(run_folder)], capsys)
    assert _digest(run_folder) == before
