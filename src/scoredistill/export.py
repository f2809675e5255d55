"""Export a student of a diffusers teacher as a stock diffusers pipeline folder.

``export_pipeline`` writes ``OUT/pipeline/``: ``ConsistencyModelPipeline(unet, LCMScheduler)``,
both stock classes, reloadable with ``DiffusionPipeline.from_pretrained(dir)`` and no code from
the folder. Why these two reproduce ``sources.diffusers.DiffusersGenerator`` exactly (diffusers
0.42 ``pipeline_consistency_models.py``, ``scheduling_lcm.py``):

- the pipeline draws ``x = randn((n, C, H, W), generator) * init_noise_sigma`` (LCM: 1), the
  student's prior ``z`` drawn the same way from the same generator;
- at each timestep ``k_j`` it calls ``unet(scale_model_input(x) = x, k_j, class_labels)`` and
  ``LCMScheduler.step``, which converts the output to ``x0`` with the teacher's prediction type on
  the teacher's table, blends ``c_out·x0 + c_skip·x`` (``timestep_scaling = 1e4`` makes
  ``c_skip <= 0.25/(1e4 k)² < 3e-9`` for ``k >= 1``: the student's plain ``x0``) and, before the
  last step, re-noises ``sqrt(abar_{k_{j+1}}) x0 + sqrt(1 - abar) eps`` with fresh
  ``eps = randn(generator)``: the student's backward-simulation rollout;
- ``set_timesteps(K)`` with ``original_inference_steps = K`` on ``num_train_timesteps = N'`` gives
  ``k_j = N' - 1 - (j-1) N'/K``, the student's grid (``lcm_timesteps``); the table is the
  teacher's betas cut to ``N'`` (``trained_betas``), so an intermediate top (SiD's
  ``sigma_init``) is exported too.

DDPM/DDIM pipelines were not usable: they pass no class labels, and DDIM re-noises with the
predicted noise (``eta = 0``), not fresh noise. ``ConsistencyModelPipeline``'s docstring names
``CMStochasticIterativeScheduler``, but its loop only uses the generic scheduler API; it is the
stock pipeline that passes ``class_labels`` to a ``UNet2DModel``, so class-conditional students
export too. DiT students and EDM/flow teachers are not exportable (``ValueError``).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .parametrization import NULL_LABEL
from .sources.diffusers import DiffusersGenerator
from .teachers.diffusers import DiffusersTeacher

if TYPE_CHECKING:
    from diffusers import LCMScheduler

__all__ = ["export_pipeline", "sample_exported", "student_scheduler"]

TIMESTEP_SCALING = 1e4  # LCM's boundary blend c_skip = 0.25 / ((1e4 k)² + 0.25): < 3e-9 for k >= 1


def _betas(teacher: DiffusersTeacher) -> list[float]:
    """The teacher's beta table, exactly (its own ``betas`` when they give its ``alphas_cumprod``
    bit for bit; else ``1 - abar_k / abar_{k-1}``, e.g. Euler's zero-SNR clamp)."""
    sched = teacher.scheduler
    betas = getattr(sched, "betas", None)
    if betas is not None and torch.equal(torch.cumprod(1 - betas, 0), sched.alphas_cumprod):
        return betas.tolist()
    abar = sched.alphas_cumprod.double()
    return (1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])).tolist()


def student_scheduler(generator: DiffusersGenerator, teacher: DiffusersTeacher) -> LCMScheduler:
    """The stock ``LCMScheduler`` whose ``set_timesteps(K)`` grid and table are the student's."""
    from diffusers import LCMScheduler

    if generator.timesteps is None or teacher.family != "vp":
        raise ValueError(
            f"export needs a VP-table teacher (DDPM, DDIM, ... schedulers), not {teacher.family!r}"
        )
    steps, n_cut = generator.nfe, generator.timesteps[0] + 1
    lcm = LCMScheduler(
        num_train_timesteps=n_cut,
        trained_betas=_betas(teacher)[:n_cut],
        original_inference_steps=steps,
        prediction_type=teacher.prediction_type,
        clip_sample=teacher.clip_sample is not None,  # the student clips x0 as its teacher does
        clip_sample_range=teacher.clip_sample or 1.0,
        timestep_scaling=TIMESTEP_SCALING,
    )
    lcm.set_timesteps(steps)
    abar = generator.denoiser.native_schedule.alphas_cumprod[:n_cut]
    same_table = torch.allclose(
        lcm.alphas_cumprod.double(), torch.tensor(abar, dtype=torch.float64)
    )
    if tuple(lcm.timesteps.tolist()) != generator.timesteps or not same_table:
        raise ValueError("the generator was not built from this teacher: grids or tables differ")
    return lcm


def _readme(generator: DiffusersGenerator, teacher: DiffusersTeacher, note: str) -> str:
    k, labels = generator.nfe, ""
    if generator.num_classes:
        labels = ", class_labels=[0] * 16"
        classes = (
            f"- Class-conditional: `class_labels` are ints in 0..{generator.num_classes - 1}"
            f"; {teacher.null_index} is the null (unconditional) label. Always pass them: "
            "without them the pipeline draws random labels from torch's global RNG, null included.\n"
        )
    else:
        classes = "- Unconditional.\n"
    return (
        f"# {k}-step student distilled with scoredistill\n\n"
        f"Trained for **K = {k}** step(s) at the teacher's timesteps {list(generator.timesteps)} "
        f"({type(teacher.scheduler).__name__} table, prediction_type "
        f"`{teacher.prediction_type}`).\n\n"
        "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/pipeline", local_files_only=True)\n'
        "g = torch.Generator().manual_seed(0)\n"
        f'images = pipe(batch_size=16, num_inference_steps={k}, generator=g, output_type="np"'
        f"{labels}).images\n```\n\n"
        "- Stock classes only: `ConsistencyModelPipeline` + `LCMScheduler` (its loop is the "
        "student's: fresh noise between steps; `timestep_scaling` is large so the scheduler "
        "returns the network's x0).\n"
        f"- `num_inference_steps` must be {k}: other values are not what the student learned.\n"
        "- Images are the samples x in [-1, 1] mapped to (x + 1) / 2, clipped to [0, 1], "
        "shape (n, H, W, C).\n" + classes + (f"\n{note}\n" if note else "")
    )


def export_pipeline(
    generator: DiffusersGenerator,
    teacher: DiffusersTeacher,
    out_dir: str | Path,
    *,
    steps: int,
    note: str = "",
) -> Path:
    """Write ``out_dir/pipeline/`` (model_index.json, unet/, scheduler/, README.md) and return
    its path. ``steps`` must equal the student's K. An existing ``pipeline/`` is replaced only
    once the new folder is complete."""
    from diffusers import ConsistencyModelPipeline, UNet2DModel

    if steps != generator.nfe:
        raise ValueError(f"steps={steps}, but the generator was trained for {generator.nfe}")
    model = generator.denoiser.model
    if not isinstance(model, UNet2DModel):
        raise ValueError(
            f"export needs a UNet2DModel student ({type(model).__name__} given): the stock "
            "pixel-space pipelines all take a `unet`"
        )
    unet = copy.deepcopy(model).float().eval().requires_grad_(False)
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=student_scheduler(generator, teacher))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "pipeline"
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".pipeline."))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(_readme(generator, teacher, note), encoding="utf-8")
        if final.exists():
            old = out_dir / f".pipeline.old.{tmp.name}"
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@torch.no_grad()
def sample_exported(
    path: str | Path,
    n: int,
    *,
    labels: Tensor | None = None,
    rng: torch.Generator | None = None,
    steps: int | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Samples ``(n, C, H, W)`` of an exported folder, in the data range (not clipped), from
    plain ``UNet2DModel`` + ``LCMScheduler`` and the pipeline's loop. ``labels: (n,)`` library
    labels (``NULL_LABEL`` -> the null row); ``steps`` defaults to the trained K."""
    from diffusers import LCMScheduler, UNet2DModel

    path = Path(path)
    unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True).to(device).eval()
    sched = LCMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    sched.set_timesteps(steps or sched.config.original_inference_steps)
    cfg = unet.config
    if labels is not None and cfg.num_class_embeds is not None:
        labels = labels.to(device).long()
        labels = torch.where(labels == NULL_LABEL, cfg.num_class_embeds - 1, labels)
    elif cfg.num_class_embeds is not None:
        raise ValueError(f"{path} holds a class-conditional student: pass labels (n,)")
    size = (cfg.sample_size,) * 2 if isinstance(cfg.sample_size, int) else cfg.sample_size
    x = torch.randn((n, cfg.in_channels, *size), generator=rng).to(device)
    for k in sched.timesteps:
        out = unet(sched.scale_model_input(x, k), k, class_labels=labels).sample
        x = sched.step(out, k, x, generator=rng).prev_sample
    return x
