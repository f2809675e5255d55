"""Try classes of bad input through ``scoredistill.cli.main`` and count how each one ends.

Every case runs in-process (stdout/stderr captured) and is classified as

- ``clean``: the documented exit code (2 bad input, 3 the non-finite stop), exactly one
  ``scoredistill: error|stopped:`` line on stderr, no traceback and, where the case targets an
  existing run folder, nothing in that folder changed;
- ``traceback``: an exception escaped ``main`` or stderr holds a traceback (exit 1);
- ``accepted``: exit 0 although the input is invalid;
- ``wrote``: the right exit, but the existing run folder was changed;
- ``other``: any other exit code or message shape.

A few *recoveries* (a run folder damaged by a kill) must instead end with exit 0 and resume
from the right step. The table goes to ``docs/errors.md``::

    OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py [--only npz,diffusers,config,...] [--verbose]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scoredistill.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from bad_diffusers_folders import DIFFUSERS
from bad_npz_files import NPZ

TINY = [  # a two-player run of seconds (ring8, MLPs of width 8)
    "train.steps=3",
    "train.batch_size=16",
    "train.critic_updates=1",
    "train.checkpoint_every=2",
    "train.eval_every=0",
    "train.eval_samples=100",
    "critic.init_steps=2",
    "critic.init_batch=16",
    "critic.hidden=8",
    "generator.hidden=8",
]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


@dataclass
class Case:
    category: str
    name: str
    argv: Callable[[Path], list[str]]  # tmp folder -> argv
    expect: int = 2
    folder: Callable[[Path], Path] | None = None  # an existing run folder that must not change
    check: Callable[[Path], str] | None = None  # recoveries: "" when the outcome is right


def _sample(testbed: str, *extra: str) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        return ["sample", "--testbed", testbed, "--sampler", "ddim", "--nfe", "2", "--n", "50",
                *extra, "--out", str(tmp / "o")]  # fmt: skip

    return argv


def _npz_case(build: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: _sample(str(build(tmp)))(tmp)


# ----------------------------------------------------------------------------- run folders
_BASE: dict[str, Path] = {}


def _base_run(tmp: Path) -> Path:
    """A finished tiny distill run (made once, copied for each case)."""
    if "distill" not in _BASE:
        base = Path(tempfile.mkdtemp(prefix="bad-inputs-base-")) / "run"
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            code = main(["distill", "--preset", "dmd2-ring8", *_sets(TINY), "--out", str(base)])
        assert code == 0, "the base run failed"
        _BASE["distill"] = base
    run = tmp / "run"
    if not run.exists():
        shutil.copytree(_BASE["distill"], run)
    return run


def _resume(*sets: str, prepare: Callable[[Path], None] | None = None):
    def argv(tmp: Path) -> list[str]:
        run = _base_run(tmp)
        if prepare is not None:
            prepare(run)
        return ["distill", "--preset", "dmd2-ring8", *_sets([*TINY, *sets]), "--resume",
                "--out", str(run)]  # fmt: skip

    return argv


def _hold_lock(run: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _HOLDERS.append(holder)
    lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "now"}
    (run / ".lock").write_text(json.dumps(lock))


_HOLDERS: list[subprocess.Popen] = []


def _point_latest(target: str) -> Callable[[Path], None]:
    def prepare(run: Path) -> None:
        (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "path": target}))

    return prepare


def _log_steps(expected: list[int]) -> Callable[[Path], str]:
    """A recovery is right when the training lines of the log are ``expected``: once each, none
    replayed from step 0 (TINY logs at its last step only: 3, then 5 after the resume)."""

    def check(tmp: Path) -> str:
        lines = [json.loads(ln) for ln in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        train = [r["step"] for r in lines if not r.get("eval")]
        return "" if train == expected else f"log steps {train}, expected {expected}"

    return check


def _drop_latest(run: Path) -> None:
    (run / "checkpoints" / "latest.json").unlink()


def _tear_log(run: Path) -> None:
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "wall_s": 0.')


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


# ----------------------------------------------------------------------------- the cases
def cases() -> list[Case]:
    out: list[Case] = [Case("npz", name, _npz_case(build)) for name, build in NPZ]
    out += [Case("diffusers", name, argv) for name, argv in DIFFUSERS]
    flags = [
        ("--cfg nan", _sample("cond2d", "--cfg", "nan")),
        ("--cfg inf", _sample("cond2d", "--cfg", "inf")),
        ("--seed -1", _sample("ring8", "--seed", "-1")),
        ("--seed 2**70", _sample("ring8", "--seed", str(2**70))),
        ("--testbed-seed -3", _sample("ring8", "--testbed-seed", "-3")),
        ("--nfe 0", lambda t: [*_sample("ring8")(t)[:-2], "--nfe", "0", "--out", str(t / "o")]),
        ("--n 0", _sample("ring8", "--n", "0")),
        ("--class 99", _sample("cond2d", "--class", "99")),
        ("--class -2", _sample("cond2d", "--class", "-2")),
        ("--class on an unconditional testbed", _sample("ring8", "--class", "1")),
        ("--testbed ring9", _sample("ring9")),
        (
            "baseline --nfe a,b",
            lambda t: ["baseline", "--testbed", "ring8", "--nfe", "a,b", "--out", str(t / "o")],
        ),
        ("unknown command", lambda t: ["distil", "--out", str(t)]),
        ("unknown flag", lambda t: ["distill", "--stepz", "3", "--out", str(t)]),
        ("distill --steps 0", lambda t: ["distill", "--steps", "0", "--dry-run", "--out", str(t)]),
        ("distill --seed -1", lambda t: ["distill", "--seed", "-1", "--dry-run", "--out", str(t)]),
        ("unknown preset", lambda t: ["distill", "--preset", "dmd9", "--out", str(t)]),
        ("bench --seeds -1", lambda t: ["bench", "--quick", "--seeds", "-1", "--out", str(t)]),
    ]
    out += [Case("flags", name, argv) for name, argv in flags]
    config = {
        "distill": [
            "train.steps=-5", "train.steps=0", "train.batch_size=0", "train.lr_generator=NaN",
            "train.lr_generator=-1", "train.lr_critic=0", "train.checkpoint_every=0",
            "train.log_every=0", "train.critic_updates=0", "train.seed=-1",
            f"train.seed={2**64}", "train.eval_samples=0", "train.ema_halflife=-1",
            "train.grad_clip=NaN", "generator.hidden=0", "critic.init_batch=0",
            "critic.init_steps=0", "train.beta1_generator=1.0", "train.steps=1e400",
            "train.lr_generator=1e400", "train.lr_generator=Infinity", "train.eval_every=-1",
            "train.steps=many", "train.stepz=3",
        ],
        "optimize": ["train.lr=0", "train.batch_size=-1", "source.n_particles=0",
                     "train.lr=Infinity", "train.lr=1e39", "train.lr=3e38", "train.beta2=1",
                     "objective.t_range=[NaN, 0.9]"],
        "kd": ["train.batch_size=0", "train.steps=-5", "n_labels=-1", "teacher.lr=-1",
               "label_noise=2", "data_seed=-1", "temperature=0"],
    }  # fmt: skip
    procedures = {"knfu-digits": ["proxy_fraction=0", "kmeans_quantile=1.5"],
                  "gkd-markov": ["lmbda=-0.1"], "cvdd-digits": ["ipc=0"],
                  "autodistil-digits": ["val_fraction=1"]}  # fmt: skip
    for preset, items in procedures.items():
        config["kd"] += [f"--preset {preset} {item}" for item in items]
    for command, items in config.items():
        for item in items:
            preset = item.split()[:2] if item.startswith("--preset") else []
            argv = [command, *preset, *_sets([item.split()[-1]]), "--dry-run"]
            out.append(Case("config", f"{command} {item}", lambda t, a=argv: [*a, "--out", str(t)]))
    outs = [
        ("sample --out under a file", lambda t: [*_sample("ring8")(t)[:-1], str(_file(t) / "o")]),
        ("sample --out an existing file", lambda t: [*_sample("ring8")(t)[:-1], str(_file(t))]),
        ("sample --out unwritable", lambda t: [*_sample("ring8")(t)[:-1], "/sys/scoredistill"]),
        ("distill --out an existing file",
         lambda t: ["distill", *_sets(TINY), "--out", str(_file(t))]),
        ("distill --out under a file",
         lambda t: ["distill", *_sets(TINY), "--out", str(_file(t) / "run")]),
        ("distill --out unwritable", lambda t: ["distill", *_sets(TINY), "--out", "/sys/sd"]),
        ("train-teacher --out under a file",
         lambda t: ["train-teacher", "--steps", "2", "--out", str(_file(t) / "x")]),
        ("distill into a used folder without --resume",
         lambda t: ["distill", *_sets(TINY), "--out", str(_base_run(t))]),
    ]  # fmt: skip
    out += [Case("out", name, argv, folder=_run_if_used(name)) for name, argv in outs]
    resume = [
        ("changed architecture", _resume("generator.hidden=16")),
        ("changed learning rate", _resume("train.lr_generator=0.01")),
        ("changed method", _resume("method=sid")),
        ("changed testbed", _resume("testbed=grid25")),
        ("a live run holds the lock", _resume(prepare=_hold_lock)),
        ("latest.json points outside", _resume(prepare=_point_latest("../../etc"))),
        ("latest.json names a non-step path", _resume(prepare=_point_latest("/tmp"))),
    ]
    out += [Case("resume", name, argv, folder=lambda t: t / "run") for name, argv in resume]
    out += [
        Case("non-finite", "distill lr_generator=1e30",
             lambda t: ["distill", *_sets([*TINY, "train.lr_generator=1e30", "train.grad_clip=0"]),
                        "--out", str(t / "nf")], expect=3),
        Case("non-finite", "kd lr=1e30",
             lambda t: ["kd", "--preset", "kd-digits", "--quick", *_sets(["train.lr=1e30"]),
                        "--out", str(t / "nf")], expect=3),
        Case("recovery", "latest.json missing", _resume("train.steps=5", prepare=_drop_latest),
             expect=0, check=_log_steps([3, 5])),
        Case("recovery", "torn last line of metrics.jsonl",
             _resume("train.steps=5", prepare=_tear_log), expect=0, check=_log_steps([3, 5])),
    ]  # fmt: skip
    return out


def _run_if_used(name: str) -> Callable[[Path], Path] | None:
    return (lambda t: t / "run") if "used folder" in name else None


# ----------------------------------------------------------------------------- running
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def run_case(case: Case, tmp: Path) -> tuple[str, int | str, str]:
    """``(outcome, exit code, last stderr line)`` of one case in the folder ``tmp``."""
    argv = case.argv(tmp)
    folder = case.folder(tmp) if case.folder else None
    before = _digest(folder) if folder is not None and folder.exists() else None
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code: int | str = main(argv)
    except SystemExit as exc:  # argparse's --help and friends
        code = f"SystemExit({exc.code})"
    except BaseException as exc:
        return "traceback", f"{type(exc).__name__}", str(exc).splitlines()[0] if str(exc) else ""
    text = err.getvalue()
    said = [
        ln
        for ln in text.splitlines()
        if ln.startswith(("scoredistill: error", "scoredistill: stopped"))
    ]
    last = said[-1] if said else (text.strip().splitlines() or [""])[-1]
    if "Traceback" in text or code == 1:
        return "traceback", code, last
    if case.expect == 0:
        wrong = case.check(tmp) if (code == 0 and case.check) else f"exit {code}"
        return ("clean" if not wrong else "other"), code, wrong or last
    if code == 0:
        return "accepted", code, last
    if code != case.expect or len(said) != 1:
        return "other", code, last
    if before is not None and _digest(folder) != before:
        return "wrote", code, last
    return "clean", code, last


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma list of categories")
    parser.add_argument("--verbose", action="store_true", help="print every case's message")
    args = parser.parse_args()
    only = {c for c in args.only.split(",") if c}
    rows: dict[str, Counter] = {}
    problems = []
    start = time.perf_counter()
    try:
        for case in cases():
            if only and case.category not in only:
                continue
            with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
                outcome, code, last = run_case(case, Path(tmp))
            rows.setdefault(case.category, Counter())[outcome] += 1
            if outcome != "clean" or args.verbose:
                problems.append(
                    f"{outcome:9s} {case.category:10s} {case.name}: exit {code}: {last}"
                )
    finally:
        for holder in _HOLDERS:
            holder.kill()
        for base in _BASE.values():
            shutil.rmtree(base.parent, ignore_errors=True)
    kinds = ["clean", "traceback", "accepted", "wrote", "other"]
    print("| class | tried | " + " | ".join(kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    total: Counter = Counter()
    for category, counts in rows.items():
        total += counts
        cells = " | ".join(str(counts[k]) for k in kinds)
        print(f"| {category} | {sum(counts.values())} | {cells} |")
    cells = " | ".join(f"**{total[k]}**" for k in kinds)
    print(f"| **all** | **{sum(total.values())}** | {cells} |")
    print(f"\n{time.perf_counter() - start:.0f} s")
    for line in problems:
        print(line)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main_cli()
