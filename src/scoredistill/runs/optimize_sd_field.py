"""The voxel field as the source of ``scoredistill optimize --teacher SD_DIR`` (text-to-3-D).

DreamFusion's loop with a latent diffusers prior: each step draws ``batch_size`` cameras on a ring
(azimuth uniform on [0, 360), one elevation), renders the field (``scene.field3d.VoxelField``,
grey levels when the VAE takes one channel), encodes the renders through the VAE (the posterior
mean, differentiable: Latent-NeRF / threestudio's ``encode_images`` on RGB renders), and hands
the latents to the objective, so its update flows back through the encoder and the renderer.

Prompts (DreamFusion §3.2, "view-dependent prompting"; threestudio ``prompt_processors/base.py``:
``"<prompt>, front view"`` within 45 deg of the front, ``"back view"`` within 45 deg of the
back, else ``"side view"``; the overhead view needs elevations above 60 deg and is not drawn here)
are rows 1-3 of the teacher's prompt table (line ``prompt_index`` of ``prompts_2`` /
``prompts_3``, diffusers' ``prompt_2`` / ``prompt_3``, gets the same suffixes: ``field_streams``);
row 0 is the prompt without a view, which the critic sees (threestudio's VSD: "not using
view-dependent prompting in LoRA"). The critic of VSD and ESD is
``sources.camera_lora.CameraLoraCritic``: LoRA on the teacher's UNet plus a camera embedding,
conditioned on ``PromptCamera(row 0, azimuth)``.

Evaluation renders ``eval_views`` cameras evenly around the ring. With the bundled digits teacher
each render is scored by the digits classifier against the prompt's digit (``class_acc``, and
per view sector); ``view_spread`` is the RMS pixel distance between renders of different
cameras (0: the same picture from everywhere), the diversity that ESD's entropy term is about.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..scene.cameras import DEFAULT_FOV, DEFAULT_RADIUS, Camera
from ..teachers.views import prompt_for_azimuth
from ..train.optimize import Batch
from .optimize_build import accepts

__all__ = ["VIEW_SUFFIXES", "field_prompts", "field_streams", "field_task", "ring_renders"]

VIEW_SUFFIXES = ("front view", "side view", "back view")  # prompt_for_azimuth's 0, 1, 2


def field_prompts(prompts: list[str], cfg: Any) -> list[str]:
    """The teacher's prompt table for a field: the chosen prompt, then its three views."""
    if cfg.prompt_index >= len(prompts):
        from ..config import ConfigError

        raise ConfigError(
            f"config key 'source.prompt_index': {cfg.prompt_index}; the prompt file has "
            f"{len(prompts)} prompts (valid: 0..{len(prompts) - 1})"
        )
    base = prompts[cfg.prompt_index]
    return [base, *(f"{base}, {v}" if cfg.view_prompts else base for v in VIEW_SUFFIXES)]


def field_streams(streams: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """``runs.sd_prompts.prompt_streams``' keywords for the field's prompt table: each
    per-encoder list (``prompt_2``, ``prompt_3``, line-paired with the prompts) rewritten as
    ``field_prompts`` rewrites the prompts (the chosen line, then it with the three view
    suffixes); the negatives (strings) unchanged."""
    return {k: field_prompts(v, cfg) if isinstance(v, list) else v for k, v in streams.items()}


def _cameras(az: Tensor, elevation: float) -> list[Camera]:
    return [Camera(float(a), elevation, DEFAULT_RADIUS, DEFAULT_FOV) for a in az]


def _to_teacher_image(rgb: Tensor, channels: int) -> Tensor:
    """``(B, 3, H, W)`` renders in [-1, 1] as the VAE's input: grey levels for one channel."""
    return rgb.mean(dim=1, keepdim=True) if channels == 1 else rgb


def render(field_: Any, teacher: Any, az: Tensor, elevation: float, rng=None) -> Tensor:
    """Renders ``(B, C, H, W)`` in [-1, 1] at azimuths ``az`` (degrees), the VAE's image shape."""
    rgb = field_(_cameras(az, elevation), rng=rng)
    return _to_teacher_image(rgb, teacher.image_shape[0])


def ring_renders(field_: Any, teacher: Any, cfg: Any) -> tuple[Tensor, Tensor]:
    """``(images, azimuths)``: ``eval_views`` renders evenly around the ring, without gradients."""
    az = 360.0 * torch.arange(cfg.eval_views, dtype=torch.float64) / cfg.eval_views
    with torch.no_grad():
        return render(field_, teacher, az, cfg.elevation), az


def _view_spread(images: Tensor) -> float:
    """RMS per-pixel distance between renders of different cameras, averaged over pairs."""
    flat = images.flatten(1).double()
    d2 = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    n = flat.shape[0]
    return float((d2.sum() / (n * (n - 1))).sqrt()) if n > 1 else 0.0


def field_metrics(field_: Any, teacher: Any, cfg: Any, digits: Tensor | None):
    """Scores of the ring renders (module docstring)."""
    images, az = ring_renders(field_, teacher, cfg.source)
    views = prompt_for_azimuth(az)
    out: dict[str, Any] = {"n_views": len(az), "view_spread": _view_spread(images)}
    if digits is None:
        return out
    from ..eval.features import load_digits_feature_net

    pred = load_digits_feature_net().logits(images.clamp(-1, 1)).argmax(dim=1)
    hit = (pred == digits[1 + views]).double()
    out["class_acc"] = float(hit.mean())
    for k, name in enumerate(("front", "side", "back")):
        out[f"class_acc_{name}"] = float(hit[views == k].mean())
    out["pred_digits"] = pred.tolist()
    return out


def field_task(cfg: Any, objective: Any, teacher: Any, critic: Any) -> dict[str, Any]:
    """The field, ``draw`` and ``evaluate`` (``runs.optimize_sd.build_task``'s contract)."""
    from ..scene.field3d import VoxelField
    from ..sources.camera_lora import PromptCamera
    from .sd import scorable_digits

    s = cfg.source
    field_ = VoxelField(
        s.resolution, image_size=teacher.image_shape[1], n_samples=s.n_samples,
        background=s.background, init_density=s.init_density, init_noise=s.init_noise,
        rng=torch.Generator().manual_seed(cfg.train.seed),
    )  # fmt: skip
    camera = critic is not None  # VSD/ESD: the critic sees the prompt and the camera
    pixels = accepts(objective, "pixels")  # HiFA's image-space term takes the renders

    def draw(rng: torch.Generator) -> Batch:
        az = 360.0 * torch.rand(cfg.train.batch_size, generator=rng, dtype=torch.float64)
        images = render(field_, teacher, az, s.elevation, rng)
        z = teacher.encode(images)
        views = 1 + prompt_for_azimuth(az)  # prompt-table rows 1-3
        pc = PromptCamera(torch.zeros_like(views), az.float()) if camera else None
        extra = {"camera": pc} if camera else {}
        return Batch(z, views, pc, {**extra, "pixels": images} if pixels else extra)

    digits = scorable_digits(teacher)
    evaluate = lambda f: field_metrics(f, teacher, cfg, digits)  # noqa: E731

    def pictures() -> tuple[Tensor, Tensor, dict[str, Any]]:
        images, az = ring_renders(field_, teacher, s)
        views = 1 + prompt_for_azimuth(az)
        return images, views, {"azimuth": az.numpy(), "labels": views.numpy()}

    prior = (lambda: s.tv_weight * field_.total_variation()) if s.tv_weight > 0 else None
    return {"source": field_, "critic": critic, "draw": draw, "evaluate": evaluate,
            "pictures": pictures, "what": f"a voxel field, {s.eval_views} ring views",
            "prior": prior}  # fmt: skip
