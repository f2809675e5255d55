"""``scoredistill`` command line: testbeds, teacher sampling, the sampler × NFE baseline.

Every command that runs work writes one folder (``--out``) with ``config.json``, machine-readable
results and PNG figures. Bad input ends with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from tqdm import tqdm

from .bench import SUITES
from .config import ConfigError, to_dict
from .eval.baseline import baseline_rows, cell_metrics, exact_rows, sample_cell
from .io import atomic_write_json
from .samplers import SAMPLERS, SPACINGS, nfe_to_steps
from .schedules import SCHEDULES
from .teachers.analytic import MixtureFormatError

__all__ = ["main"]

DEFAULT_NFES = (1, 2, 4, 8, 16, 64)
DEFAULT_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m")


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------- helpers
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(v) for v in text.split(",") if v)


def _name_list(valid: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(v for v in text.split(",") if v)
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown name {name!r}; valid: {', '.join(valid)}"
                )
        return names

    return parse


def _load_testbed(name: str, seed: int, schedule: str):
    from .teachers.testbeds import get_testbed

    return get_testbed(name, seed=seed, schedule=schedule)


def _save_samples(path: Path, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    arrays = {"x": x.reshape(x.shape[0], -1).numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez(path, **arrays)


# ----------------------------------------------------------------------------- commands
def cmd_testbeds(args: argparse.Namespace) -> int:
    """Print the named testbeds."""
    from .teachers.testbeds import list_testbeds

    rows = list_testbeds()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    if args.plot:
        from .eval.plots import save_testbed_plot

        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        for name, _ in tqdm(rows, desc="plots", unit="testbed", file=sys.stderr):
            save_testbed_plot(_load_testbed(name, args.testbed_seed, "edm"), out / f"{name}.png")
        print(f"wrote {len(rows)} plots of exact samples to {out}/")
    print(
        "\nAlso accepted wherever a testbed is: a mixture file path/to/file.npz "
        "(means, weights, stds|covs, labels) and a learned-teacher folder from train-teacher."
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a teacher once; write samples.npz, metrics.json, samples.png."""
    from .eval.plots import save_panels

    nfe_to_steps(args.sampler, args.nfe)
    testbed = _load_testbed(args.testbed, args.testbed_seed, args.schedule)
    out = _prepare_out(args)
    x, labels, used, wall = sample_cell(
        testbed,
        args.sampler,
        args.nfe,
        args.n,
        args.seed,
        cfg=args.cfg,
        spacing=args.spacing,
        fixed=args.klass,
    )
    metrics = {**cell_metrics(testbed, x, labels, args.seed), "nfe": used, "wall_s": wall}
    _save_samples(out / "samples.npz", x, labels)
    atomic_write_json(out / "metrics.json", metrics)
    title = f"{testbed.name}: {args.sampler}, NFE={used}"
    save_panels(testbed, {title: x}, out / "samples.png", labels=labels)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """The teacher's sampler × NFE table: baseline.json, baseline.md and one PNG per sampler."""
    from .eval.plots import save_panels
    from .eval.report import baseline_markdown

    testbed = _load_testbed(args.testbed, args.testbed_seed, args.schedule)
    out = _prepare_out(args)
    rows, panels = baseline_rows(
        testbed, args.samplers, args.nfe, args.n, args.seed, cfg=args.cfg, spacing=args.spacing
    )
    rows.extend(exact_rows(testbed, args.n, args.seed))
    result = {
        "testbed": testbed.name,
        "schedule": args.schedule,
        "n": args.n,
        "seed": args.seed,
        "rows": rows,
    }
    atomic_write_json(out / "baseline.json", result)
    table = baseline_markdown(result)
    (out / "baseline.md").write_text(table)
    for sampler, by_nfe in panels.items():
        save_panels(
            testbed, by_nfe, out / f"samples_{sampler}.png", suptitle=f"{testbed.name}: {sampler}"
        )
    print(table)
    print(f"wrote {out}/baseline.json, baseline.md, samples_<sampler>.png")
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """Train the learned 2-D teacher by denoising score matching on an exact testbed."""
    from .teachers.neural import train_learned_teacher

    out = _prepare_out(args)
    info = train_learned_teacher(
        args.testbed, seed=args.seed, steps=args.steps, out_dir=out, progress=not args.quiet
    )
    print(json.dumps(info, indent=2))
    return 0


def _run_sets(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``--set`` items plus the shortcut flags (``--steps`` …) as ``key=value`` overrides."""
    sets = list(args.set)
    sets += [
        f"{key}={getattr(args, a)}" for a, key in flags.items() if getattr(args, a) is not None
    ]
    return sets


def _dry_run_or_out(args: argparse.Namespace, cfg) -> Path | None:
    """None after printing the config for ``--dry-run``; else the checked ``--out`` folder
    (under torchrun only rank 0 checks)."""
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return None
    out = Path(args.out)
    first_rank = int(os.environ.get("RANK", "0")) == 0
    if first_rank and out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"--out {out} is not empty; pass --resume to continue that run")
    return out


_TRAIN_FLAGS = {"steps": "train.steps", "seed": "train.seed"}


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a one-step generator; writes metrics.json, samples, checkpoints, report.md."""
    from .distill import resolve, run_distill
    from .teachers.testbeds import get_testbed

    cfg, objective = resolve(args.preset, _run_sets(args, {"testbed": "testbed", **_TRAIN_FLAGS}))
    get_testbed(cfg.testbed, schedule=cfg.schedule)  # a bad testbed fails before any training
    out = _dry_run_or_out(args, cfg)
    if out is None:
        return 0
    metrics = run_distill(cfg, objective, out, resume=args.resume)
    if metrics:
        print(json.dumps(metrics, indent=2))
        report = (out / "report.md").read_text()
        print(report[report.find("## Where the student lands") :])
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """Score distillation as optimization; writes metrics.json, a figure, report.md."""
    from .optimize import resolve, run_optimize

    cfg, objective = resolve(args.preset, _run_sets(args, _TRAIN_FLAGS))
    out = _dry_run_or_out(args, cfg)
    if out is None:
        return 0
    print(json.dumps(run_optimize(cfg, objective, out, resume=args.resume), indent=2))
    return 0


def cmd_kd(args: argparse.Namespace) -> int:
    """Knowledge distillation: teacher, student and no-teacher baseline; writes metrics.json."""
    from .kd.run import PRESETS, resolve, run_kd

    if args.preset is not None and args.preset not in PRESETS:
        try:  # procedures (online KD, LM distillation, sweep, DisWOT) are presets of their own
            from .kd.procedures import PROCEDURE_PRESETS, resolve_procedure, run_procedure
        except ImportError:
            PROCEDURE_PRESETS = {}
        if args.preset in PROCEDURE_PRESETS:
            sets = _run_sets(args, {"steps": "steps", "seed": "seed"})
            out = _dry_run_or_out(args, resolve_procedure(args.preset, sets)[1])
            if out is not None:
                print(json.dumps(run_procedure(args.preset, sets, out, args.resume), indent=2))
            return 0
    cfg = resolve(args.preset, _run_sets(args, _TRAIN_FLAGS))
    out = _dry_run_or_out(args, cfg)
    if out is None:
        return 0
    metrics = run_kd(cfg, out, resume=args.resume)
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite; writes results.json and results.md (and every run's folder)."""
    from .bench import run_suite

    run_suite(
        args.suite,
        Path(args.out),
        quick=args.quick,
        extra=list(args.set),
        seeds=args.seeds or ((0,) if args.quick else (0, 1, 2)),
        presets=args.presets,
    )
    return 0


def _prepare_out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_json(out / "config.json", config)
    return out


# ----------------------------------------------------------------------------- parser
def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--testbed",
        required=True,
        help="a name from `scoredistill testbeds`, a .npz or a teacher folder",
    )
    p.add_argument(
        "--schedule", default="edm", choices=list(SCHEDULES), help="forward process (default edm)"
    )
    p.add_argument("--testbed-seed", type=int, default=0, help="seed of the testbed's construction")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--n", type=_positive_int, default=2000, help="number of samples")
    p.add_argument(
        "--cfg", type=float, default=1.0, help="guidance scale w (1 = none, 0 = unconditional)"
    )
    p.add_argument(
        "--spacing", choices=SPACINGS, default=None, help="time grid (default: the schedule's)"
    )
    p.add_argument("--out", required=True, help="run folder")


def _add_run_args(p: argparse.ArgumentParser, presets: str, steps: str, func) -> None:
    """The flags shared by the run commands (distill, optimize, kd)."""
    p.add_argument("--preset", default=None, help=f"a name from {presets}")
    p.add_argument("--steps", type=_positive_int, default=None, help=steps)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--out", required=True)
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="scoredistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("testbeds", help="list the named testbeds")
    p.add_argument("--plot", metavar="DIR", default=None, help="also plot exact samples of each")
    p.add_argument("--testbed-seed", type=int, default=0, help="seed of the testbeds' construction")
    p.set_defaults(func=cmd_testbeds)

    p = sub.add_parser("sample", help="sample a teacher with one sampler and NFE")
    _add_teacher_args(p)
    p.add_argument("--sampler", required=True, choices=list(SAMPLERS))
    p.add_argument("--nfe", required=True, type=_positive_int, help="network evaluations")
    p.add_argument("--class", dest="klass", type=int, default=None, help="fix the class label")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("baseline", help="the teacher's sampler x NFE table")
    _add_teacher_args(p)
    p.add_argument("--samplers", type=_name_list(list(SAMPLERS)), default=DEFAULT_SAMPLERS)
    p.add_argument(
        "--nfe", type=_int_list, default=DEFAULT_NFES, help="comma list, e.g. 1,2,4,8,16,64"
    )
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("bench", help="benchmark suites (onestep: every method, 3 seeds)")
    p.add_argument("--suite", default="onestep", choices=sorted(SUITES))
    p.add_argument("--quick", action="store_true", help="smoke budget: checks the suite runs")
    p.add_argument(
        "--presets", type=_name_list(sorted({n for v in SUITES.values() for n in v})), default=None
    )
    p.add_argument(
        "--seeds", type=_seed_list, default=None, help="comma list (default 0,1,2; --quick: 0)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override in every run"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("distill", help="distil a one-step generator from a testbed's teacher")
    p.add_argument("--testbed", default=None, help="swap the preset's teacher (same dimension)")
    _add_run_args(p, "scoredistill.presets.PRESETS", "generator updates", cmd_distill)
    p = sub.add_parser("optimize", help="score distillation as optimization (3-D field, particles)")
    _add_run_args(p, "scoredistill.optimize.PRESETS", "source updates", cmd_optimize)
    p = sub.add_parser("kd", help="knowledge distillation of a classifier, with its baseline")
    _add_run_args(p, "scoredistill.kd.run.PRESETS", "student optimizer steps", cmd_kd)

    p = sub.add_parser(
        "train-teacher", help="train the learned 2-D teacher (DSM) on an exact testbed"
    )
    p.add_argument("--testbed", default="moons")
    p.add_argument("--steps", type=_positive_int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train_teacher)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, ConfigError, MixtureFormatError, FileNotFoundError, ValueError) as err:
        if os.environ.get("SCOREDISTILL_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"scoredistill: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
