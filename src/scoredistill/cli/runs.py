"""Run commands: ``distill``, ``optimize``, ``kd`` (one code path over ``runs.FAMILIES``),
``presets`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..bench import SUITES
from ..config import field_defaults, to_dict
from ..train.run_folder import open_run_folder
from .common import UsageError, name_list, positive_int, seed_list

__all__ = ["add_run_commands"]


def _dry_run_or_out(args: argparse.Namespace, family, resolved) -> Path | None:
    """None after printing the config (and the family's dry-run fields: parameter counts,
    memory) for ``--dry-run``; else the checked ``--out`` folder (under torchrun only rank 0
    checks)."""
    if args.dry_run:
        print(json.dumps({**to_dict(resolved.config), **family.dry_run(resolved)}, indent=2))
        return None
    out = Path(args.out)
    first_rank = int(os.environ.get("RANK", "0")) == 0
    if first_rank and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if first_rank and out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"--out {out} is not empty; pass --resume to continue that run")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """One code path for every run family (distill, optimize, kd): preset → typed config →
    ``--quick``/``--steps``/``--seed``/``--set`` overrides → validation → run into ``--out``."""
    from ..runs import family_of

    if args.out is None and not args.dry_run:
        raise UsageError(f"scoredistill {args.command}: --out is required (except with --dry-run)")
    family = family_of(args.command, args.preset, teacher=args.teacher is not None)
    sets = family.quick(args.preset) if args.quick else []
    for flag in ("testbed", "teacher", "scheduler", "prompts"):
        if getattr(args, flag) is not None:
            sets.append(f"{flag}={getattr(args, flag)}")
    for flag, key in (("steps", family.steps_key), ("seed", family.seed_key)):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={getattr(args, flag)}")
    resolved = family.resolve(args.preset, [*sets, *args.set])
    out = _dry_run_or_out(args, family, resolved)
    if out is None:
        return 0
    try:
        with open_run_folder(
            out,
            to_dict(resolved.config),
            resume=args.resume,
            steps_key=family.steps_key,
            defaults=field_defaults(resolved.config),
        ):
            metrics = family.run(resolved, out, args.resume)
    finally:
        _close_process_group()
    if metrics:
        print(json.dumps(metrics, indent=2))
        epilogue = family.epilogue(out)
        if epilogue:
            print(epilogue)
    return 0


def _close_process_group() -> None:
    """Destroy a torchrun process group the run left open (a local call; every collective is
    over by now): a gloo group still alive at interpreter exit can abort the process ("terminate
    called without an active exception"), failing a run that finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_presets(args: argparse.Namespace) -> int:
    """List every preset of every family (or of ``--family``) with its one-line description."""
    from ..runs import FAMILIES

    for name, family in FAMILIES.items():
        if args.family not in (None, name):
            continue
        print(f"# {name}: {family.help}")
        width = max(len(p) for p in family.presets)
        for preset in family.presets:
            print(f"{preset:<{width}}  {family.describe(preset)}")
        print()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark suite; writes results.json and results.md (and every run's folder)."""
    from ..bench import run_suite

    run_suite(
        args.suite,
        Path(args.out),
        quick=args.quick,
        extra=list(args.set),
        seeds=args.seeds or ((0,) if args.quick else (0, 1, 2)),
        presets=args.presets,
    )
    return 0


def _add_run_parser(sub, command: str) -> None:
    """A run command (distill, optimize, kd): the same flags with the same meaning."""
    from ..runs import COMMANDS, FAMILIES

    families = [FAMILIES[name] for name in COMMANDS[command]]
    p = sub.add_parser(command, help=families[0].help)
    names = ", ".join(f"`scoredistill presets --family {f.name}`" for f in families)
    p.add_argument("--preset", default=None, help=f"a name from {names}")
    p.add_argument("--steps", type=positive_int, default=None, help=families[0].steps_help)
    p.add_argument("--seed", type=int, default=None, help="the run's seed")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke budget: seconds; checks that the run works, not the numbers",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--out", default=None, help="run folder (not needed with --dry-run)")
    if command == "distill":
        p.add_argument("--testbed", default=None, help="swap the preset's teacher (same dimension)")
        p.add_argument("--scheduler", default=None, help="a scheduler folder for --teacher")
    if command in ("distill", "optimize"):
        kinds = "presets *-unet, *-sd" if command == "distill" else "presets *-sd"
        p.add_argument("--teacher", default=None, help=f"a local diffusers folder ({kinds})")
        p.add_argument("--prompts", default=None, help="a prompt list, one per line (presets *-sd)")
    p.set_defaults(func=cmd_run, testbed=None, teacher=None, scheduler=None, prompts=None)


def _family_names() -> list[str]:
    from ..runs import FAMILIES

    return list(FAMILIES)


def add_run_commands(sub) -> None:
    """The parsers of ``bench``, ``distill``, ``optimize``, ``kd`` and ``presets``."""
    p = sub.add_parser("bench", help="benchmark suites (onestep: every method, 3 seeds)")
    p.add_argument("--suite", default="onestep", choices=sorted(SUITES))
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke budget: seconds per run; checks that the suite runs, not the numbers",
    )
    p.add_argument(
        "--presets",
        type=name_list(sorted({n for v in SUITES.values() for n in v.accepted})),
        default=None,
    )
    p.add_argument(
        "--seeds", type=seed_list, default=None, help="comma list (default 0,1,2; --quick: 0)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override in every run"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bench)

    for command in ("distill", "optimize", "kd"):
        _add_run_parser(sub, command)
    p = sub.add_parser("presets", help="list every preset with its one-line description")
    p.add_argument("--family", default=None, choices=sorted(_family_names()))
    p.set_defaults(func=cmd_presets)
