"""Students and critics made from a diffusers teacher's weights (DMD, DMD2, SiD initialisation).

``DiffusersGenerator``: a trainable deep copy of the teacher's network used as a K-step generator
(K = 1: one-step). On a VP-table teacher the student times are native integer timesteps
``k_1 > ... > k_K``, LCM's grid (``LCMScheduler`` with ``original_inference_steps = K``) on the
table cut at the top timestep ``k_top`` (default ``N - 1``, DMD2's 999)::

    N' = K * ((k_top + 1) // K),   k_j = N' - 1 - (j - 1) N' / K
    x   = D_θ(z, k_1, c),                  z ~ N(0, I), the stock pipelines' prior x_T
    x   = D_θ(alpha_j x + sigma_j eps_j, k_j, c),   j = 2..K,  eps_j ~ N(0, I) fresh

(native coordinates; DMD2 feeds pure noise at t = 999 the same way, reference note b2). This is
exactly what ``ConsistencyModelPipeline`` + ``LCMScheduler`` compute, so ``export.export_pipeline``
writes a stock folder that reproduces the student (``export.py``). ``forward(z, c, rng=, k=)`` is
DMD2's backward simulation, as ``sources.generators.FewStepGenerator``. ``sigma_init`` (SiD's VE
level, e.g. 2.5) picks ``k_top`` as the integer timestep nearest ``sigma/alpha = sigma_init``; the
input stays the stock prior ``z``. That departs from ``TeacherInitGenerator``'s ``sigma_1 z`` and
SiD-LSG's ``sqrt(1 - abar_k) z`` (note b5), which no stock pipeline draws (LCM's
``init_noise_sigma`` is 1): at k = 999 the two differ by 2e-5, at sigma_init = 2.5 the initial
input is 8 % larger than SiD's (the marginal's std, ``sqrt(alpha² var + sigma²)``, lies between).
On a flow or EDM teacher the times and the prior are those of the stock scheduler whose loop is
the student's rollout (``export_families.stock_grid``: flow any K, EDM K = 1); elsewhere (EDM
K > 1) ``default_student_times`` and ``x = D_θ(sigma_1 z, t_1)`` (not exportable).

``make_diffusers_critic``: a trainable copy of the teacher as the fake-score denoiser. Its
optional GAN logit head reads the copy's bottleneck (``mid_block``, or a DiT's middle block),
captured by a forward hook that stops the forward there. This is DMD2's choice (the classifier
on the *fake* UNet's bottleneck, ``tianweiy/DMD2:main/edm/edm_guidance.py``), not FastGen's
(frozen *teacher* features): the head then shares the critic's trunk and its critic step, needs no
second teacher forward, works the same for the library's MLP critics (``NeuralDenoiser``'s head)
and keeps the frozen teacher out of every backward pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..export_families import stock_grid
from ..schedules import t_from_log_snr
from ..teachers.diffusers import DiffusersTeacher
from .generators import default_student_times, draw_latent

__all__ = [
    "ATTENTION",
    "DiffusersCritic",
    "DiffusersGenerator",
    "lcm_timesteps",
    "make_diffusers_critic",
    "set_attention",
]

ATTENTION = ("sdpa", "eager")


def set_attention(model: nn.Module, kind: str) -> int:
    """Route every diffusers ``Attention`` block of ``model`` through ``kind``: ``"sdpa"``
    (``AttnProcessor2_0``: ``torch.nn.functional.scaled_dot_product_attention``, the fused
    kernels) or ``"eager"`` (``AttnProcessor``: explicit softmax(QK^T)V, for debugging or
    backends without SDPA). Returns how many blocks were set. Diffusers' own
    ``set_attn_processor`` exists on ``UNet2DConditionModel`` but not on ``UNet2DModel``, so the
    blocks are visited directly."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    if kind not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {kind!r}")
    blocks = [m for m in model.modules() if isinstance(m, Attention)]
    for block in blocks:
        block.set_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())
    return len(blocks)


def lcm_timesteps(top: int, steps: int) -> tuple[int, ...]:
    """``LCMScheduler(num_train_timesteps=N', original_inference_steps=K).set_timesteps(K)`` with
    ``N' = K ((top + 1) // K)``: K decreasing integer timesteps, the first ``N' - 1 <= top``."""
    stride = (top + 1) // max(steps, 1)
    if steps < 1 or stride < 2:
        raise ValueError(f"need 1 <= steps <= (top + 1) / 2; got steps={steps}, top={top}")
    return tuple(steps * stride - 1 - j * stride for j in range(steps))


SHARED_PARTS = ("vae", "text_encoder")  # a latent teacher's frozen encoders: never copied


def _copy(teacher: DiffusersTeacher, checkpointing: bool) -> DiffusersTeacher:
    """A trainable deep copy (float32 master weights, train mode, ``requires_grad``) of the
    teacher's network, which may be held in bf16/fp16 (note §5: trainable parameters stay fp32).
    A latent teacher's VAE and text encoder are shared, outside the copy's module tree: frozen,
    not in its parameters or checkpoints."""
    shared = {n: m for n, m in teacher.named_children() if n in SHARED_PARTS}
    net = copy.deepcopy(teacher, memo={id(m): m for m in shared.values()})
    for name, module in shared.items():
        del net._modules[name]
        net.__dict__[name] = module
    net = net.float().requires_grad_(True).train()
    if checkpointing:
        if not getattr(net.model, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(net.model).__name__} does not support gradient checkpointing")
        net.model.enable_gradient_checkpointing()
    return net


def _player(teacher: DiffusersTeacher, checkpointing: bool, denoiser: nn.Module | None):
    """The player's denoiser: ``denoiser`` when given (a LoRA view on the teacher's base,
    ``sources.lora``), else a full trainable copy."""
    if denoiser is None:
        return _copy(teacher, checkpointing)
    if checkpointing:
        raise ValueError(
            "gradient checkpointing is not available with LoRA players on a shared base: the "
            "recomputation would run whichever adapter is on; set student.gradient_checkpointing"
            "=false"
        )
    return denoiser


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class DiffusersGenerator(nn.Module):
    """K-step student ``x = G_θ(z, c)``: ``z: (B, dim)``, ``cond: (B,)`` or None -> ``(B, dim)``.

    ``steps`` = K; ``init_timestep`` (VP teachers) the top native timestep (default ``N - 1``);
    ``sigma_init`` the VE level that picks it instead. ``timesteps`` holds the native integer
    timesteps (None for non-VP teachers), ``ts`` the same times on ``teacher.schedule``.
    ``grid`` (non-VP teachers): ``(times, prior scale)`` of a stock scheduler other than the
    teacher's own (``export_sd3``: a flow student started below the top level).
    """

    def __init__(
        self,
        teacher: DiffusersTeacher,
        *,
        steps: int = 1,
        init_timestep: int | None = None,
        sigma_init: float | None = None,
        gradient_checkpointing: bool = False,
        denoiser: nn.Module | None = None,
        grid: tuple[Sequence[float], float] | None = None,
    ) -> None:
        super().__init__()
        if init_timestep is not None and sigma_init is not None:
            raise ValueError("give init_timestep or sigma_init, not both")
        if sigma_init is not None and not sigma_init > 0:
            raise ValueError(f"sigma_init must be > 0 (a VE level sigma/alpha), got {sigma_init}")
        self.denoiser = _player(teacher, gradient_checkpointing, denoiser)
        self.dim, self.num_classes, self.shape = teacher.dim, teacher.num_classes, teacher.shape
        schedule = teacher.schedule
        self.timesteps: tuple[int, ...] | None = None
        stock: tuple[list[float], float] | None = None
        if teacher.family == "vp":
            if grid is not None:
                raise ValueError(
                    "grid is for flow and EDM teachers; a VP student takes init_timestep"
                )
            lam = teacher.native_schedule._lam
            if sigma_init is not None:  # sigma/alpha = exp(-lambda/2) nearest sigma_init
                init_timestep = int((-lam / 2 - math.log(sigma_init)).abs().argmin())
            top = len(lam) - 1 if init_timestep is None else int(init_timestep)
            if not 0 < top < len(lam):
                raise ValueError(f"init_timestep must lie in [1, {len(lam) - 1}], got {top}")
            self.timesteps = lcm_timesteps(top, steps)
            ts = [self._native_t(teacher, k) for k in self.timesteps]
        elif init_timestep is not None or sigma_init is not None:
            raise ValueError(
                f"init_timestep/sigma_init need a VP-table teacher, not {teacher.family!r}"
            )
        else:  # flow, EDM: the exported scheduler's grid and prior, else the sampler's grid
            stock = stock_grid(teacher, steps) if grid is None else (list(grid[0]), grid[1])
            ts = list(default_student_times(schedule, steps)) if stock is None else stock[0]
        self.ts = tuple(ts)
        a, s = schedule.alpha_sigma(torch.tensor(self.ts, dtype=torch.float64))
        self.alphas, self.sigmas = tuple(a.tolist()), tuple(s.tolist())
        # native prior z (VP: x_t / sqrt(a² + s²) = z), the stock scheduler's (flow, EDM K = 1)
        # or the library's sigma_1 z
        vp = self.timesteps is not None
        self.init_scale = math.hypot(self.alphas[0], self.sigmas[0]) if vp else self.sigmas[0]
        if stock is not None:
            self.init_scale = stock[1]

    @staticmethod
    def _native_t(teacher: DiffusersTeacher, k: int) -> float:
        """The time of ``teacher.schedule`` at native timestep ``k`` (equal log-SNR)."""
        u = torch.tensor(k / (teacher.native_schedule.n - 1), dtype=torch.float64)
        if teacher.schedule is teacher.native_schedule:
            return float(u)
        a, s = teacher.native_schedule.alpha_sigma(u)
        return float(t_from_log_snr(teacher.schedule, 2 * (a.log() - s.log())))

    @property
    def nfe(self) -> int:
        return len(self.ts)

    @property
    def steps(self) -> int:
        return len(self.ts)

    @property
    def schedule(self) -> Any:
        return self.denoiser.schedule

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim) ~ N(0, I)`` on the parameters' device (the same numbers as a diffusers
        pipeline's ``randn((n, C, H, W), generator=rng)``)."""
        return draw_latent(n, self.dim, rng, dtype, _device(self))

    def draw_step(self, rng: torch.Generator | None = None) -> int:
        """A step index ``k`` uniform in ``1..K`` (draw it identically on every rank)."""
        where = rng.device if rng is not None else "cpu"
        return int(torch.randint(1, self.nfe + 1, (), generator=rng, device=where))

    def _t(self, j: int, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.ts[j - 1], dtype=torch.float64, device=x.device)

    def forward(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        rng: torch.Generator | None = None,
        k: int | None = None,
    ) -> Tensor:
        """``k=None``: the K-step rollout; ``k`` in ``1..K``: backward simulation, only the k-th
        call records gradients. ``rng`` draws the re-noising noise after ``z``."""
        last = self.nfe if k is None else int(k)
        if not 1 <= last <= self.nfe:
            raise ValueError(f"k must lie in 1..{self.nfe} (the number of steps), got {k}")
        x_t = self.init_scale * z.reshape(z.shape[0], self.dim)
        with torch.set_grad_enabled(torch.is_grad_enabled() and k is None):
            for j in range(1, last):
                x = self.denoiser.denoise(x_t, self._t(j, x_t), cond)
                eps = draw_latent(x.shape[0], self.dim, rng, x.dtype, x.device)
                x_t = self.alphas[j] * x + self.sigmas[j] * eps
        return self.denoiser.denoise(x_t, self._t(last, x_t), cond)

    def backward_simulation(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        rng: torch.Generator | None,
        k: int | None = None,
    ) -> tuple[Tensor, int]:
        """DMD2's training mode: ``(x: (B, dim), k)`` with ``k ~ U{1..K}`` from ``rng`` (or the
        given ``k``), gradient only through the k-th call (single process; under DDP draw ``k``
        once for all ranks and call ``forward``)."""
        k = self.draw_step(rng) if k is None else k
        return self(z, cond, rng=rng, k=k), k

    def extra_repr(self) -> str:
        return (
            f"nfe={self.nfe}, timesteps={self.timesteps}, ts={tuple(round(t, 4) for t in self.ts)}"
        )


class _Stop(Exception):
    """Raised by the feature hook: the rest of the network is not needed for the logit."""


class _LogitHead(nn.Module):
    """Features ``(B, C, h, w)`` (conv) or ``(B, N, C)`` (tokens) -> logit ``(B,)``: norm, SiLU,
    spatial/token mean, ``Linear(C, width) -> SiLU -> Linear(width, 1)``."""

    def __init__(self, channels: int, tokens: bool, width: int) -> None:
        super().__init__()
        groups = math.gcd(channels, 32)
        self.tokens = tokens
        self.norm = nn.LayerNorm(channels) if tokens else nn.GroupNorm(groups, channels)
        self.mlp = nn.Sequential(nn.Linear(channels, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, h: Tensor) -> Tensor:
        pooled = F.silu(self.norm(h)).mean(1 if self.tokens else (2, 3))
        return self.mlp(pooled).reshape(-1)


def _bottleneck(model: nn.Module) -> nn.Module:
    if getattr(model, "mid_block", None) is not None:
        return model.mid_block
    blocks = getattr(model, "transformer_blocks", None)
    if blocks:
        return blocks[len(blocks) // 2]
    raise TypeError(f"{type(model).__name__} has no mid_block or transformer_blocks for a head")


class DiffusersCritic(nn.Module):
    """The fake-score critic: ``denoise(x_t, t, c)`` of a trainable teacher copy, and
    ``logit(x_t, t, c) -> (B,)`` from the optional head on its bottleneck (module docstring).
    ``forward(x_t, t, c, output="denoise" | "logit")`` routes both (DDP wraps ``forward``)."""

    def __init__(
        self,
        teacher: DiffusersTeacher,
        *,
        gradient_checkpointing: bool = False,
        denoiser: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = _player(teacher, gradient_checkpointing, denoiser)
        self.dim, self.num_classes, self.shape = teacher.dim, teacher.num_classes, teacher.shape
        self.head: nn.Module | None = None

    @property
    def schedule(self) -> Any:
        return self.denoiser.schedule

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D_fake(x_t, t, cond)`` with ``x_t``'s shape."""
        return self.denoiser.denoise(x_t, t, cond)

    def features(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The bottleneck activations ``(B, C, h, w)`` (UNet mid-block) or ``(B, N, C)`` (DiT
        tokens) at ``(x_t, t, cond)``; the network's forward stops there."""
        found: list[Tensor] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            found.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = _bottleneck(self.denoiser.model).register_forward_hook(hook)
        try:
            self.denoiser.denoise(x_t, t, cond)
        except _Stop:
            pass
        finally:
            handle.remove()
        return found[0]

    def attach_logit_head(self, width: int = 256) -> DiffusersCritic:
        """Add the discriminator head, sized by one probe of the bottleneck."""
        s = self.schedule
        t = torch.full((1,), (s.t_min + s.t_max) / 2, dtype=torch.float64)
        x = torch.zeros(1, self.dim, device=_device(self))
        label = None if self.num_classes == 0 else torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            h = self.features(x, t, label)
        self.head = _LogitHead(h.shape[-1] if h.dim() == 3 else h.shape[1], h.dim() == 3, width)
        self.head.to(h.device)  # float32 whatever the trunk's dtype: logit() upcasts features
        return self

    def logit(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The discriminator's logit ``(B,)`` (real vs generated) at ``x_t``, time ``t``."""
        if self.head is None:
            raise RuntimeError("this critic has no logit head; call attach_logit_head() first")
        return self.head(self.features(x_t, t, cond).float())

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, output: str = "denoise"
    ) -> Tensor:
        if output not in ("denoise", "logit"):
            raise ValueError(f"output must be 'denoise' or 'logit', got {output!r}")
        return self.logit(x_t, t, cond) if output == "logit" else self.denoise(x_t, t, cond)


def make_diffusers_critic(
    teacher: DiffusersTeacher,
    *,
    logit_head: bool = False,
    head_width: int = 256,
    gradient_checkpointing: bool = False,
    denoiser: nn.Module | None = None,
) -> DiffusersCritic:
    """A trainable copy of ``teacher`` (or ``denoiser``, a LoRA view) as the critic (equal to
    the teacher at init), with DMD2's logit head on its bottleneck when ``logit_head``."""
    critic = DiffusersCritic(
        teacher, gradient_checkpointing=gradient_checkpointing, denoiser=denoiser
    )
    return critic.attach_logit_head(head_width) if logit_head else critic
