"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch


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
