"""Fixtures shared by several test files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def bench():
    """``bench(name)``: a ``benchmarks/`` script imported as a module (the folder is not a
    package, and its scripts import each other by name)."""

    def load(name: str):
        sys.path.insert(0, str(BENCH))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(BENCH))

    return load


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> str:
    """A tiny random class-conditional ``UNet2DModel`` (8×8, one channel, 10 classes, 0.16M
    parameters) saved by diffusers itself (``DDPMPipeline.save_pretrained``)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from scoredistill.train.unet_teacher import make_unet

    torch.manual_seed(0)
    unet = make_unet(8, 1, 10, channels=(16, 32), attention=False)
    folder = tmp_path_factory.mktemp("teacher") / "pipeline"
    DDPMPipeline(
        unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A tiny text-to-image teacher (``StableDiffusionPipeline`` layout: VAE, UNet2DCondition,
    CLIP text encoder + tokenizer, DDIM) made by ``train.sd_teacher`` in a few optimizer steps:
    random-ish weights, real classes, saved by diffusers itself."""
    from scoredistill.data import load_digits_images
    from scoredistill.train.sd_teacher import SDTeacherConfig, train_sd_teacher

    data = load_digits_images("train")
    out = tmp_path_factory.mktemp("sd-teacher")
    cfg = SDTeacherConfig(steps=3, vae_steps=3, batch_size=8, seed=0)
    train_sd_teacher(data.x[:64], data.labels[:64], out, config=cfg, progress=False)
    return out / "pipeline"


@pytest.fixture
def prompts(tmp_path) -> str:
    """A prompt file for ``sd_folder``: two prompts, a blank line and padding (both stripped)."""
    path = tmp_path / "prompts.txt"
    path.write_text("a handwritten 3\n\n  a bold handwritten 7  \n")
    return str(path)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of small tensors: on a shared 2-core machine a second thread
    only competes (grid25's denoiser took 2 s instead of 0.04 s, with the same numbers). A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
