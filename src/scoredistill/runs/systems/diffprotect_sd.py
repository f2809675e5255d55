"""Diff-Protect on a real latent pipeline (Xue, Liang, Wu, Chen, "Toward effective protection
against diffusion-based mimicry through score distillation", ICLR 2024; code
xavihart/Diff-Protect@ac5ffdb): the attacks of ``diffprotect_attacks`` on a diffusers
``AutoencoderKL`` + ``UNet2DConditionModel`` (``StableDiffusionPipeline`` folder, by default the
bundled ``assets/teachers/digits-sd``), and the mimicry by diffusers' stock
``StableDiffusionImg2ImgPipeline`` of the same folder (SDEdit).

With ``z = E(x)`` the VAE's scaled posterior mean and ``z_t = alpha_t z + sigma_t eps``, the
semantic loss is ``L_S(x) = E_{t, eps} ||eps_phi(z_t, t, c) - eps||^2`` (AdvDM) with ``c`` the
paper's generic prompt (here the empty prompt). PGD ascends (+) or descends (-) it by

- **SDS** (``code/attacks.py::pgd_sds``): ``g_x = J_E(x)^T sg(eps_phi(z_t, t, c) - eps)``, i.e. the
  gradient of ``<sg(eps_phi - eps), E(x)>`` through the encoder only;
- **AdvDM**: ``g_x = grad_x ||eps_phi(z_t, t, c) - eps||^2`` through the encoder and the UNet;

``x <- clip_[-1,1] Pi_{||x - x0||_inf <= eps}(x + dir · step · sign(g_x))``, ``t ~ U(0, 1)`` of
the UNet's own table (the paper's ``randint(0, T)``), one ``(t, eps)`` draw per image per step.
The mimicry: ``img2img(x, prompt "a handwritten d", strength s)`` with ``int(100 s)`` DDIM
steps of the folder's scheduler (``SDEdit.edit(restep='ddim100')``). What is
measured: the output's distance to the *clean* image (L2, PSNR) and the digits classifier's
prompt accuracy on it, before (method ``none``) and after protection; the latent vs image
displacement; CPU seconds and autograd-saved bytes per PGD step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...config import ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt, Seed, to_dict
from ...data import load_digits_images
from ...eval.features import load_digits_feature_net
from ...io import atomic_write_json
from ...teachers.diffusers_latent import LatentDiffusersTeacher, load_latent_teacher
from ..sd_prompts import BUNDLED_SD
from . import diffprotect_attacks as atk

__all__ = [
    "METHODS",
    "DiffProtectSDConfig",
    "Prompted",
    "attack_gradient",
    "load_mimicry",
    "mimic",
    "procedure",
    "protect",
    "report",
    "run_measurement",
]

METHODS = ("none", "random", "sds+", "sds-", "advdm+", "advdm-")
_HELDOUT = 450  # images in data.load_digits_images("test")


@dataclass(frozen=True)
class DiffProtectSDConfig:
    """Diff-Protect against img2img mimicry of a ``StableDiffusionPipeline`` folder."""

    teacher: str = ""  # pipeline folder; "" = the bundled assets/teachers/digits-sd
    steps: PositiveInt = 100  # PGD steps (configs/attack/base.yaml: steps 100)
    seed: Seed = 0  # attack draws, random signs and img2img noise
    # L-inf budget 16/255 and step 1/255, both x2 for images in [-1, 1] (diff_mist.py::init)
    epsilon: PositiveFloat = 32 / 255
    step_size: PositiveFloat = 2 / 255
    # img2img strengths; the paper's ddim100 edits use 0.01..0.3 (SDEdit.edit_list); 0.5 added
    # as a strong edit, 0.01 dropped (the exact-testbed version's set)
    strengths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    inference_steps: PositiveInt = 100  # 'ddim100': int(100 s) steps from strength s
    # p_sample_ddim's default unconditional_guidance_scale = 1 (SDEdit.edit): no CFG
    guidance: NonNegativeFloat = 1.0
    # the attack's prompt: the paper's generic 'a photo' (diff_mist.py::main); departure: the
    # empty prompt, this teacher's generic condition (trained with 10 % empty prompts). With
    # '{digit}' in it each image is attacked under its own class's prompt (an attacker who
    # knows what the image shows; not in the paper)
    attack_prompt: str = ""
    mimic_prompt: str = "a handwritten {digit}"  # the bundled teacher's prompt of the class
    methods: tuple[str, ...] = METHODS
    n_images: PositiveInt = 64  # the first n held-out digits (the paper: single images)
    data_seed: Seed = 0  # the train / held-out split of the digits

    def __post_init__(self) -> None:
        if not self.strengths or any(not 0.0 < s <= 1.0 for s in self.strengths):
            raise ConfigError(
                f"config key 'strengths' needs values in (0, 1], got {self.strengths}"
            )
        if any(int(self.inference_steps * s) < 1 for s in self.strengths):
            raise ConfigError(
                f"config key 'strengths': int(inference_steps · s) must be >= 1 for every s "
                f"(img2img runs no step otherwise); got {self.strengths} at {self.inference_steps}"
            )
        if not self.methods or set(self.methods) - set(METHODS):
            raise ConfigError(
                f"config key 'methods' must be a non-empty subset of {list(METHODS)}, "
                f"got {list(self.methods)}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"config key 'methods' repeats a value: {list(self.methods)}")
        if self.n_images > _HELDOUT:
            raise ConfigError(f"config key 'n_images' must be <= {_HELDOUT}, got {self.n_images}")
        if self.step_size > self.epsilon:
            raise ConfigError(
                f"config key 'step_size' ({self.step_size}) must not exceed 'epsilon' "
                f"({self.epsilon}): one step would leave the ball"
            )
        if "{digit}" not in self.mimic_prompt:
            raise ConfigError(
                f"config key 'mimic_prompt' must contain '{{digit}}', got {self.mimic_prompt!r}"
            )
        for key in ("attack_prompt", "mimic_prompt"):
            try:
                getattr(self, key).format(digit=0)
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(
                    f"config key {key!r}: the only placeholder allowed is '{{digit}}' ({err!r})"
                ) from None

    def attack_prompts(self, labels: Tensor) -> list[str]:
        """The attack's prompt per image of class ``labels`` (one prompt when it names no
        class: a single row, broadcast to the batch)."""
        if "{digit}" not in self.attack_prompt:
            return [self.attack_prompt]
        return [self.attack_prompt.format(digit=int(d)) for d in labels]


# ---------------------------------------------------------------------- the attacks
class Prompted:
    """``teacher`` with a fixed text condition: the ``schedule`` / ``denoise`` protocol that
    ``diffprotect_attacks`` calls with ``cond=None``. One prompt is one row, expanded to the
    batch; B prompts condition the B images row by row."""

    def __init__(self, teacher: LatentDiffusersTeacher, prompts: str | list[str]) -> None:
        self.teacher, self.schedule = teacher, teacher.schedule
        self.cond = teacher.encode_prompts([prompts] if isinstance(prompts, str) else prompts)

    def denoise(self, z_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.teacher.denoise(z_t, t, self.cond)


def attack_gradient(
    method: str, teacher: LatentDiffusersTeacher, prompt: str | list[str] = ""
) -> atk.GradFn:
    """``g(x (B, C, H, W), rng) -> (B, C, H, W)`` of ``sds±`` (encoder only) or ``advdm±``
    under ``prompt`` (one, or one per image)."""
    kinds = {"sds": atk.sds_gradient, "advdm": atk.full_gradient}
    fn = kinds.get(method.rstrip("+-"))
    if fn is None or method[-1] not in "+-":
        raise ValueError(f"method {method!r} has no gradient; valid: sds±, advdm±")
    prior = Prompted(teacher, prompt)
    return lambda x, rng: fn(x, teacher.encode, prior, rng)


def protect(
    x0: Tensor,
    method: str,
    teacher: LatentDiffusersTeacher,
    cfg: DiffProtectSDConfig,
    seed: int,
    labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``x_adv`` of ``method`` for clean images ``x0: (B, C, H, W)`` in [-1, 1] of classes
    ``labels`` (needed when ``cfg.attack_prompt`` names the class), and its cost per PGD step
    (median CPU seconds, KiB of autograd-saved activations)."""
    rng = torch.Generator().manual_seed(seed)
    if method == "none":
        return x0.clone(), {}
    if method == "random":
        return atk.random_sign(x0, cfg.epsilon, rng), {}
    grad = attack_gradient(method, teacher, _prompts(cfg, labels, len(x0)))
    saved = atk.saved_bytes(grad, x0, torch.Generator().manual_seed(seed))
    res = atk.pgd(
        x0,
        grad,
        eps=cfg.epsilon,
        step=cfg.step_size,
        steps=cfg.steps,
        direction=1.0 if method.endswith("+") else -1.0,
        rng=rng,
    )
    return res.x_adv, {"s_per_step": res.s_per_step, "saved_kib_per_step": saved / 1024}


def _prompts(cfg: DiffProtectSDConfig, labels: Tensor | None, n: int) -> list[str]:
    if "{digit}" in cfg.attack_prompt and (labels is None or len(labels) != n):
        raise ValueError(f"attack_prompt {cfg.attack_prompt!r} names the class: pass {n} labels")
    return cfg.attack_prompts(labels if labels is not None else torch.empty(0))


# ---------------------------------------------------------------------- the mimicry
def load_mimicry(folder: str | Path) -> Any:
    """Diffusers' stock ``StableDiffusionImg2ImgPipeline`` from ``folder`` (offline)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, feature_extractor=None
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def mimic(
    pipe: Any, x: Tensor, labels: Tensor, strength: float, cfg: DiffProtectSDConfig, seed: int
) -> Tensor:
    """img2img of ``x: (B, C, H, W)`` in [-1, 1] with the prompt of each label; ``(B, C, H, W)``
    in [-1, 1]. The images go in as [0, 1] tensors (the pipeline's documented range)."""
    prompts = [cfg.mimic_prompt.format(digit=int(d)) for d in labels]
    out = pipe(
        prompts,
        image=(x + 1) / 2,
        strength=strength,
        num_inference_steps=cfg.inference_steps,
        guidance_scale=cfg.guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images
    return out.to(x.dtype) * 2 - 1


# ---------------------------------------------------------------------- the measurement
def _spread(v: Tensor) -> float:
    """Mean distance of the rows of ``v: (B, d)`` to their mean."""
    return float((v - v.mean(0)).norm(dim=1).mean())


def _psnr(a: Tensor, b: Tensor) -> float | None:
    """PSNR of the whole set, peak-to-peak 2 (images in [-1, 1])."""
    mse = float((a - b).pow(2).mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else None


def _evaluate(
    ctx: dict[str, Any], cfg: DiffProtectSDConfig, x_adv: Tensor, seed: int
) -> dict[str, float | None]:
    """Perturbation, latent displacement, and the img2img outputs against the clean images."""
    x0, y, teacher, net = ctx["x0"], ctx["y"], ctx["teacher"], ctx["classifier"]
    with torch.no_grad():
        z0, z = teacher.encode(x0), teacher.encode(x_adv)
    d = (x_adv - x0).flatten(1)
    out: dict[str, float | None] = {
        "linf": float(d.abs().max()),
        "pert_psnr": _psnr(x_adv, x0),
        "dx_rel": float(d.norm(dim=1).mean()) / _spread(x0.flatten(1)),
        "dz_rel": float((z - z0).norm(dim=1).mean()) / _spread(z0),
    }
    for k, s in enumerate(cfg.strengths):
        o = mimic(ctx["pipe"], x_adv, y, s, cfg, seed + k)  # same noise for every method
        with torch.no_grad():
            pred = net.logits(o).argmax(dim=1)
        out[f"l2@{s:g}"] = float((o - x0).flatten(1).norm(dim=1).mean())
        out[f"psnr@{s:g}"] = _psnr(o, x0)
        out[f"acc@{s:g}"] = float((pred == y).double().mean())
    for key in ("l2", "psnr", "acc"):
        vals = [out[f"{key}@{s:g}"] for s in cfg.strengths]
        out[f"{key}_mean"] = None if None in vals else sum(vals) / len(vals)
    return out


def _context(cfg: DiffProtectSDConfig) -> dict[str, Any]:
    folder = Path(cfg.teacher) if cfg.teacher else BUNDLED_SD / "pipeline"
    teacher = load_latent_teacher(folder)
    data = load_digits_images("test", seed=cfg.data_seed)
    x0, y = data.x[: cfg.n_images], data.labels[: cfg.n_images]
    if tuple(x0.shape[1:]) != teacher.image_shape:
        raise ConfigError(
            f"config key 'teacher': {folder} takes images {teacher.image_shape}, "
            f"the digits are {tuple(x0.shape[1:])}"
        )
    pipe, net = load_mimicry(folder), load_digits_feature_net()
    return {"teacher": teacher, "pipe": pipe, "classifier": net, "x0": x0, "y": y}


def _method(ctx: dict[str, Any], cfg: DiffProtectSDConfig, m: int) -> dict[str, float | None]:
    method = METHODS[m]
    x0, y = ctx["x0"], ctx["y"]
    x_adv, cost = protect(x0, method, ctx["teacher"], cfg, 1000 * cfg.seed + 10 * m, y)
    if method == "sds-":  # the two gradients on the same draws, on the clean images
        prompts = cfg.attack_prompts(y)
        sds, full = (attack_gradient(k, ctx["teacher"], prompts) for k in ("sds-", "advdm-"))
        cost["cpu_time_ratio_sds_advdm"] = atk.cpu_time_ratio(sds, full, x0)
        prior = Prompted(ctx["teacher"], prompts)
        cost["sign_agreement_sds_advdm"] = atk.sign_agreement(
            x0, ctx["teacher"].encode, prior, cfg.seed
        )
    return {**_evaluate(ctx, cfg, x_adv, 1000 * cfg.seed + 100), **cost}


def run_measurement(
    cfg: DiffProtectSDConfig, done: dict[str, Any] | None = None, save=None
) -> dict[str, Any]:
    """Every method of ``cfg.methods`` (results in ``done`` are kept; ``save(results)`` after
    each): ``{"results": {method: metrics}, "claims": {...}}``."""
    ctx, results = _context(cfg), dict(done or {})
    for m, method in enumerate(METHODS):
        if method in cfg.methods and method not in results:
            results[method] = _method(ctx, cfg, m)
            if save is not None:
                save(results)
    return {"results": results, "claims": _claims(results)}


def _claims(r: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The paper's three comparisons (L2 to the clean image: higher = stronger protection)."""
    out: dict[str, float] = {}

    def diff(key: str, a: str, b: str) -> None:
        if a in r and b in r and r[a][key] is not None and r[b][key] is not None:
            out[f"{key}:{a}-{b}"] = r[a][key] - r[b][key]

    for key in ("l2_mean", "acc_mean"):
        for a, b in (("sds+", "advdm+"), ("sds-", "advdm-"), ("sds-", "sds+"), ("sds-", "none")):
            diff(key, a, b)
    if "sds-" in r and "cpu_time_ratio_sds_advdm" in r["sds-"]:
        out["time_ratio_sds_advdm"] = r["sds-"]["cpu_time_ratio_sds_advdm"]
        out["sign_agreement_sds_advdm"] = r["sds-"]["sign_agreement_sds_advdm"]
    for a, b in (("sds-", "advdm-"), ("sds+", "advdm+")):
        if a in r and b in r:
            out[f"memory_ratio_{a}/{b}"] = r[a]["saved_kib_per_step"] / r[b]["saved_kib_per_step"]
    for m in ("random", "sds-", "advdm+"):
        if m in r:
            out[f"dz/dx:{m}"] = r[m]["dz_rel"] / max(r[m]["dx_rel"], 1e-12)
    return out


def procedure(cfg: DiffProtectSDConfig, out: Path, resume: bool) -> dict[str, Any]:
    """``run_measurement`` with the results saved after each method (``out/partial.json``)."""
    path, config = out / "partial.json", to_dict(cfg)
    done = None
    if resume and path.is_file():
        import json

        state = json.loads(path.read_text())
        done = state["results"] if state.get("config") == config else None
    return run_measurement(
        cfg, done, lambda res: atomic_write_json(path, {"config": config, "results": res})
    )


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def report(cfg: DiffProtectSDConfig, metrics: dict[str, Any]) -> str:
    """Markdown: one row per method, then the claims."""
    res, strengths = metrics["results"], [f"{s:g}" for s in cfg.strengths]
    head = ["method", "pert. PSNR", "dz/dx", *(f"L2@{s}" for s in strengths), "PSNR (mean)"]
    head += ["acc (mean)", "CPU ms/step", "saved KiB/step"]
    lines = [
        "# Diff-Protect against img2img mimicry of a latent pipeline",
        "",
        f"eps = {cfg.epsilon:.4f}, step {cfg.step_size:.4f}, {cfg.steps} PGD steps, "
        f"{cfg.n_images} held-out digits; img2img at guidance {cfg.guidance:g}, "
        f"{cfg.inference_steps} DDIM steps x strength. L2/PSNR of the output to the clean image.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in cfg.methods:
        r = res[m]
        gain = r["dz_rel"] / r["dx_rel"] if r["dx_rel"] > 0 else None
        row = [m, _fmt(r["pert_psnr"], ".1f"), _fmt(gain, ".2f")]
        row += [_fmt(r[f"l2@{s}"], ".3f") for s in strengths]
        row += [_fmt(r["psnr_mean"], ".2f"), _fmt(r["acc_mean"], ".3f")]
        row += [_fmt(1e3 * r.get("s_per_step", math.nan), ".1f")]
        row += [_fmt(r.get("saved_kib_per_step", math.nan), ".0f")]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Claims", ""]
    lines += [f"- {k}: {_fmt(v, '.3f')}" for k, v in metrics["claims"].items()]
    return "\n".join(lines) + "\n"
