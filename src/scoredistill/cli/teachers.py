"""Teacher commands: ``testbeds``, ``sample``, ``baseline``, ``train-teacher``; each takes an
exact testbed (``--testbed``) or a diffusers folder (``--teacher DIR``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..eval.baseline import baseline_rows, cell_metrics, exact_rows, sample_cell
from ..io import atomic_write_json
from ..samplers import SAMPLERS, SPACINGS, nfe_to_steps
from ..schedules import SCHEDULES
from .common import UsageError, int_list, name_list, positive_int, prepare_out, unit_float

__all__ = ["add_teacher_commands"]

DEFAULT_NFES = (1, 2, 4, 8, 16, 64)
DEFAULT_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m")


def _load_testbed(name: str, seed: int, schedule: str):
    from ..teachers.testbeds import get_testbed

    return get_testbed(name, seed=seed, schedule=schedule)


def _save_samples(path: Path, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    arrays = {"x": x.reshape(x.shape[0], -1).numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez(path, **arrays)


def cmd_testbeds(args: argparse.Namespace) -> int:
    """Print the named testbeds."""
    from ..teachers.testbeds import list_testbeds

    rows = list_testbeds()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    if args.plot:
        from ..eval.plots import save_testbed_plot

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


def _which_teacher(args: argparse.Namespace) -> bool:
    """True for a diffusers ``--teacher``, False for ``--testbed``; exactly one is required."""
    if (args.teacher is None) == (args.testbed is None):
        raise UsageError(
            "give exactly one of --testbed NAME and --teacher DIR (a diffusers folder)"
        )
    return args.teacher is not None


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a teacher once; write samples.npz, metrics.json, samples.png."""
    from ..eval.plots import save_panels

    nfe_to_steps(args.sampler, args.nfe)
    if _which_teacher(args):
        from ..runs.image_teacher import sample_teacher

        metrics = sample_teacher(
            args.teacher, prepare_out(args), sampler=args.sampler, nfe=args.nfe, n=args.n,
            seed=args.seed, cfg=args.cfg, spacing=args.spacing, klass=args.klass,
            scheduler=args.scheduler, num_classes=args.num_classes,
        )  # fmt: skip
        print(json.dumps(metrics, indent=2))
        return 0
    testbed = _load_testbed(args.testbed, args.testbed_seed, args.schedule)
    out = prepare_out(args)
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
    from ..eval.plots import save_panels
    from ..eval.report import baseline_markdown

    if _which_teacher(args):
        from ..runs.image_teacher import baseline_teacher

        print(
            baseline_teacher(
                args.teacher, prepare_out(args), samplers=args.samplers, nfes=args.nfe,
                n=args.n, seed=args.seed, scheduler=args.scheduler, num_classes=args.num_classes,
            )
        )  # fmt: skip
        return 0
    testbed = _load_testbed(args.testbed, args.testbed_seed, args.schedule)
    out = prepare_out(args)
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
    """``--arch mlp``: the learned 2-D teacher (DSM on an exact testbed); ``--arch unet``: a
    class-conditional diffusers UNet on ``--data`` saved as ``OUT/pipeline``."""
    from ..train.dsm import train_learned_teacher

    if args.arch == "sd":
        return _train_sd_teacher(args)
    if args.arch == "unet":
        from ..runs.image_teacher import train_teacher

        out = prepare_out(args) if not args.resume else Path(args.out)
        info = train_teacher(
            args.data or "digits", out, steps=args.steps or 3000, seed=args.seed, resume=args.resume,
            progress=not args.quiet,
        )  # fmt: skip
        print(json.dumps(info, indent=2))
        return 0
    if args.data is not None:
        raise UsageError("--data is for --arch unet; the mlp teacher trains on --testbed")
    out = prepare_out(args)
    info = train_learned_teacher(
        args.testbed, seed=args.seed, steps=args.steps or 4000, out_dir=out, progress=not args.quiet
    )
    print(json.dumps(info, indent=2))
    return 0


def _train_sd_teacher(args: argparse.Namespace) -> int:
    """``--arch sd``: the tiny latent text-to-image teacher (``train.sd_teacher``)."""
    from ..data import load_digits_images, load_image_folder
    from ..train.sd_teacher import SDTeacherConfig, train_sd_teacher

    if args.resume:
        raise UsageError("--resume is for --arch unet; the sd teacher trains in one go")
    data = args.data or "digits"
    config = SDTeacherConfig(
        steps=args.steps or SDTeacherConfig.steps, seed=args.seed,
        vae_noise_share=args.vae_noise_share,
    )  # fmt: skip
    if data == "views":  # captioned renders of the views object (teachers.views_sd_data)
        from ..teachers.views_sd_data import views_sd_data

        x, captions, _ = views_sd_data()
        info = train_sd_teacher(
            x, None, prepare_out(args), config=config, captions=captions, progress=not args.quiet
        )
        print(json.dumps(info, indent=2))
        return 0
    images = load_digits_images("train") if data == "digits" else load_image_folder(data)
    if images.labels is None:
        raise UsageError(f"--data {data}: the sd teacher's prompts need class subfolders")
    info = train_sd_teacher(
        images.x, images.labels, prepare_out(args), config=config, classes=images.classes,
        progress=not args.quiet,
    )  # fmt: skip
    print(json.dumps(info, indent=2))
    return 0


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--testbed", default=None, help="a name from `scoredistill testbeds`, a .npz, a folder"
    )
    p.add_argument(
        "--teacher", default=None, help="a local diffusers folder (instead of --testbed)"
    )
    p.add_argument(
        "--scheduler", default=None, help="a scheduler folder for a bare --teacher model"
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="a class-conditional --teacher's classes: its num_class_embeds when every label "
        "row is a class (default: the last row is the null label)",
    )
    p.add_argument(
        "--schedule", default="edm", choices=list(SCHEDULES), help="forward process (default edm)"
    )
    p.add_argument("--testbed-seed", type=int, default=0, help="seed of the testbed's construction")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--n", type=positive_int, default=2000, help="number of samples")
    p.add_argument(
        "--cfg", type=float, default=1.0, help="guidance scale w (1 = none, 0 = unconditional)"
    )
    p.add_argument(
        "--spacing", choices=SPACINGS, default=None, help="time grid (default: the schedule's)"
    )
    p.add_argument("--out", required=True, help="run folder")


def add_teacher_commands(sub) -> None:
    """The parsers of ``testbeds``, ``sample``, ``baseline`` and ``train-teacher``."""
    p = sub.add_parser("testbeds", help="list the named testbeds")
    p.add_argument("--plot", metavar="DIR", default=None, help="also plot exact samples of each")
    p.add_argument("--testbed-seed", type=int, default=0, help="seed of the testbeds' construction")
    p.set_defaults(func=cmd_testbeds)

    p = sub.add_parser("sample", help="sample a teacher with one sampler and NFE")
    _add_teacher_args(p)
    p.add_argument("--sampler", required=True, choices=list(SAMPLERS))
    p.add_argument("--nfe", required=True, type=positive_int, help="network evaluations")
    p.add_argument("--class", dest="klass", type=int, default=None, help="fix the class label")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("baseline", help="the teacher's sampler x NFE table")
    _add_teacher_args(p)
    p.add_argument("--samplers", type=name_list(list(SAMPLERS)), default=DEFAULT_SAMPLERS)
    p.add_argument(
        "--nfe", type=int_list, default=DEFAULT_NFES, help="comma list, e.g. 1,2,4,8,16,64"
    )
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser(
        "train-teacher", help="train a teacher: 2-D MLP (DSM) or a diffusers UNet on images"
    )
    p.add_argument(
        "--arch", choices=("mlp", "unet", "sd"), default="mlp",
        help="mlp: 2-D testbeds; unet: pixel UNet; sd: latent text-to-image pipeline",
    )  # fmt: skip
    p.add_argument("--testbed", default="moons", help="--arch mlp: the exact testbed")
    p.add_argument(
        "--data", default=None,
        help="--arch unet/sd: digits or a PNG/JPEG folder; sd also views (captioned renders)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="--arch unet: continue in --out")
    p.add_argument("--steps", type=positive_int, default=None, help="mlp 4000, unet 3000, sd 1700")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--vae-noise-share", type=unit_float, default=0.0,
        help="--arch sd: share of each VAE batch blended with pixel noise and reconstructed as is",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train_teacher)
