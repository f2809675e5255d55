"""The error contract (docs/errors.md): exit 2 and one line for bad input, 3 for the non-finite
stop, 1 with a traceback for a bug; ranges checked once, in ``config``, before any work."""

from __future__ import annotations

import argparse
import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scoredistill import cli
from scoredistill.config import ConfigError, apply_overrides
from scoredistill.errors import SEED_MAX, NonFiniteError, UserError, check_flag_values, report
from scoredistill.io import read_npz_headers
from scoredistill.runs.distill import resolve as resolve_distill
from scoredistill.runs.kd import resolve as resolve_kd
from scoredistill.runs.optimize import resolve as resolve_optimize
from scoredistill.train.two_player import TwoPlayerConfig


def _main(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def _one_line(err: str, prefix: str = "scoredistill: error: ") -> str:
    assert err.count("\n") == 1 and err.startswith(prefix) and "Traceback" not in err, err
    return err


def _sample(testbed: str, out: Path, *extra: str) -> list[str]:
    return ["sample", "--testbed", testbed, "--sampler", "ddim", "--nfe", "2", "--n", "20",
            *extra, "--out", str(out)]  # fmt: skip


# ----------------------------------------------------------------------------- npz files
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _good_npz(path: Path) -> Path:
    np.savez(path, means=np.eye(2), weights=np.ones(2), stds=np.ones(2))
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(b""), "an empty file"),
        (lambda p: p.write_bytes(_good_npz(p).read_bytes()[:150]), "truncated or damaged zip"),
        (lambda p: p.write_text("means = [[0, 1]]\n"), "a text file renamed .npz"),
        (lambda p: p.write_bytes(_npy(np.eye(2))), "a single .npy array renamed .npz"),
        (
            lambda p: np.savez(p, means=np.array([["a", "b"]]), weights=np.ones(1)),
            "'means' must hold real numbers",
        ),
        (
            lambda p: np.savez(p, means=np.eye(2), weights=np.ones(2), stds=np.ones(2), x=[1]),
            "unknown arrays ['x']",
        ),
    ],
)
def test_a_damaged_or_renamed_npz_is_named_in_one_line(tmp_path, capsys, make, needle):
    path = tmp_path / "teacher.npz"
    make(path)
    code, err = _main(_sample(str(path), tmp_path / "o"), capsys)
    assert code == 2 and needle in _one_line(err) and str(path) in err
    assert not (tmp_path / "o").exists()  # nothing was started


def _declares_huge_means(path: Path) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**5)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("means.npy", header.getvalue() + bytes(1 << 20))
        archive.writestr("weights.npy", _npy(np.ones(10**6)))
    return path


def test_npz_headers_are_checked_before_anything_is_decompressed(tmp_path, capsys):
    """A 1 MB file that declares a 745 GiB array is refused from its header: memory stays small
    (the whole check allocates < 50 MB; decompressing would take the full declared size)."""
    path = _declares_huge_means(tmp_path / "huge.npz")
    tracemalloc.start()
    try:
        code, err = _main(_sample(str(path), tmp_path / "o"), capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and "declares shape (1000000, 100000) of float64" in _one_line(err)
    assert peak < 50 * 2**20, peak


def test_a_mixture_over_the_size_limit_is_refused_from_its_headers(tmp_path, monkeypatch):
    from scoredistill.teachers import analytic

    monkeypatch.setattr(analytic, "MAX_NPZ_BYTES", 40)  # the good file holds 2*2 + 2 + 2 floats
    with pytest.raises(analytic.MixtureFormatError, match="the limit is"):
        analytic.GaussianMixtureTeacher.from_npz(_good_npz(tmp_path / "m.npz"))


def test_an_object_array_is_refused_without_unpickling(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "o.npz", "w") as archive:
        archive.writestr("means.npy", buf.getvalue())
    with pytest.raises(ValueError, match="holds Python objects"):
        read_npz_headers(tmp_path / "o.npz")


# ----------------------------------------------------------------------------- --out and OS errors
def test_out_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _main(_sample("ring8", tmp_path / "afile" / "run"), capsys)
    assert code == 2 and f"{tmp_path / 'afile'} is a file" in _one_line(err)


def test_out_that_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _main(["distill", "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and "not a folder" in _one_line(err)


def test_an_unwritable_out_is_one_line(capsys):
    """``/sys`` refuses a new folder even to root (where it does: Linux); the classification of
    ``PermissionError`` is also checked directly."""
    probe = Path("/sys/scoredistill-probe")
    try:
        probe.mkdir()
    except PermissionError:
        code, err = _main(_sample("ring8", probe), capsys)
        assert code == 2 and f"permission denied: cannot write or read {probe}" in _one_line(err)
    except OSError:
        pass
    buf = io.StringIO()
    assert report(PermissionError(13, "Permission denied", "/root/x"), buf) == 2
    assert (
        buf.getvalue().startswith("scoredistill: error: permission denied")
        and "/root/x" in buf.getvalue()
    )


# ----------------------------------------------------------------------------- exit codes
def test_an_internal_error_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    class Parser:  # a command with a bug
        def parse_args(self, argv):
            return argparse.Namespace(func=lambda args: 1 // 0)

    monkeypatch.setattr(cli, "build_parser", Parser)
    code, err = _main(["anything"], capsys)
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report it" in err


def test_the_non_finite_stop_is_exit_3_in_one_line(tmp_path, capsys):
    tiny = ["train.steps=3", "train.batch_size=16", "train.critic_updates=1", "critic.hidden=8",
            "critic.init_steps=2", "critic.init_batch=16", "generator.hidden=8",
            "train.eval_every=0", "train.eval_samples=50", "train.lr_generator=1e30",
            "train.grad_clip=0"]  # fmt: skip
    args = ["distill", "--preset", "dmd2-ring8", *[a for s in tiny for a in ("--set", s)]]
    code, err = _main([*args, "--out", str(tmp_path / "run")], capsys)
    said = [ln for ln in err.splitlines() if ln.startswith("scoredistill:")]
    assert code == 3 and "Traceback" not in err, err
    assert len(said) == 1 and said[0].startswith("scoredistill: stopped: ")
    assert "not finite at step" in said[0] and "checkpoints count completed updates" in said[0]


def test_non_finite_error_carries_the_completed_steps():
    from scoredistill.train.common import NonFiniteLossError, check_finite

    with pytest.raises(NonFiniteLossError) as info:
        check_finite(np.float64("nan") * __import__("torch").ones(1), 7, "loss")
    assert isinstance(info.value, NonFiniteError) and info.value.step == 7
    assert "during update 8" in str(info.value)


# ----------------------------------------------------------------------------- ranges
@pytest.mark.parametrize(
    ("resolve", "item", "needle"),
    [
        (resolve_distill, "train.steps=-5", "'train.steps' must be an integer >= 1, got -5"),
        (resolve_distill, "train.checkpoint_every=0", "'train.checkpoint_every' must be"),
        (resolve_distill, "train.log_every=0", "'train.log_every' must be an integer >= 1"),
        (resolve_distill, "train.critic_updates=0", "'train.critic_updates' must be"),
        (resolve_distill, "train.lr_generator=NaN", "'train.lr_generator' must be a finite"),
        (resolve_distill, "train.lr_critic=0", "'train.lr_critic' must be a number in (0, "),
        (resolve_distill, f"train.seed={SEED_MAX + 1}", f"in [0, {SEED_MAX}]"),
        (resolve_distill, "train.eval_every=-1", ">= 0 (0: only at the end)"),
        (resolve_distill, "train.beta1_generator=1", "in [0, 1)"),
        (resolve_distill, "train.steps=1e400", "'train.steps' expects int"),
        (resolve_optimize, "train.lr=1e39", "'train.lr' must be a number in (0, 1e+30], got 1e+39"),
        (resolve_optimize, "train.batch_size=-1", "'train.batch_size' must be an integer >= 0"),
        (resolve_kd, "train.batch_size=0", "'train.batch_size' must be an integer >= 1"),
        (resolve_kd, "n_labels=-1", "'n_labels' must be an integer >= 0"),
        (resolve_kd, "label_noise=2", "'label_noise' must be a number in [0, 1]"),
    ],
)
def test_out_of_range_values_are_refused_naming_key_and_range(resolve, item, needle):
    with pytest.raises(ConfigError) as info:
        resolve(None, [item])
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("preset", "item", "needle"),
    [
        ("autodistil-digits", "val_fraction=1", "'val_fraction' must be a number in (0, 1)"),
        ("knfu-digits", "proxy_fraction=0", "'proxy_fraction' must be a number in (0, 1)"),
        ("knfu-digits", "dirichlet_alpha=0", "'dirichlet_alpha' must be a number > 0"),
        ("knfu-digits", "kmeans_quantile=1.5", "'kmeans_quantile' must be a number in [0, 1]"),
        ("gkd-markov", "lmbda=-0.1", "'lmbda' must be a number in [0, 1]"),
        ("gkd-markov", "beta=2", "'beta' must be a number in [0, 1]"),
        ("minillm-markov", "mix_alpha=1.5", "'mix_alpha' must be a number in [0, 1]"),
        ("cvdd-digits", "ipc=0", "'ipc' must be an integer >= 1"),
        ("diswot-digits", "alpha=-1", "'alpha' must be a number in [0, 1]"),
        ("bdkd-online-classification", "lambda_s=-1", "'lambda_s' must be a number >= 0"),
        ("sweep-digits", "headline_temperature=0", "'headline_temperature' must be a number > 0"),
        ("comd-digits", "noise=-0.3", "'noise' must be a number >= 0"),
    ],
)
def test_kd_procedure_fractions_and_weights_are_range_checked(preset, item, needle):
    from scoredistill.runs import FAMILIES

    with pytest.raises(ConfigError) as info:
        FAMILIES["kd-procedure"].resolve(preset, [item])
    assert needle in str(info.value)


def test_a_range_holds_for_optional_and_nested_values():
    assert apply_overrides(TwoPlayerConfig(), ["eval_every=0"]).eval_every == 0  # 0 = at the end
    with pytest.raises(ConfigError, match="'steps' must be an integer >= 1"):
        apply_overrides(TwoPlayerConfig(), ["steps=0"])


def test_non_finite_floats_are_refused_everywhere():
    """Also in a method's own fields (no annotation needed): objective.<x>=NaN."""
    with pytest.raises(ConfigError, match=r"'objective\.sid_alpha' must be a finite number"):
        resolve_distill("sid-ring8", ["objective.sid_alpha=NaN"])


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"cfg": float("nan")}, "--cfg must be a finite number"),
        ({"seed": -1}, "--seed: a seed must be an integer in"),
        ({"testbed_seed": 2**70}, "--testbed-seed"),
        ({"seeds": (0, -1)}, "--seeds"),
    ],
)
def test_flag_values_no_command_can_use(values, needle):
    with pytest.raises(UserError, match=needle):
        check_flag_values(values)
    check_flag_values({"cfg": 3.0, "seed": SEED_MAX, "seeds": (0, 1)})


def test_a_nan_cfg_flag_exits_2(tmp_path, capsys):
    code, err = _main(_sample("cond2d", tmp_path / "o", "--cfg", "nan"), capsys)
    assert code == 2 and "--cfg" in _one_line(err)
