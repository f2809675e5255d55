"""LCM's consistency function on a trainable copy of a diffusers VP teacher (Luo et al. 2023,
"Latent Consistency Models", eq. 9-10; the scalings of diffusers ``LCMScheduler.
get_scalings_for_boundary_condition_discrete`` and ``train_lcm_distill_sd_wds.py``'s
``scalings_for_boundary_conditions``)::

    f_theta(x_k, k) = c_skip(k) x_k + c_out(k) D_theta(x_k, k)
    c_skip = sigma_d^2 / ((s k)^2 + sigma_d^2),   c_out = s k / sqrt((s k)^2 + sigma_d^2)

``k`` is the native (integer on the training grid) timestep, ``s = timestep_scaling`` (LCM: 10),
``sigma_d = 0.5``, ``x_k`` the native sample (the teacher's own table: ``alpha² + sigma² = 1``) and
``D_theta`` the copy's denoiser: the teacher's prediction type converted to x0 and clipped as its
scheduler clips, which is what ``LCMScheduler.step`` computes from the same network output. So
``f(x, 0) = x`` (LCM's boundary at ``k = 0``) and the network needs no change to be exported.

``sample`` is ``LCMScheduler``'s multistep loop (Song et al. 2023, Alg. 1): ``x = z`` (the
pipelines' prior, ``init_noise_sigma = 1``), ``x0 = f(x, k_j)``, then before the last step
``x = sqrt(abar_{k_{j+1}}) x0 + sqrt(1 - abar) eps`` with fresh ``eps``; the timesteps are
``lcm_inference_timesteps`` (``LCMScheduler.set_timesteps``), so ``export_consistency.
export_consistency_pipeline`` writes a stock folder that reproduces it for the same generator.

``TrigFlowLCM`` is sCM's view of the same consistency function (Lu & Song 2024, eq. 9 and
Sec. 2): at the TrigFlow angle ``theta`` of the VE level ``s = sigma_d tan(theta)``,

    f(x_hat, theta) = LCM's f(x_k, k),    x_k = sqrt(abar_k) x_hat / cos(theta),   k = k(s),
    F(x_hat, theta) = (cos(theta) x_hat - f(x_hat, theta)) / (sigma_d sin(theta)),

so ``cos x_hat - sin sigma_d F = f`` holds by construction and the sCM student *is* the LCM
network: ``export_consistency_pipeline`` writes it unchanged. ``k(s)`` is the teacher table's
fractional index at log-SNR ``-2 log s`` (``index_from_log_snr``, piecewise linear, so a
forward-mode JVP carries ``d/dtheta`` through the time input). The angles are restricted to the
table's range (``theta_range``): an eps-network is undefined outside what it was trained on; and
below the sampler grid's top timestep, so that a grid topped below k = 999 (``original_steps`` 47
at stride 20 tops at k = 939) is also the top level sCM trains (``objectives/cd.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..schedules import log_snr
from ..teachers.diffusers import DiffusersTeacher
from .diffusers import _copy
from .generators import draw_latent

__all__ = [
    "SIGMA_DATA",
    "LCMConsistency",
    "LCMRollout",
    "TrigFlowLCM",
    "forward_ad_attention",
    "lcm_inference_timesteps",
]

SIGMA_DATA = 0.5  # LCMScheduler's fixed sigma_data of the boundary scalings


def lcm_inference_timesteps(n_train: int, original_steps: int, steps: int) -> tuple[int, ...]:
    """``LCMScheduler(num_train_timesteps=n_train, original_inference_steps=original_steps)
    .set_timesteps(steps)``: ``steps`` indices spread evenly (floor of ``linspace(0, m, steps,
    endpoint=False)``) over the ``m = original_steps`` training timesteps ``j (n_train // m) - 1``,
    largest first (diffusers 0.42 ``scheduling_lcm.py``)."""
    if not 1 <= steps <= original_steps <= n_train:
        raise ValueError(
            f"need 1 <= steps <= original_steps <= n_train; got {steps}, {original_steps}, {n_train}"
        )
    stride = n_train // original_steps
    origin = [j * stride - 1 for j in range(original_steps, 0, -1)]
    return tuple(origin[math.floor(i * original_steps / steps)] for i in range(steps))


class LCMConsistency(nn.Module):
    """``forward(x_t, t, cond) -> (B, dim)``: ``f_theta`` at library time ``t`` of the teacher's
    native table (``t = k / (N - 1)``); ``sample(z, cond, steps=, rng=)``: the LCM sampler.
    ``original_steps``: the training grid's number of DDIM timesteps ``m`` (LCM's 50 of 1000);
    ``stride``: their spacing (0: ``N // m``, ``LCMScheduler``'s). The grid is ``j stride - 1``,
    ``j = 1..m``, LCMScheduler's on the table cut after ``n_table = m stride`` entries: with
    ``m = 47``, ``stride = 20`` it tops at k = 939, not 999 (``objectives/cd.py``)."""

    def __init__(
        self,
        teacher: DiffusersTeacher,
        *,
        original_steps: int = 50,
        stride: int = 0,
        timestep_scaling: float = 10.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if teacher.family != "vp" or teacher.schedule is not teacher.native_schedule:
            raise ValueError(
                "LCM's consistency function needs a VP-table teacher on its own schedule "
                f"(family 'vp', schedule=None); got family {teacher.family!r}"
            )
        if teacher.continuous:
            raise ValueError("a continuous-timestep teacher has no integer LCM grid")
        self.denoiser = _copy(teacher, gradient_checkpointing)
        self.n_train = teacher.native_schedule.n
        self.original_steps, self.timestep_scaling = int(original_steps), float(timestep_scaling)
        lcm_inference_timesteps(self.n_train, self.original_steps, 1)  # checks the sizes
        self.n_table = self.original_steps * (int(stride) or self.n_train // self.original_steps)
        if self.n_table > self.n_train:
            raise ValueError(
                f"a grid of {original_steps} timesteps {stride} apart exceeds the teacher's "
                f"{self.n_train}"
            )
        self.dim, self.num_classes, self.shape = teacher.dim, teacher.num_classes, teacher.shape

    @property
    def schedule(self):
        return self.denoiser.schedule

    def scalings(self, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_skip, c_out)`` at native timesteps ``k: (B,)`` (float64)."""
        scaled = self.timestep_scaling * k.to(torch.float64)
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        return c_skip, scaled / (scaled**2 + SIGMA_DATA**2).sqrt()

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t64 = torch.as_tensor(t, device=x_t.device).to(torch.float64).expand(x_t.shape[0])
        k = t64 * (self.n_train - 1)
        c_skip, c_out = (c.to(x_t.dtype)[:, None] for c in self.scalings(k))
        return c_skip * x_t + c_out * self.denoiser.denoise(x_t, t64, cond)

    def timesteps(self, steps: int) -> tuple[int, ...]:
        """The ``steps`` native timesteps of the sampler (``lcm_inference_timesteps``)."""
        return lcm_inference_timesteps(self.n_table, self.original_steps, steps)

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """``z: (n, dim) ~ N(0, I)``: a pipeline's ``randn((n, C, H, W), generator)``."""
        device = next(self.parameters()).device
        return draw_latent(n, self.dim, rng, torch.float32, device)

    def sample(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        steps: int = 1,
        rng: torch.Generator | None = None,
    ) -> Tensor:
        """``steps``-step samples ``(B, dim)`` from ``z: (B, dim)``; ``rng`` draws the re-noising
        noise after ``z`` (the pipeline's order)."""
        ks = self.timesteps(steps)
        abar = self.denoiser.native_schedule.alphas_cumprod
        x = z.reshape(z.shape[0], self.dim)
        for j, k in enumerate(ks):
            t = torch.full((x.shape[0],), k / (self.n_train - 1), dtype=torch.float64)
            x0 = self(x, t.to(x.device), cond)
            if j + 1 == len(ks):
                return x0
            a = abar[ks[j + 1]]
            eps = draw_latent(x.shape[0], self.dim, rng, x0.dtype, x0.device)
            x = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        raise AssertionError("unreachable: steps >= 1")


class LCMRollout(nn.Module):
    """A ``steps``-step sampler of an ``LCMConsistency`` with the generator interface the run
    helpers use (``sample_latent``, ``forward(z, cond, rng=)``, ``nfe``)."""

    def __init__(self, student: LCMConsistency, steps: int) -> None:
        super().__init__()
        self.student, self.steps = student, int(steps)
        student.timesteps(self.steps)  # checks the step count

    @property
    def nfe(self) -> int:
        return self.steps

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        return self.student.sample_latent(n, rng)

    def forward(
        self, z: Tensor, cond: Tensor | None = None, *, rng: torch.Generator | None = None
    ) -> Tensor:
        return self.student.sample(z, cond, steps=self.steps, rng=rng)


# Fourier frequencies of the log-variance head's features of c = log(s) / 4 (EDM's c_noise;
# EDM2 puts a Fourier embedding and one linear layer on the noise level for u)
_LOGVAR_FREQS = math.pi * 2.0 ** torch.arange(-2, 4, dtype=torch.float32)


def _contiguous(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return output.contiguous()


def forward_ad_attention(model: nn.Module) -> int:
    """Make ``model`` (a diffusers network) differentiable in forward mode: every ``Attention``
    block runs the eager processor and returns a contiguous output. Torch's SDPA has no
    forward-AD rule on CPU, and group norm's rule ``view``s the non-contiguous tangent the eager
    attention returns (``docs/consistency.md``, "sCM on a diffusers UNet"); a forward hook
    (public ``nn.Module`` API, diffusers' code untouched) returns ``output.contiguous()``. The
    values are unchanged. Returns the number of blocks."""
    from diffusers.models.attention_processor import Attention

    from .diffusers import set_attention

    count = set_attention(model, "eager")
    for block in model.modules():
        if isinstance(block, Attention):
            block.register_forward_hook(_contiguous)
    return count


class TrigFlowLCM(nn.Module):
    """sCM's ``F``, ``logvar`` and ``f`` on an ``LCMConsistency`` (module docstring); samples,
    timesteps and export are the LCM network's. ``x_hat: (B, dim)``, ``theta: (B,)`` radians."""

    def __init__(self, consistency: LCMConsistency, sigma_data: float = 0.5) -> None:
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.f, self.sigma_data = consistency, float(sigma_data)
        self.dim, self.num_classes, self.shape = (
            consistency.dim,
            consistency.num_classes,
            (consistency.shape),
        )
        lo, hi = consistency.denoiser.log_snr_range  # log-SNR = -2 log s
        top = torch.tensor([consistency.timesteps(1)[0] / (consistency.n_train - 1)])
        lo = max(lo, float(log_snr(consistency.schedule, top.double())))  # a topped grid's top
        self.theta_range = tuple(math.atan(math.exp(-lam / 2) / sigma_data) for lam in (hi, lo))
        self.logvar_head = nn.Linear(1 + 2 * _LOGVAR_FREQS.numel(), 1)
        nn.init.zeros_(self.logvar_head.weight)  # u = 0 at the start (sCM's adaptive weight)
        nn.init.zeros_(self.logvar_head.bias)

    def _native(self, x_hat: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_k, t)``: the native sample and library time ``k / (N - 1)`` at ``theta``."""
        th = theta.to(torch.float64)
        lam = -2 * torch.log(self.sigma_data * torch.tan(th))
        k = self.f.denoiser.native_schedule.index_from_log_snr(lam)
        scale = torch.sigmoid(lam).sqrt() / torch.cos(th)
        return x_hat * scale[:, None].to(x_hat.dtype), k / (self.f.n_train - 1)

    def forward(self, x_hat: Tensor, theta: Tensor, cond: Tensor | None = None) -> Tensor:
        x_k, t = self._native(x_hat, theta)
        return self.f(x_k, t, cond)

    def F(self, x_hat: Tensor, theta: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(cos(theta) x_hat - f) / (sigma_d sin(theta))``, ``(B, dim)``."""
        cos, sin = (c(theta)[:, None].to(x_hat.dtype) for c in (torch.cos, torch.sin))
        return (cos * x_hat - self(x_hat, theta, cond)) / (self.sigma_data * sin)

    def logvar(self, theta: Tensor) -> Tensor:
        """The adaptive weighting's log-variance ``u(theta)``, ``(B,)``."""
        c = 0.25 * torch.log(self.sigma_data * torch.tan(theta.float())).reshape(-1, 1)
        arg = c * _LOGVAR_FREQS.to(c.device)
        return self.logvar_head(torch.cat([c, arg.sin(), arg.cos()], dim=1)).reshape(-1)

    def timesteps(self, steps: int) -> tuple[int, ...]:
        return self.f.timesteps(steps)

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        return self.f.sample_latent(n, rng)

    def sample(self, z: Tensor, cond: Tensor | None = None, *, steps: int = 1, rng=None) -> Tensor:
        """LCM's multistep sampler (the exported pipeline's)."""
        return self.f.sample(z, cond, steps=steps, rng=rng)
