"""``scoredistill distill --teacher SD_DIR --prompts FILE``: a text-to-image teacher distilled.

The teacher is a local ``StableDiffusionPipeline``-layout folder (``teachers.diffusers_latent``);
prompts are the condition: prompt ``i`` of the list is label ``i`` (with line ``i`` of the
``prompts_2``/``prompts_3`` files, diffusers' ``prompt_2``/``prompt_3``: ``sd_prompts``) and the
empty (or negative) prompt the null label, so guidance and every objective run unchanged on
latents. The student and the critic are full trainable copies of the teacher's UNet or LoRA
adapters on the teacher's own base (``sources.lora``: one UNet in memory for teacher, critic
and student). The run folder keeps the distill contract: ``samples.npz`` holds the decoded
images ``x: (N, C·H·W)`` in [-1, 1] (and ``latents``); ``OUT/pipeline`` (full student) or
``OUT/lora`` (LoRA student) load with stock diffusers (``export_latent``). Metrics: when the
decoded images are 8×8 and every prompt names one digit (the bundled digits teacher), the
digits feature network scores FD, precision/recall and prompt accuracy (a CLIP-score analogue).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from ..config import ConfigError, NonNegativeFloat, PositiveInt, Range, to_dict
from ..config import resolve as resolve_config
from ..export_latent import export_plan
from ..io import atomic_write_json
from ..objectives import OBJECTIVES
from ..parametrization import guided
from ..presets.sd import DESCRIPTIONS, PRESETS, QUICK
from ..train.common import JsonlLogger, run_device
from ..train.two_player import TwoPlayerConfig, train_two_player
from .family import Family, Resolved, report_section
from .sd_digits import prompt_digits, prompt_forgetting, scorable_digits
from .sd_nasa import NasaKeys, check_nasa, nasa_export_note, nasa_players
from .sd_prompts import prompt_streams, read_prompts, sd_paths
from .sd_teacher_keys import (
    FluxKeys,
    SDXLKeys,
    T5Length,
    apply_teacher_keys,
    micro_cond,
)
from .unet import _label_sampler, student_draw

__all__ = [
    "FAMILY",
    "SDDistillConfig",
    "prompt_digits",
    "prompt_forgetting",
    "read_prompts",
    "run_sd",
    "scorable_digits",
]


@dataclass(frozen=True)
class LoraPlayer:
    lora: bool = False  # a LoRA adapter on the teacher's base instead of a full copy
    lora_rank: PositiveInt = 64
    lora_alpha: NonNegativeFloat = 0.0  # 0: equal to the rank (scale 1)
    lora_targets: tuple[str, ...] = ()  # module-name suffixes; (): sources.lora.default_targets


@dataclass(frozen=True)
class SDStudentConfig(LoraPlayer):
    steps: PositiveInt = 1  # student NFE K (LCM's grid on the teacher's table)
    # the top native timestep; -1: the table's last (DMD2's 999; SiD-LSG: 625); on SD3 an
    # index of SD's table mapped by log-SNR to a flow level (export_sd3.flow_level)
    init_timestep: Annotated[int, Range(-1, note="-1: the table's last")] = -1
    attention: Literal["sdpa", "eager"] = "sdpa"


@dataclass(frozen=True)
class SDEvalConfig:
    samples: PositiveInt = 256  # student and teacher draws scored at the end
    nfe: tuple[int, ...] = (1, 2, 4, 8)  # teacher rows (best sampler per NFE, same guidance)
    samplers: tuple[str, ...] = ("ddim", "dpmpp-2m", "heun", "euler")  # the brief's four
    panel_nfe: PositiveInt = 32  # the teacher's picture in samples.png (DPM-Solver++(2M))


@dataclass(frozen=True)
class SDDistillConfig:
    method: str = "vsd"
    teacher: str = ""  # a local StableDiffusionPipeline-layout folder; "" = the bundled digits one
    variant: str = ""  # weight variant ("fp16"); "": standard, or the only one (fp16-only)
    prompts: str = ""  # a text file, one prompt per line ("" = the bundled teacher's prompts)
    negative_prompt: str = ""  # the null condition of guidance ("" = the empty prompt)
    prompts_2: str = ""  # a file: line i the prompt_2 of prompt i ("" = prompt; sd_prompts)
    prompts_3: str = ""  # a file: line i the prompt_3 (SD3's T5) of prompt i ("" = prompt)
    negative_prompt_2: str = ""  # the null row's prompt_2 ("" = negative_prompt)
    negative_prompt_3: str = ""  # the null row's prompt_3 ("" = negative_prompt)
    resolution: Annotated[int, Range(0, note="0: the folder's own size")] = 0  # pixels, H = W
    clip_skip: Annotated[int, Range(0, note="0: None")] = 0  # diffusers' (diffusers_clip_skip)
    sdxl: SDXLKeys = field(default_factory=SDXLKeys)  # micro-conditioning (sd_teacher_keys)
    flux: FluxKeys = field(default_factory=FluxKeys)  # embedded guidance (sd_teacher_keys)
    max_sequence_length: T5Length = 0  # SD3/Flux T5 length; 0: the pipeline's (sd_teacher_keys)
    forget_prompt: str = ""  # method sfd: the prompt of the list to forget
    safe_prompt: str = ""  # method sfd: the prompt of the list the teacher answers it with
    objective: dict[str, Any] = field(default_factory=dict)
    train: TwoPlayerConfig = field(default_factory=TwoPlayerConfig)
    student: SDStudentConfig = field(default_factory=SDStudentConfig)
    critic: LoraPlayer = field(default_factory=LoraPlayer)
    nasa: NasaKeys = field(default_factory=NasaKeys)  # SNOOPI's NASA-T (runs.sd_nasa)
    eval: SDEvalConfig = field(default_factory=SDEvalConfig)
    export: bool = True  # write OUT/pipeline (full student) or OUT/lora (LoRA student)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (CUDA or CPU), fp32 weights


def load_teacher(cfg: SDDistillConfig):
    """The latent teacher with the prompt list as its labels."""
    from ..export_flux import is_flux
    from ..export_sd3 import check_sd3_student, is_sd3
    from ..sources.diffusers import set_attention
    from ..teachers.diffusers_check import check_forward
    from ..teachers.diffusers_latent import load_latent_teacher

    folder, prompt_file = sd_paths(cfg)
    prompts = read_prompts(prompt_file)
    streams = prompt_streams(cfg, folder, prompt_file, len(prompts))  # before weights load
    teacher = load_latent_teacher(
        folder, resolution=cfg.resolution, clip_skip=cfg.clip_skip, variant=cfg.variant
    )
    apply_teacher_keys(cfg, teacher)  # before the prompts' rows are built
    teacher.set_prompt_labels(prompts, cfg.negative_prompt, **streams)
    if is_sd3(teacher) or is_flux(teacher):  # joint attention; init_timestep on SD's table
        family = "SD3" if is_sd3(teacher) else "Flux"
        check_sd3_student(cfg.student.init_timestep, cfg.student.attention, family)
    else:
        set_attention(teacher.model, cfg.student.attention)
    teacher = teacher.to(run_device())
    check_forward(teacher, folder, torch.zeros(1, dtype=torch.long))  # prompt 0; --dry-run too
    return teacher


def teacher_guidance(objective: Any) -> float:
    """The teacher's CFG scale: the objective's, or its base method's (SFD wraps SiD)."""
    base = getattr(objective, "base", objective)  # SFD holds its base method (SiD) inside
    return float(getattr(objective, "guidance", getattr(base, "guidance", 1.0)))


def check_negative_prompt(cfg: Any, objective: Any) -> None:
    """A negative prompt (or SDXL's negative micro-conditioning) acts only through guidance:
    refused when ``objective.guidance`` is 1."""
    keys = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")
    given = [key for key in keys if getattr(cfg, key, "")]
    sdxl = getattr(cfg, "sdxl", None)  # SDXL's negative micro-conditioning: the null rows too
    if sdxl is not None and sdxl.negative_original_size:
        given.append("sdxl.negative_original_size")
    if given and teacher_guidance(objective) == 1.0:
        raise ConfigError(
            f"config key {given[0]!r}: it acts only through guidance, and "
            f"objective.guidance is 1 for method {cfg.method!r}; set objective.guidance > 1"
        )


def forget_labels(cfg: SDDistillConfig, objective: Any, prompts: list[str]) -> Any:
    """Method ``sfd``: the objective with ``forget_prompt``/``safe_prompt`` as its labels (prompt
    ``i`` is label ``i``); other methods refuse the two keys. Errors name the key."""
    keys = {"forget_prompt": cfg.forget_prompt, "safe_prompt": cfg.safe_prompt}
    if cfg.method != "sfd":
        for key, value in keys.items():
            if value:
                raise ConfigError(
                    f"config key {key!r}: acts only with method sfd, not {cfg.method!r}"
                )
        return objective
    ids = {}
    for key, value in keys.items():
        if value not in prompts:
            listed = ", ".join(repr(p) for p in prompts[:6]) + (", ..." if len(prompts) > 6 else "")
            raise ConfigError(
                f"config key {key!r}: {value!r} is not in the prompt list; valid: one of {listed}"
            )
        ids[key] = prompts.index(value)
    if ids["forget_prompt"] == ids["safe_prompt"]:
        raise ConfigError("config key 'safe_prompt': must differ from forget_prompt")
    if prompts.count(cfg.forget_prompt) > 1:  # a second label of the same text would escape
        raise ConfigError(
            f"config key 'forget_prompt': {cfg.forget_prompt!r} is listed "
            f"{prompts.count(cfg.forget_prompt)} times in the prompt file; list it once"
        )
    return replace(objective, forget_class=ids["forget_prompt"], safe_class=ids["safe_prompt"])


def _check(cfg: SDDistillConfig, objective: Any) -> None:
    check_negative_prompt(cfg, objective)
    check_nasa(cfg)
    micro_cond(cfg.sdxl)  # bad pairs fail before any weights load
    if (cfg.student.lora or cfg.critic.lora) and cfg.train.parallel == "fsdp2":
        raise ConfigError(
            "config key 'train.parallel': fsdp2 cannot shard LoRA players on a shared base; "
            "use ddp or full players (student.lora=false, critic.lora=false)"
        )


def build_players(cfg: SDDistillConfig, teacher: Any):
    """``(generator, critic)``: full copies first (a copy made after an adapter would carry
    it), then LoRA adapters on the teacher's base."""
    from ..export_sd3 import student_generator
    from ..sources.diffusers import make_diffusers_critic
    from ..sources.lora import AdapterView, add_lora

    def view(name: str, p: LoraPlayer) -> AdapterView:  # called for LoRA players only
        try:  # lora_targets naming no module of the network
            add_lora(teacher.model, name, p.lora_rank, p.lora_alpha or None, p.lora_targets or None)
        except ValueError as err:
            raise ConfigError(f"config key '{name}.lora_targets': {err}") from None
        return AdapterView(teacher, name)

    s = cfg.student
    top = {"steps": s.steps, "init_timestep": None if s.init_timestep < 0 else s.init_timestep}
    gen = None if s.lora else student_generator(teacher, **top)
    critic = None if cfg.critic.lora else make_diffusers_critic(teacher)
    if gen is None:
        gen = student_generator(teacher, **top, denoiser=view("student", s))
    if critic is None:
        critic = make_diffusers_critic(teacher, denoiser=view("critic", cfg.critic))
    return gen, critic


def _scorer(teacher: Any):
    """``score(teacher, z, labels, seed)`` on decoded latents (the run's metric contract)."""
    digits = scorable_digits(teacher)

    def score(_teacher: Any, z: torch.Tensor, labels: torch.Tensor | None, seed: int):
        if digits is None:
            return {"n": int(z.shape[0])}
        from ..eval.features import image_metrics

        with torch.no_grad():
            images = teacher.decode(z).cpu()  # the metrics' networks are on the CPU
        y = None if labels is None else digits[labels.clamp(min=0)]
        return image_metrics(images, y, seed=seed)

    return score


class _Guided:
    """The teacher sampled with the objective's guidance (a fair teacher row)."""

    def __init__(self, teacher: Any, w: float) -> None:
        self._teacher, self.denoise = teacher, guided(teacher.denoise, w)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)


def teacher_rows(cfg: SDDistillConfig, teacher: Any, guidance: float) -> list[dict[str, Any]]:
    """The teacher's rows at the run's guidance: every sampler x grid x NFE of ``cfg.eval``,
    seed-paired with the student's draws (``cfg.train.seed``)."""
    from ..eval.image_baseline import image_rows

    view, ev = _Guided(teacher, guidance), cfg.eval
    return image_rows(view, ev.samplers, ev.nfe, ev.samples, cfg.train.seed, _scorer(teacher))


def run_sd(cfg: SDDistillConfig, objective: Any, out: Path, resume: bool = False):
    """Load, train, evaluate, export and write the run folder; returns the final metrics."""
    from ..sources.nasa_student import fixed_alpha

    teacher = load_teacher(cfg).to(run_device())  # players are copied from it: same device
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    torch.manual_seed(cfg.train.seed)
    gen, critic = build_players(cfg, teacher)
    if cfg.export and (plan := export_plan(gen, teacher)).startswith("none: "):  # not at the end
        warnings.warn(f"the student will not be exported: {plan[6:]}", stacklevel=2)
    gen = nasa_players(cfg, teacher, gen, critic)  # NASA-T's student and critic, if on
    score, seed, eval_alpha = _scorer(teacher), cfg.train.seed, cfg.nasa.eval_alpha

    def evaluate(generator) -> dict[str, Any]:
        with fixed_alpha(generator, eval_alpha):
            z, labels, _ = student_draw(generator, teacher, min(cfg.eval.samples, 256), seed)
        return score(teacher, z, labels, seed)

    start, bf16 = time.perf_counter(), cfg.precision == "bf16"
    with torch.autocast(run_device().type, torch.bfloat16, enabled=bf16):
        result = train_two_player(
            cfg.train, objective=objective, generator=gen, critic=critic, teacher=teacher,
            sample_latent=lambda n, rng: gen.sample_latent(n, rng),
            sample_cond=_label_sampler(teacher), evaluate=evaluate, out_dir=out, resume=resume,
        )  # fmt: skip
    if not result["is_main_process"]:
        return {}
    with fixed_alpha(result["ema"], eval_alpha):
        return _finish(cfg, objective, teacher, result, gen, critic, start, out)


def _finish(cfg, objective, teacher, result, gen, critic, start: float, out: Path):
    """Final draw, metrics, teacher rows, ``samples.npz``, export and report of a trained run."""
    from ..eval.image_baseline import best_rows
    from ..export_latent import export_latent_student
    from ..sources.nasa_student import unwrap_nasa
    from .unet_report import write_outputs

    ema, score, seed = result["ema"], _scorer(teacher), cfg.train.seed
    z, labels, sample_s = student_draw(ema, teacher, cfg.eval.samples, seed)
    with torch.no_grad():
        x = teacher.decode(z).cpu().flatten(1)
    trainable = {
        "student": sum(p.numel() for p in gen.parameters()),
        "critic": sum(p.numel() for p in critic.parameters()),
    }
    metrics = {
        **score(teacher, z, labels, seed + 1), "nfe": ema.nfe,
        "wall_s": time.perf_counter() - start, "sample_s": sample_s, "world_size": result["world_size"],
        "trainable_params": trainable, "guidance": teacher_guidance(objective),
    }  # fmt: skip
    if hasattr(objective, "forget_class") and scorable_digits(teacher) is not None:
        metrics["forgetting"] = prompt_forgetting(
            ema, teacher, objective.forget_class, objective.safe_class, cfg.eval.samples, seed
        )
    teacher_view = _Guided(teacher, metrics["guidance"])
    rows = teacher_rows(cfg, teacher, metrics["guidance"])
    metrics["teacher_best"] = best_rows(rows, cfg.eval.nfe)
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    labelled = {"labels": labels.numpy()} if labels is not None else {}
    np.savez(out / "samples.npz", x=x.numpy(), latents=z.numpy(), **labelled)

    def export() -> str:
        prompt = teacher.prompt_table.prompts[0]
        path = export_latent_student(
            unwrap_nasa(ema), teacher, out, steps=ema.nfe, prompt=prompt, note=nasa_export_note(cfg)
        )
        return f"`{path}` (see its README.md)"

    write_outputs(
        out, cfg, teacher_view, ema, x, labels, metrics, rows, result["history"],
        export=export, decode=teacher.decode,
    )  # fmt: skip
    return metrics


def resolve_sd(preset: str | None, sets: list[str]) -> tuple[SDDistillConfig, Any]:
    """The typed config and objective, checked against the prompt file (no network loaded)."""
    cfg, objective = resolve_config(SDDistillConfig(), PRESETS, preset, sets, OBJECTIVES)
    _check(cfg, objective)
    objective = forget_labels(cfg, objective, read_prompts(sd_paths(cfg)[1]))
    return replace(cfg, objective=asdict(objective)), objective  # config.json: the labels


def _resolve_run(preset: str | None, sets: list[str]) -> Resolved:
    cfg, objective = resolve_sd(preset, sets)
    load_teacher(cfg)  # a bad folder fails before any training
    return Resolved(cfg, objective, preset)


def teacher_report(cfg: Any, teacher: Any) -> dict[str, Any]:
    """``--dry-run``'s lines on a latent teacher (``distill`` and ``optimize``): the folder and
    prompt file in use (the bundled ones when none is given), shapes, prediction type and the
    frozen parts' parameter counts."""
    parts = {"unet": teacher.model, "vae": teacher.vae, "text_encoder": teacher.text_encoder}
    folder, prompt_file = sd_paths(cfg)
    return {
        "teacher_folder": str(folder),
        "prompts": f"{prompt_file} ({len(teacher.prompt_rows)})",
        "latent_shape": list(teacher.shape),
        "image_shape": list(teacher.image_shape),
        "prediction_type": teacher.prediction_type,
        "frozen_params": {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()},
    }


def param_report(cfg: SDDistillConfig) -> dict[str, Any]:
    """``--dry-run``: ``teacher_report``, trainable parameters per player and weight+optimizer
    memory (fp32; Adam: weights, gradient and two moments per trained value; the frozen parts
    once) and what the export will write."""
    teacher = load_teacher(cfg)
    report = teacher_report(cfg, teacher)
    gen, critic = build_players(cfg, teacher)
    trained = {
        "student": sum(p.numel() for p in gen.parameters()),
        "critic": sum(p.numel() for p in critic.parameters()),
    }
    mib = {k: round(4 * 4 * v / 2**20, 2) for k, v in trained.items()}
    mib["frozen teacher parts"] = round(4 * sum(report["frozen_params"].values()) / 2**20, 2)
    plan = export_plan(gen, teacher) if cfg.export else "off (export=false)"
    return report | {"trainable_params": trained, "weights_and_optimizer_MiB": mib, "export": plan}


FAMILY = Family(
    name="distill-sd",
    help="distil a text-to-image latent teacher (StableDiffusionPipeline folder) on prompts",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve_run,
    run=lambda r, out, resume: run_sd(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="generator updates",
    epilogue=report_section,
    dry_run=lambda r: {"networks": param_report(r.config)},
)
