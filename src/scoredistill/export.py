"""Export a student of a diffusers teacher as stock diffusers folders.

``export_pipeline`` writes ``OUT/pipeline/``, a stock pipeline that
``DiffusionPipeline.from_pretrained(dir)`` reloads with no code from the folder, reproducing
``sources.diffusers.DiffusersGenerator`` for the same ``torch.Generator`` (diffusers 0.42):

- VP-table teacher (DDPM, DDIM, ...), ``UNet2DModel``, any K:
  ``ConsistencyModelPipeline`` + ``LCMScheduler`` (below);
- flow teacher, unconditional ``UNet2DModel``, any K: ``DDPMPipeline`` +
  ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``. ``DDPMPipeline`` draws
  ``randn(shape, generator)`` (no ``init_noise_sigma``), calls ``unet(x, t)`` (no
  ``scale_model_input``) and ``scheduler.step(out, t, x, generator=generator)``
  (``pipeline_ddpm.py``, ``__call__``); the scheduler's step is the student's (``export_families``);
- EDM teacher, ``UNet2DModel``, K = 1: ``ConsistencyModelPipeline`` + ``EDMEulerScheduler``
  (``randn·init_noise_sigma``, ``unet(c_in·x, c_noise)``, one Euler step to sigma 0).

``export_student`` writes ``OUT/student/`` where no stock pipeline fits: a DiT (``DiTPipeline``
needs a VAE) or a class-conditional flow UNet (``DDPMPipeline`` passes no ``class_labels``;
``ConsistencyModelPipeline``, which does, reads ``init_noise_sigma`` and calls
``scale_model_input``, neither of which ``FlowMatchEulerDiscreteScheduler`` has). It holds the
network (``unet/`` or ``transformer/``), the same stock scheduler and a README with the sampling
loop in diffusers classes only. ``export_run`` writes whichever fits. EDM students with K > 1 are
not exportable (``export_families``: Euler re-noises with no fresh noise).

Why the VP row reproduces the student (``pipeline_consistency_models.py``, ``scheduling_lcm.py``):

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

``export_consistency.export_consistency_pipeline`` writes the same stock pair for a consistency
student on ``cut_lcm_scheduler``, the one ``LCMScheduler`` construction both use.

DDPM/DDIM pipelines were not usable: they pass no class labels, and DDIM re-noises with the
predicted noise (``eta = 0``), not fresh noise. ``ConsistencyModelPipeline``'s docstring names
``CMStochasticIterativeScheduler``, but its loop only uses the generic scheduler API; it is the
stock pipeline that passes ``class_labels`` to a ``UNet2DModel``, so class-conditional students
export too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .export_families import check_grid
from .io import atomic_folder
from .parametrization import NULL_LABEL
from .sources.diffusers import DiffusersGenerator
from .teachers.diffusers import DiffusersTeacher

__all__ = [
    "cut_lcm_scheduler",
    "export_pipeline",
    "export_plan",
    "export_run",
    "export_student",
    "frozen",
    "labels_text",
    "network_timesteps",
    "sample_exported",
    "scheduler_line",
    "stock_pipeline",
    "student_scheduler",
]

TIMESTEP_SCALING = 1e4  # LCM's boundary blend c_skip = 0.25 / ((1e4 k)² + 0.25): < 3e-9 for k >= 1
WHY = {  # README: why the scheduler's loop is the student's
    "LCMScheduler": "fresh noise between steps; `timestep_scaling` is large so the scheduler "
    "returns the network's x0",
    "FlowMatchEulerDiscreteScheduler": "`stochastic_sampling=True`: x0 = x - sigma v, then "
    "(1 - sigma') x0 + sigma' fresh noise",
    "EDMEulerScheduler": "one Euler step from sigma_max to 0 returns the preconditioned x0",
}


def _betas(teacher: DiffusersTeacher) -> list[float]:
    """The teacher's beta table, exactly (its own ``betas`` when they give its ``alphas_cumprod``
    bit for bit; else ``1 - abar_k / abar_{k-1}``, e.g. Euler's zero-SNR clamp)."""
    sched = teacher.scheduler
    betas = getattr(sched, "betas", None)
    if betas is not None and torch.equal(torch.cumprod(1 - betas, 0), sched.alphas_cumprod):
        return betas.tolist()
    abar = sched.alphas_cumprod.double()
    return (1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])).tolist()


def _threshold_config(teacher: DiffusersTeacher) -> dict[str, Any]:
    """The stock schedulers' dynamic-thresholding keys for the teacher's ``threshold``."""
    if teacher.threshold is None:
        return {"thresholding": False}
    ratio, max_value = teacher.threshold
    return {
        "thresholding": True,
        "dynamic_thresholding_ratio": ratio,
        "sample_max_value": max_value,
    }


def cut_lcm_scheduler(
    teacher: DiffusersTeacher, n_cut: int, original_steps: int, timestep_scaling: float
) -> Any:
    """A stock ``LCMScheduler`` on the teacher's table cut after ``n_cut`` entries (its top
    timestep ``n_cut - 1``), converting as the teacher does; ``ValueError`` when its table is not
    the teacher's."""
    from diffusers import LCMScheduler

    lcm = LCMScheduler(
        num_train_timesteps=n_cut,
        trained_betas=_betas(teacher)[:n_cut],
        original_inference_steps=original_steps,
        prediction_type=teacher.prediction_type,
        clip_sample=teacher.clip_sample is not None,  # the student clips x0 as its teacher does
        clip_sample_range=teacher.clip_sample or 1.0,
        # and thresholds it as its teacher does
        **_threshold_config(teacher),
        timestep_scaling=timestep_scaling,
    )
    abar = torch.tensor(teacher.native_schedule.alphas_cumprod[:n_cut], dtype=torch.float64)
    if not torch.allclose(lcm.alphas_cumprod.double(), abar):
        raise ValueError("the scheduler's table differs from the teacher's: not its student")
    return lcm


def _lcm_scheduler(generator: DiffusersGenerator, teacher: DiffusersTeacher) -> Any:
    """The stock ``LCMScheduler`` whose ``set_timesteps(K)`` grid and table are the student's."""
    steps, n_cut = generator.nfe, generator.timesteps[0] + 1
    lcm = cut_lcm_scheduler(teacher, n_cut, steps, TIMESTEP_SCALING)
    lcm.set_timesteps(steps)
    if tuple(lcm.timesteps.tolist()) != generator.timesteps:
        raise ValueError("the generator was not built from this teacher: grids or tables differ")
    return lcm


def student_scheduler(generator: DiffusersGenerator, teacher: DiffusersTeacher) -> Any:
    """The stock scheduler, after ``set_timesteps(K)``, whose loop is the student's rollout:
    ``LCMScheduler`` (VP table), ``FlowMatchEulerDiscreteScheduler`` (flow), ``EDMEulerScheduler``
    (EDM, K = 1). ``ValueError`` when none is (EDM with K > 1) or the grids differ."""
    if teacher.family != "vp":
        return check_grid(teacher, generator.ts, generator.init_scale)
    if generator.timesteps is None:
        raise ValueError("the generator was not built from this VP teacher: it has no timesteps")
    return _lcm_scheduler(generator, teacher)


def stock_pipeline(model: nn.Module, teacher: DiffusersTeacher) -> tuple[str, str]:
    """``(pipeline class name, "")`` of the stock pipeline that runs this student, or
    ``("", why not)`` (module docstring)."""
    from diffusers import UNet2DModel

    if not isinstance(model, UNet2DModel):
        name = type(model).__name__
        return "", f"the stock pixel-space pipelines all take a UNet2DModel `unet`, not a {name}"
    if teacher.family == "flow" and model.config.num_class_embeds is not None:
        return "", (
            "no stock pipeline passes class_labels with FlowMatchEulerDiscreteScheduler "
            "(DDPMPipeline passes none; ConsistencyModelPipeline needs init_noise_sigma and "
            "scale_model_input, which it lacks)"
        )
    return ("DDPMPipeline" if teacher.family == "flow" else "ConsistencyModelPipeline"), ""


def labels_text(generator: DiffusersGenerator, teacher: DiffusersTeacher, pipe: bool) -> str:
    if not generator.num_classes:
        return "- Unconditional.\n"
    always = (
        " Always pass them: without them the pipeline draws random labels from torch's global "
        "RNG, null included."
    )
    return (
        f"- Class-conditional: `class_labels` are ints in 0..{generator.num_classes - 1}"
        f"; {teacher.null_index} is the null (unconditional) label.{always if pipe else ''}\n"
    )


def network_timesteps(sched: Any) -> list[float]:
    """A stock scheduler's timesteps after ``set_timesteps(K)``, as the READMEs print them."""
    return [round(float(t), 4) for t in sched.timesteps]


def scheduler_line(sched: Any) -> str:
    """The README line saying why ``sched``'s loop is the student's rollout."""
    name = type(sched).__name__
    return f"- Stock scheduler `{name}`: its loop is the student's ({WHY[name]}).\n"


def _readme(
    generator: DiffusersGenerator, teacher: DiffusersTeacher, sched: Any, how: str, note: str
) -> str:
    """README.md: what was trained, then ``how`` (a fenced code block) and the caveats; a
    stock pipeline's ``how`` loads with ``DiffusionPipeline``."""
    k = generator.nfe
    return (
        f"# {k}-step student distilled with scoredistill\n\n"
        f"Trained for **K = {k}** step(s) at the network timesteps {network_timesteps(sched)} "
        f"({type(teacher.scheduler).__name__} teacher, prediction_type "
        f"`{teacher.prediction_type}`).\n\n{how}\n\n"
        + scheduler_line(sched)
        + f"- {k} step(s) only: other step counts are not what the student learned.\n"
        "- Images are the samples x in [-1, 1] mapped to (x + 1) / 2, clipped to [0, 1].\n"
        + labels_text(generator, teacher, pipe="DiffusionPipeline" in how)
        + (f"\n{note}\n" if note else "")
    )


def _pipeline_how(generator: DiffusersGenerator, pipe: str) -> str:
    labels = ", class_labels=[0] * 16" if generator.num_classes else ""
    return (
        "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/pipeline", local_files_only=True)\n'
        "g = torch.Generator().manual_seed(0)\n"
        f"images = pipe(batch_size=16, num_inference_steps={generator.nfe}, generator=g, "
        f'output_type="np"{labels}).images  # (16, H, W, C)\n```\n\n'
        f"Stock pipeline `{pipe}`."
    )


def _student_how(generator: DiffusersGenerator, sched: Any, model: nn.Module, part: str) -> str:
    """The sampling loop (diffusers classes only) that ``export_student``'s folder needs."""
    c, h, w = generator.shape
    mname, sname = type(model).__name__, type(sched).__name__
    prior = " * sched.init_noise_sigma" if hasattr(sched, "init_noise_sigma") else ""
    x_in = "sched.scale_model_input(x, t)" if hasattr(sched, "scale_model_input") else "x"
    out_ch = model.config.get("out_channels") or model.config["in_channels"]
    mean = f"[:, :{c}]  # learned sigma: keep the mean" if out_ch == 2 * c else ""
    labels = "torch.tensor([0] * 16)" if generator.num_classes else "None"
    return (
        f"```python\nimport torch\nfrom diffusers import {mname}, {sname}\n\n"
        f'net = {mname}.from_pretrained("PATH/TO/student/{part}", local_files_only=True).eval()\n'
        f'sched = {sname}.from_pretrained("PATH/TO/student/scheduler", local_files_only=True)\n'
        f"sched.set_timesteps({generator.nfe})\n"
        f"g, labels = torch.Generator().manual_seed(0), {labels}\n"
        f"x = torch.randn((16, {c}, {h}, {w}), generator=g){prior}\n"
        "with torch.no_grad():\n"
        "    for t in sched.timesteps:\n"
        f"        out = net({x_in}, t.expand(16), class_labels=labels).sample{mean}\n"
        "        x = sched.step(out, t, x, generator=g).prev_sample\n"
        "images = (x / 2 + 0.5).clamp(0, 1)  # (16, C, H, W)\n```\n\n"
        "No stock pipeline runs this network in pixel space, so the folder holds its parts."
    )


def frozen(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).float().eval().requires_grad_(False)


def _checked(generator: DiffusersGenerator, teacher: DiffusersTeacher, steps: int) -> Any:
    if steps != generator.nfe:
        raise ValueError(f"steps={steps}, but the generator was trained for {generator.nfe}")
    return student_scheduler(generator, teacher)


def export_pipeline(
    generator: DiffusersGenerator,
    teacher: DiffusersTeacher,
    out_dir: str | Path,
    *,
    steps: int,
    note: str = "",
) -> Path:
    """Write ``out_dir/pipeline/`` (model_index.json, unet/, scheduler/, README.md), a stock
    pipeline, and return its path. ``steps`` must equal the student's K. ``ValueError`` when no
    stock scheduler or no stock pipeline reproduces the student (``export_student`` covers the
    latter)."""
    import diffusers

    sched = _checked(generator, teacher, steps)
    model = generator.denoiser.model
    pipe_name, why = stock_pipeline(model, teacher)
    if not pipe_name:
        raise ValueError(f"no stock pipeline: {why}; export_student writes OUT/student/ instead")
    pipe = getattr(diffusers, pipe_name)(unet=frozen(model), scheduler=sched)
    readme = _readme(generator, teacher, sched, _pipeline_how(generator, pipe_name), note)
    with atomic_folder(Path(out_dir) / "pipeline") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return Path(out_dir) / "pipeline"


def export_student(
    generator: DiffusersGenerator,
    teacher: DiffusersTeacher,
    out_dir: str | Path,
    *,
    steps: int,
    note: str = "",
) -> Path:
    """Write ``out_dir/student/``: ``unet/`` or ``transformer/`` (``save_pretrained``),
    ``scheduler/`` (the stock scheduler of ``export_pipeline``) and README.md with the sampling
    loop; return its path. For students no stock pipeline runs (a DiT, a class-conditional flow
    UNet); ``ValueError`` when no stock scheduler reproduces the student."""
    from diffusers import UNet2DModel

    sched = _checked(generator, teacher, steps)
    model = frozen(generator.denoiser.model)
    part = "unet" if isinstance(model, UNet2DModel) else "transformer"
    readme = _readme(generator, teacher, sched, _student_how(generator, sched, model, part), note)
    with atomic_folder(Path(out_dir) / "student") as tmp:
        model.save_pretrained(tmp / part, safe_serialization=True)
        sched.save_pretrained(tmp / "scheduler")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    return Path(out_dir) / "student"


def export_plan(generator: DiffusersGenerator, teacher: DiffusersTeacher) -> str:
    """``--dry-run``: the folder ``export_run`` will write for this student, or why none."""
    try:
        sched = type(student_scheduler(generator, teacher)).__name__
    except ValueError as err:
        return f"none: {err}"
    pipe, why = stock_pipeline(generator.denoiser.model, teacher)
    if pipe:
        return f"OUT/pipeline: {pipe} with {sched}"
    return f"OUT/student: the network and {sched}, with the sampling loop in its README ({why})"


def export_run(
    generator: DiffusersGenerator,
    teacher: DiffusersTeacher,
    out_dir: str | Path,
    *,
    steps: int,
    note: str = "",
) -> Path:
    """``export_pipeline`` where a stock pipeline runs the student (returns ``OUT/pipeline``),
    else ``export_student`` (returns ``OUT/student``); ``ValueError`` (nothing written) when no
    stock scheduler reproduces the student, e.g. an EDM student with K > 1."""
    pipe_name, _ = stock_pipeline(generator.denoiser.model, teacher)
    export = export_pipeline if pipe_name else export_student
    return export(generator, teacher, out_dir, steps=steps, note=note)


def _class(folder: Path, config: str) -> Any:
    import diffusers

    return getattr(diffusers, json.loads((folder / config).read_text())["_class_name"])


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
    """Samples ``(n, C, H, W)`` of an exported ``pipeline/`` or ``student/`` folder, in the data
    range (not clipped), from its network and scheduler classes and the pipelines' loop.
    ``labels: (n,)`` library labels (``NULL_LABEL`` -> the null row); ``steps`` defaults to the
    trained K where the scheduler records it (LCM), else 1 (EDM) and must be given for flow."""
    path = Path(path)
    part = path / ("unet" if (path / "unet").is_dir() else "transformer")
    net = _class(part, "config.json").from_pretrained(part, local_files_only=True)
    net = net.to(device).eval()
    sched_dir = path / "scheduler"
    sched = _class(sched_dir, "scheduler_config.json").from_pretrained(
        sched_dir, local_files_only=True
    )
    default = sched.config.get("original_inference_steps")
    if steps is None and "stochastic_sampling" in sched.config:
        raise ValueError(f"{path}: pass steps=K (the README names it)")
    sched.set_timesteps(steps or default or 1)
    cfg = net.config
    rows = cfg.get("num_class_embeds") or cfg.get("num_embeds_ada_norm")
    if labels is not None and rows is not None:
        null = rows - 1 if cfg.get("num_class_embeds") else rows  # DiT: K classes, null row K
        labels = labels.to(device).long()
        labels = torch.where(labels == NULL_LABEL, null, labels)
    elif rows is not None:
        raise ValueError(f"{path} holds a class-conditional student: pass labels (n,)")
    size = (cfg.sample_size,) * 2 if isinstance(cfg.sample_size, int) else cfg.sample_size
    c = cfg.in_channels
    x = torch.randn((n, c, *size), generator=rng).to(device)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        out = net(x_in, t.expand(n).to(device), class_labels=labels).sample[:, :c]
        x = sched.step(out, t, x, generator=rng).prev_sample
    return x
