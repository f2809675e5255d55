"""A student of a Flux teacher (``teachers.diffusers_flux``): its grid, its stock scheduler, export.

Diffusers 0.42 ``FluxPipeline.__call__`` (``pipeline_flux.py``) draws ``randn((B, C, h, w),
generator)`` latents and packs them, passes ``sigmas = linspace(1, 1/K, K)`` and ``mu =
calculate_shift(h/2 · w/2, ...)`` to ``scheduler.set_timesteps``, calls ``transformer(packed,
timestep=sigma, guidance=guidance_scale, ...)`` and ``scheduler.step(v, t, latents)`` **without**
``generator=``. With ``stochastic_sampling=True`` (``export_families``) ``step`` returns the
network's ``x0`` re-noised to the next sigma with fresh noise, the student's rollout
(``sources.diffusers``); the noise comes from torch's global RNG and is drawn in the packed
token order, so for K >= 2 the pipeline's re-noising is a different draw from the library's for
the same seed (the same distribution; the first noise and K = 1 match exactly).

**Grid.** The student's sigmas are that call's: ``time_shift(mu, 1, linspace(1, 1/K, K))``, i.e.
times ``linspace(1, 1/K, K)`` on the teacher's ``ShiftedFlowSchedule(e^mu)``. A start below the
top (``student.init_timestep``: SD's table index read by log-SNR, ``export_flow.flow_level``) is
``use_exponential_sigmas`` with a config ``sigma_max`` (``export_flow.start_scheduler``): then
``exp(linspace(log sigma_max, log sigma_min, K))`` with ``sigma_min`` the shifted ``1/K``.

**Export.** Full student -> ``OUT/pipeline/``: ``FluxPipeline`` (student transformer, the
teacher's VAE, CLIP, T5, tokenizers, that scheduler). LoRA student -> ``OUT/lora/``:
``pytorch_lora_weights.safetensors`` by ``FluxPipeline.save_lora_weights`` (keys
``transformer.<module>.lora_A/B.weight``; the ``LoraConfig`` as metadata; the modules those of
``train_dreambooth_lora_flux.py``, both streams, and the single blocks' MLP: ``sources.lora``),
``scheduler/`` and a README. Sample at the teacher's size (``height = width =`` the VAE's
``sample_size`` or the training ``resolution``; ``FluxPipeline.default_sample_size`` is a
constant 128, so the README always passes them) with its ``max_sequence_length``,
``guidance_scale`` = the teacher's embedded guidance (the student was trained with it) and
``true_cfg_scale = 1`` (the teacher's CFG is distilled in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .export_families import GRID_RTOL
from .export_flow import flow_level, plain_copy, save_transformer_lora, start_scheduler
from .export_folder import write_student
from .schedules import t_from_log_snr
from .sources.diffusers import DiffusersGenerator
from .teachers.diffusers_flux import FluxTextEncoder

__all__ = [
    "export_flux_student",
    "flux_scheduler",
    "is_flux",
    "student_generator",
    "student_scheduler",
]


def is_flux(teacher: Any) -> bool:
    """Whether ``teacher`` was loaded from a ``FluxPipeline`` folder."""
    return isinstance(getattr(teacher, "text_encoder", None), FluxTextEncoder)


def flux_scheduler(teacher: Any, top: float, steps: int) -> Any:
    """The stock scheduler started at flow level ``top`` (``start_scheduler``) with
    ``stochastic_sampling=True``, after ``FluxPipeline.__call__``'s ``set_timesteps``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = dict(start_scheduler(teacher, top).config)
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg, stochastic_sampling=True)
    if "sigma_max" in cfg:  # from_config drops it; _convert_to_exponential reads it
        sched.register_to_config(sigma_max=cfg["sigma_max"])
    sigmas = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()
    sched.set_timesteps(steps, sigmas=sigmas, mu=teacher.model.mu)
    return sched


def _times(teacher: Any, sched: Any, steps: int) -> list[float]:
    """The scheduler's sigmas as times of ``teacher.schedule`` (equal log-SNR)."""
    s = sched.sigmas[:steps].to(torch.float64)
    return t_from_log_snr(teacher.schedule, 2 * ((1 - s).log() - s.log())).tolist()


def student_generator(
    teacher: Any,
    *,
    steps: int,
    init_timestep: int | None = None,
    denoiser: nn.Module | None = None,
) -> DiffusersGenerator:
    """A ``DiffusersGenerator`` on the exported pipeline's grid (module docstring), from the top
    or from ``init_timestep`` of SD's table (``export_flow.flow_level``); the prior is plain
    ``randn`` (``init_scale = 1``)."""
    top = 1.0 if init_timestep is None else flow_level(teacher, init_timestep)
    sched = flux_scheduler(teacher, top, steps)
    return DiffusersGenerator(
        teacher, steps=steps, denoiser=denoiser, grid=(_times(teacher, sched, steps), 1.0)
    )


def student_scheduler(generator: DiffusersGenerator, teacher: Any) -> Any:
    """The stock scheduler whose ``FluxPipeline`` loop is the student's rollout, checked against
    its native timesteps and prior; ``ValueError`` naming what differs otherwise."""
    steps = len(generator.ts)
    t = torch.tensor(generator.ts, dtype=torch.float64)
    a, s = teacher.schedule.alpha_sigma(t)
    alpha, sigma, native = teacher.native_level(2 * (a.log() - s.log()))
    sched = flux_scheduler(teacher, float(sigma[0]), steps)
    want = sched.timesteps.to(torch.float64)
    # the native prior: init_scale · z rescaled to the native level (DiffusersTeacher.denoise)
    prior = generator.init_scale * float(torch.hypot(alpha[0], sigma[0]) / torch.hypot(a[0], s[0]))
    if not torch.allclose(native, want, rtol=GRID_RTOL, atol=0) or abs(prior - 1) > GRID_RTOL:
        raise ValueError(
            f"the student's native timesteps {native.tolist()} differ from FluxPipeline's "
            f"{want.tolist()} (or its prior from randn): build it with export_flux.student_generator"
        )
    return sched


def readme(generator: DiffusersGenerator, teacher: Any, sched: Any, prompt: str, lora: bool) -> str:
    """README.md of ``OUT/pipeline`` or ``OUT/lora``: how to load and call it."""
    k, sigmas = generator.nfe, [round(float(s), 5) for s in sched.sigmas[:-1]]
    size, length = teacher.image_shape[1], teacher.text_encoder.max_sequence_length
    guidance = teacher.model.guidance if teacher.model.guidance_embeds else 1.0
    where = "PATH/TO/TEACHER" if lora else "PATH/TO/pipeline"
    lora_lines = (
        'pipe.load_lora_weights("PATH/TO/lora")\n'
        'pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained("PATH/TO/lora/scheduler")\n'
    )
    code = (
        "import torch\nfrom diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler\n\n"
        f'pipe = DiffusionPipeline.from_pretrained("{where}", local_files_only=True)\n'
        f"{lora_lines if lora else ''}"
        + (
            "torch.manual_seed(0)  # the scheduler's re-noising draws from torch's global RNG\n"
            if k > 1
            else ""
        )
        + f"images = pipe([{prompt!r}] * 4, num_inference_steps={k}, guidance_scale={guidance}, "
        f"height={size}, width={size}, max_sequence_length={length}, "
        "generator=torch.Generator().manual_seed(0)).images\n"
    )
    what = "A LoRA on the Flux teacher's transformer" if lora else "A `FluxPipeline`"
    keys = "- Keys: diffusers' `transformer.` layout; rank and alpha in the metadata.\n"
    return (
        f"# {k}-step Flux student distilled with scoredistill\n\n{what}, trained for **K = {k}** "
        f"step(s) at the flow sigmas {sigmas} ({size}x{size} pixels).\n\n```python\n{code}```\n\n"
        "- Stock `FlowMatchEulerDiscreteScheduler` with `stochastic_sampling=True`: each step "
        "returns the network's x0 re-noised with fresh noise (the student's rollout).\n"
        f"- `height`/`width` {size}: the shift `mu` depends on the size the student was trained at.\n"
        f"- `guidance_scale={guidance}`: the embedded guidance the student was trained with "
        "(ignored by models without a guidance embedding); `true_cfg_scale` stays 1: the "
        "teacher's CFG is distilled into the student.\n"
        f"- `num_inference_steps` must be {k}.\n" + (keys if lora else "")
    )


def _full(generator: DiffusersGenerator, teacher: Any, sched: Any, folder: Path) -> None:
    from diffusers import FluxPipeline

    text: FluxTextEncoder = teacher.text_encoder
    pipe = FluxPipeline(
        transformer=plain_copy(generator.denoiser.model).transformer, scheduler=sched,
        vae=teacher.vae, text_encoder=text.encoders[0], tokenizer=text.tokenizers[0],
        text_encoder_2=text.encoders[1], tokenizer_2=text.tokenizers[1],
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)


def _lora(generator: DiffusersGenerator, sched: Any, folder: Path) -> None:
    from diffusers import FluxPipeline

    # FluxNetwork wraps the transformer: its adapter keys start with "transformer."
    save_transformer_lora(FluxPipeline, generator.denoiser, sched, folder, prefix="transformer.")


def export_flux_student(
    generator: DiffusersGenerator,
    teacher: Any,
    out_dir: str | Path,
    *,
    prompt: str = "a prompt",
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (a LoRA student) or ``out_dir/pipeline/`` (a full one) of a Flux
    teacher atomically and return it (module docstring); ``prompt`` goes in the README."""
    sched = student_scheduler(generator, teacher)
    return write_student(
        generator,
        out_dir,
        full=lambda tmp: _full(generator, teacher, sched, tmp),
        lora=lambda tmp: _lora(generator, sched, tmp),
        readme=lambda is_lora: readme(generator, teacher, sched, prompt, is_lora),
        note=note,
    )
