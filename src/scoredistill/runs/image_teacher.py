"""Teacher jobs on a diffusers folder (``--teacher DIR``): train one, sample it, tabulate its
samplers. The CLI's ``train-teacher --arch unet``, ``sample --teacher`` and ``baseline
--teacher`` call these; each writes one folder with the distill output contract
(``samples.npz`` with ``x: (N, C·H·W)`` in the data range, ``metrics.json``, PNGs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..io import atomic_write_json, json_safe

__all__ = ["baseline_teacher", "sample_teacher", "train_teacher"]


def _teacher(path: str, scheduler: str | None, num_classes: int | None):
    from ..teachers.diffusers import load_diffusers_teacher
    from ..teachers.diffusers_check import check_forward

    teacher = load_diffusers_teacher(path, scheduler=scheduler, num_classes=num_classes)
    check_forward(teacher, path, torch.zeros(1, dtype=torch.long) if teacher.num_classes else None)
    return teacher


def _labels(teacher: Any, n: int, rng: torch.Generator, klass: int | None) -> torch.Tensor | None:
    from ..eval.image_baseline import draw_labels

    if klass is None:
        return draw_labels(teacher, n, rng)
    if not 0 <= klass < teacher.num_classes:
        valid = f"0..{teacher.num_classes - 1}" if teacher.num_classes else "none (unconditional)"
        raise ConfigError(f"--class {klass}: this teacher's classes are {valid}")
    return torch.full((n,), klass, dtype=torch.long)


def sample_teacher(
    path: str,
    out: Path,
    *,
    sampler: str,
    nfe: int,
    n: int,
    seed: int,
    cfg: float = 1.0,
    spacing: str | None = None,
    klass: int | None = None,
    scheduler: str | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """``n`` samples of the teacher in ``out`` (``samples.npz``, ``metrics.json``,
    ``samples.png``); ``cfg`` is the guidance scale w (1: none) of a class-conditional teacher."""
    from ..eval.plots import save_image_grid
    from ..parametrization import guided
    from ..runs.unet import score
    from ..samplers import sample

    teacher = _teacher(path, scheduler, num_classes)
    if cfg != 1.0 and not teacher.num_classes:
        raise ConfigError("--cfg needs a class-conditional teacher; this one has no classes")
    rng = torch.Generator().manual_seed(seed)
    labels = _labels(teacher, n, rng, klass)
    denoise = guided(teacher.denoise, cfg) if cfg != 1.0 else None
    start = time.perf_counter()
    with torch.no_grad():
        x, used = sample(
            teacher, sampler, nfe, n, rng=rng, cond=labels, spacing=spacing, denoise=denoise
        )
    metrics = {
        **score(teacher, x, labels, seed),
        "nfe": used,
        "wall_s": time.perf_counter() - start,
    }
    arrays = {"x": x.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)
    atomic_write_json(out / "metrics.json", json_safe(metrics))
    title = f"{sampler}, NFE={used}"
    save_image_grid({title: x.reshape(n, *teacher.shape)}, out / "samples.png", {title: labels})
    return metrics


def baseline_teacher(
    path: str,
    out: Path,
    *,
    samplers: Sequence[str],
    nfes: Sequence[int],
    n: int,
    seed: int,
    scheduler: str | None = None,
    num_classes: int | None = None,
) -> str:
    """The sampler × grid × NFE table through the adapter, diffusers' own DDIM beside it, the
    best row per NFE budget and (digits) the real-data floor: ``baseline.json``, ``baseline.md``."""
    from ..eval.image_baseline import best_rows, diffusers_ddim_rows, image_rows
    from ..eval.report import format_value
    from ..runs.unet import digits_like, score

    teacher = _teacher(path, scheduler, num_classes)
    rows = image_rows(teacher, samplers, nfes, n, seed, score)
    if teacher.family == "vp":
        rows += diffusers_ddim_rows(teacher, nfes, n, seed, score)
    floor: dict[str, Any] = {}
    if digits_like(teacher):
        from ..eval.features import real_floor

        floor = real_floor(n, seed=seed)
    keys = [k for k in ("fd", "class_acc", "precision", "recall") if k in rows[0]]
    lines = ["| sampler | grid | NFE | " + " | ".join(keys) + " | wall s |"]
    lines.append("|---|---|---:|" + "---:|" * (len(keys) + 1))
    for r in rows:
        cells = " | ".join(format_value(r[k]) for k in keys)
        lines.append(
            f"| {r['sampler']} | {r['spacing']} | {r['nfe']} | {cells} | {r['wall_s']:.2f} |"
        )
    if floor:
        lines.append(
            "| real data (floor) | – | – | "
            + " | ".join(format_value(floor[k]) for k in keys)
            + " | – |"
        )
    best = best_rows(rows, nfes)
    if best:
        lines += ["", "Best per NFE budget: " + "; ".join(
            f"{b}: {r['sampler']} ({r['spacing']}) {format_value(r['fd'])}" for b, r in best.items()
        )]  # fmt: skip
    result = {
        "teacher": str(path),
        "n": n,
        "seed": seed,
        "rows": rows,
        "floor": floor,
        "best": best,
    }
    atomic_write_json(out / "baseline.json", json_safe(result))
    table = "\n".join(lines) + "\n"
    (out / "baseline.md").write_text(table)
    return table


def train_teacher(
    data: str, out: Path, *, steps: int, seed: int, resume: bool, progress: bool
) -> dict[str, Any]:
    """Train a class-conditional diffusers ``UNet2DModel`` on ``data`` (``digits`` or a folder of
    PNG/JPEG images, class subfolders optional) and save ``out/pipeline`` (a stock
    ``DDPMPipeline`` folder); ``train.unet_teacher`` holds the recipe."""
    from ..data import load_digits_images, load_image_folder
    from ..train.unet_teacher import train_unet_teacher

    images = load_digits_images("train") if data == "digits" else load_image_folder(data)
    return train_unet_teacher(
        images.x, images.labels, out, steps=steps, seed=seed, resume=resume, progress=progress
    )
