"""The real-model (diffusers) cases of ``bad_inputs.py``: damaged copies of the bundled teacher
folder, hub ids, mismatched data. ``DIFFUSERS`` lists ``(name, argv(tmp) -> list[str])``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "digits-unet" / "pipeline"


def _copy(tmp: Path, damage: Callable[[Path], None] | None = None) -> Path:
    """A copy of the bundled teacher folder with ``damage`` applied."""
    folder = tmp / "teacher"
    if not folder.exists():
        shutil.copytree(BUNDLED, folder)
        if damage is not None:
            damage(folder)
    return folder


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _sample(teacher: Callable[[Path], str | Path], *extra: str) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        return ["sample", "--teacher", str(teacher(tmp)), "--sampler", "ddim", "--nfe", "2",
                "--n", "8", *extra, "--out", str(tmp / "o")]  # fmt: skip

    return argv


def _distill(*sets: str, teacher: Callable[[Path], Path] | None = None):
    def argv(tmp: Path) -> list[str]:
        where = ["--teacher", str(teacher(tmp))] if teacher else []
        pairs = [a for s in sets for a in ("--set", s)]
        return ["distill", "--preset", "dmd2-unet", *where, *pairs, "--dry-run",
                "--out", str(tmp / "o")]  # fmt: skip

    return argv


def _damaged(damage: Callable[[Path], None]) -> Callable[[Path], Path]:
    return lambda tmp: _copy(tmp, damage)


def _images(tmp: Path, size: int) -> str:
    """A folder of 4 PNG images of ``size``² pixels (the teacher's are 8²)."""
    from PIL import Image

    folder = tmp / f"images{size}"
    folder.mkdir(exist_ok=True)
    for i in range(4):
        pixels = (np.random.default_rng(i).random((size, size)) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return str(folder)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
DIFFUSERS: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("a hub id", _sample(lambda t: "google/ddpm-cifar10-32")),
    ("an empty folder", _sample(lambda t: (t / "empty").mkdir() or t / "empty")),
    ("a file as --teacher", _sample(lambda t: (t / "f").write_text("x") and t / "f")),
    ("no scheduler/ folder", _sample(_damaged(lambda f: shutil.rmtree(f / "scheduler")))),
    ("unsupported prediction_type",
     _sample(_damaged(lambda f: _edit(f / "scheduler/scheduler_config.json",
                                      prediction_type="flow")))),
    ("unknown scheduler class",
     _sample(_damaged(lambda f: _edit(f / "scheduler/scheduler_config.json",
                                      _class_name="MyScheduler")))),
    ("zero terminal SNR with epsilon",
     _sample(_damaged(lambda f: _edit(f / "scheduler/scheduler_config.json",
                                      rescale_betas_zero_snr=True)))),
    ("truncated safetensors", _sample(_damaged(lambda f: _truncate(f / WEIGHTS)))),
    ("safetensors missing", _sample(_damaged(lambda f: (f / WEIGHTS).unlink()))),
    ("model config not JSON",
     _sample(_damaged(lambda f: (f / "unet/config.json").write_text("{not json")))),
    ("model_index.json not JSON",
     _sample(_damaged(lambda f: (f / "model_index.json").write_text("[")))),
    ("a bare model folder without --scheduler", _sample(lambda t: _copy(t) / "unet")),
    ("--scheduler not a scheduler folder",
     lambda t: [*_sample(lambda t2: _copy(t2) / "unet")(t), "--scheduler", str(_copy(t) / "unet")]),
    ("--class 10 on a 10-class teacher", _sample(_copy, "--class", "10")),
    ("data of another image size", lambda t: _distill(f"data={_images(t, 16)}")(t)),
    ("data folder missing", _distill("data=/nonexistent/images")),
    ("student.steps=0", _distill("student.steps=0")),
    ("precision=fp16", _distill("precision=fp16")),
]  # fmt: skip
