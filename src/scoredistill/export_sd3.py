"""A student of an SD3 teacher: its starting level, its stock scheduler, and its export.

The student (``sources.diffusers.DiffusersGenerator`` on the flow teacher) rolls out
``x = D(x_t, s_j)`` with fresh noise between steps; the stock ``FlowMatchEulerDiscreteScheduler``
with ``stochastic_sampling=True`` computes exactly that loop (``export_families``). Diffusers 0.42
``StableDiffusion3Pipeline.__call__`` draws ``randn(generator=)`` latents (no
``init_noise_sigma``), calls ``transformer(latents, timestep=sigma·1000, prompt_embeds,
pooled)`` and ``scheduler.step(v, t, latents)`` **without** ``generator=`` (l. 1113), so for
K >= 2 the re-noising noise comes from torch's global RNG.

**Starting level** (``student.init_timestep``, e.g. SiD-LSG's 625). On a VP teacher it is an
index of the teacher's table. An SD3 teacher has no table: the index is read on Stable
Diffusion's own table (``vp-scaled-linear``, the table SiD-LSG's 625 indexes) and mapped by
log-SNR, the library's rule for a paper's time (``objectives._ingredients.ref_to_t``), to the
flow level ``s = sigmoid(-lambda/2)``: 625 has ``sigma/alpha = 2.5017``, ``s = 0.71442``
(SiD's ``sigma_init = 2.5``). ``FlowMatchEulerDiscreteScheduler.set_timesteps(K)`` always
starts at ``sigma = 1`` (its table's top, shifted); it starts lower only through
``use_exponential_sigmas=True`` with a config ``sigma_max`` (``_convert_to_exponential`` reads
``self.config.sigma_max``; loading warns that the key "will be ignored", but it is used). The
grid is then ``exp(linspace(log sigma_max, log sigma_min, K))`` with ``sigma_min`` the shifted
grid's last sigma (0.00893 for shift 3): ``[s]`` for K = 1, log-uniform for K >= 2. The student
trains on that grid, so the exported scheduler is the student's.

**Export.** Full student -> ``OUT/pipeline/``: ``StableDiffusion3Pipeline`` (student transformer,
the teacher's VAE, CLIP-L, CLIP-G, T5 or null T5, tokenizers, that scheduler). LoRA student ->
``OUT/lora/``: ``pytorch_lora_weights.safetensors`` by ``StableDiffusion3Pipeline.
save_lora_weights`` (keys ``transformer.<module>.lora_A/B.weight``: PEFT's names, no
``base_model.model.`` prefix; the ``LoraConfig`` as metadata so ``lora_alpha`` reloads),
``scheduler/`` and a README. The modules are ``train_dreambooth_lora_sd3.py``'s (both streams of
the joint attention, e.g. ``transformer_blocks.N.attn.add_q_proj``: ``sources.lora``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError
from .export_families import check_grid, stock_grid, why_not_stock
from .export_flow import (
    SD_REFERENCE,
    TOP_ATOL,
    flow_level,
    plain_copy,
    save_transformer_lora,
    start_scheduler,
)
from .export_flux import is_flux
from .export_flux import student_generator as flux_student
from .export_folder import at_trained_size, size_kwargs, write_student
from .schedules import get_schedule
from .sources.diffusers import DiffusersGenerator
from .teachers.diffusers_sd3 import PIPELINE_T5_LENGTH, SD3TextEncoder

__all__ = [
    "SD_REFERENCE",
    "TOP_ATOL",
    "check_sd3_student",
    "export_sd3_student",
    "flow_level",
    "is_sd3",
    "plain_copy",
    "start_scheduler",
    "student_generator",
    "student_scheduler",
]


def is_sd3(teacher: Any) -> bool:
    """Whether ``teacher`` was loaded from a ``StableDiffusion3Pipeline`` folder."""
    return isinstance(getattr(teacher, "text_encoder", None), SD3TextEncoder)


def check_sd3_student(init_timestep: int, attention: str, family: str = "SD3") -> None:
    """distill-sd's limits on a flow transformer teacher (SD3, Flux), as ``ConfigError`` naming
    the key: the starting index must lie on SD's table (or be -1, the top); attention stays the
    transformer's own joint processor (diffusers' one-stream ``AttnProcessor`` breaks SD3's, and
    Flux's layers are not diffusers ``Attention`` modules that ``set_attention`` could reach)."""
    top = get_schedule(SD_REFERENCE).n - 1
    if init_timestep != -1 and not 1 <= init_timestep <= top:
        what = f"{init_timestep} is not an index of SD's table (read by log-SNR on SD3)"
        raise ConfigError(f"config key 'student.init_timestep': {what}; valid: -1 or 1..{top}")
    if attention != "sdpa":
        article = "an" if family == "SD3" else "a"
        what = f"{attention!r} is not supported with {article} {family} teacher yet; valid: 'sdpa'"
        raise ConfigError(f"config key 'student.attention': {what}")


class _Scheduled:
    """``teacher`` with ``scheduler`` in place of its own: what ``export_families.stock_grid``
    and ``check_grid`` read (the config; the family, schedule and levels stay the teacher's)."""

    def __init__(self, teacher: Any, scheduler: Any) -> None:
        self._teacher, self.scheduler = teacher, scheduler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)


def student_generator(
    teacher: Any,
    *,
    steps: int,
    init_timestep: int | None = None,
    denoiser: nn.Module | None = None,
) -> DiffusersGenerator:
    """``DiffusersGenerator``; on a flow teacher ``init_timestep`` (SD's table index) starts it
    at ``flow_level`` on ``start_scheduler``'s grid (module docstring); a Flux teacher's on
    ``FluxPipeline``'s grid (``export_flux.student_generator``)."""
    if is_flux(teacher):
        return flux_student(teacher, steps=steps, init_timestep=init_timestep, denoiser=denoiser)
    if init_timestep is None or teacher.family != "flow":
        return DiffusersGenerator(
            teacher, steps=steps, init_timestep=init_timestep, denoiser=denoiser
        )
    view = _Scheduled(teacher, start_scheduler(teacher, flow_level(teacher, init_timestep)))
    grid = stock_grid(view, steps)
    if grid is None:
        raise ValueError(f"no stock scheduler for this student: {why_not_stock(view, steps)}")
    return DiffusersGenerator(teacher, steps=steps, denoiser=denoiser, grid=grid)


def student_scheduler(generator: DiffusersGenerator, teacher: Any) -> Any:
    """The stock scheduler whose ``set_timesteps(K)`` loop is the student's rollout, checked
    against its times and prior (``export_families.check_grid``; ``ValueError`` if not)."""
    t = torch.tensor(generator.ts[:1], dtype=torch.float64)
    a, s = teacher.schedule.alpha_sigma(t)
    top = float(teacher.native_level(2 * (a.log() - s.log()))[1][0])
    view = _Scheduled(teacher, start_scheduler(teacher, top))
    return check_grid(view, generator.ts, generator.init_scale)


_IMPORT = "import torch\nfrom diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline\n"
_LORA = (
    'pipe.load_lora_weights("PATH/TO/lora")\n'
    'pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained("PATH/TO/lora/scheduler")\n'
)
_SEED = "torch.manual_seed(0)  # the scheduler's re-noising draws from torch's global RNG\n"


def readme(
    generator: DiffusersGenerator,
    sched: Any,
    prompt: str,
    lora: bool,
    t5: bool,
    length: int = PIPELINE_T5_LENGTH,
    size: str = "",
) -> str:
    """README.md of ``OUT/pipeline`` or ``OUT/lora``: how to load and call it (a folder without
    T5 loads only with ``text_encoder_3=None, tokenizer_3=None`` passed; a T5 ``length`` other
    than the pipeline's 256 is passed as ``max_sequence_length``)."""
    k, sigmas = generator.nfe, [round(float(s), 5) for s in sched.sigmas[:-1]]
    where = "PATH/TO/TEACHER" if lora else "PATH/TO/pipeline"
    no_t5 = "" if t5 else ", text_encoder_3=None, tokenizer_3=None"
    seq = "" if length == PIPELINE_T5_LENGTH else f"max_sequence_length={length}, "
    code = (
        f'{_IMPORT}\npipe = StableDiffusion3Pipeline.from_pretrained("{where}", '
        f"local_files_only=True{no_t5})\n{_LORA if lora else ''}{_SEED if k > 1 else ''}"
        f"images = pipe([{prompt!r}] * 4, num_inference_steps={k}, {size}{seq}guidance_scale=1.0, "
        "generator=torch.Generator().manual_seed(0)).images\n"
    )
    what = "A LoRA on the SD3 teacher's transformer" if lora else "An SD3 pipeline"
    keys = "- Keys: diffusers' `transformer.` layout; rank and alpha in the metadata.\n"
    return (
        f"# {k}-step SD3 student distilled with scoredistill\n\n{what}, trained for **K = {k}** "
        f"step(s) at the flow sigmas {sigmas}.\n\n```python\n{code}```\n\n"
        "- Stock `FlowMatchEulerDiscreteScheduler` with `stochastic_sampling=True`: each step "
        "returns the network's x0 re-noised with fresh noise (the student's rollout).\n"
        "- A first sigma below 1 is set by `use_exponential_sigmas` and `sigma_max`; diffusers "
        "warns that `sigma_max` 'will be ignored', but `set_timesteps` reads it.\n"
        "- `guidance_scale=1.0`: the teacher's guidance is distilled into the student.\n"
        f"- `num_inference_steps` must be {k}.\n" + (keys if lora else "")
    )


def _full(generator: DiffusersGenerator, teacher: Any, sched: Any, folder: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    text: SD3TextEncoder = teacher.text_encoder
    t5 = (text.encoders[2], text.tokenizers[2]) if text.has_t5 else (None, None)
    pipe = StableDiffusion3Pipeline(
        transformer=at_trained_size(plain_copy(generator.denoiser.model), teacher),
        scheduler=sched, vae=teacher.vae,
        text_encoder=text.encoders[0], tokenizer=text.tokenizers[0],
        text_encoder_2=text.encoders[1], tokenizer_2=text.tokenizers[1],
        text_encoder_3=t5[0], tokenizer_3=t5[1],
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)


def _lora(generator: DiffusersGenerator, sched: Any, folder: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    save_transformer_lora(StableDiffusion3Pipeline, generator.denoiser, sched, folder)


def export_sd3_student(
    generator: DiffusersGenerator,
    teacher: Any,
    out_dir: str | Path,
    *,
    prompt: str = "a prompt",
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (a LoRA student) or ``out_dir/pipeline/`` (a full one) of an SD3
    teacher atomically and return it (module docstring); ``prompt`` goes in the README."""
    sched = student_scheduler(generator, teacher)
    t5, length = teacher.text_encoder.has_t5, teacher.text_encoder.max_sequence_length
    return write_student(
        generator,
        out_dir,
        full=lambda tmp: _full(generator, teacher, sched, tmp),
        lora=lambda tmp: _lora(generator, sched, tmp),
        readme=lambda is_lora: readme(
            generator, sched, prompt, is_lora, t5, length, size_kwargs(teacher, is_lora)
        ),
        note=note,
    )
