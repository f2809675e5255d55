"""Generator sources: networks that turn latent noise ``z`` (and a class) into samples ``x``.

Every source is an ``nn.Module`` whose ``forward`` returns flattened samples ``(B, dim)``, so
DDP, which routes only ``forward``, syncs its gradients. Randomness comes from a
``torch.Generator`` named ``rng``; "generator" always means the network.

- ``OneStepGenerator``: ``x = G(z, c)``, a SiLU MLP (a fresh network; NFE 1).
- ``TeacherInitGenerator``: a trainable copy of a neural denoiser evaluated once at the VE noise
  level ``sigma_init``: ``x = D(sigma z, t_init, c)`` with ``sigma/alpha = sigma_init`` at
  ``t_init`` (SiD: ``sigma_init = 2.5``, reference note b4; DMD2's EDM setup: 80, note b2).
- ``FewStepGenerator``: a denoiser ``D_theta`` applied at K student times with re-noising in
  between (NFE K); ``backward_simulation`` is DMD2's few-step training mode (note b2, b20.7).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from ..schedules import Schedule, get_schedule
from ..teachers.neural import MLPDenoiserNet, NeuralDenoiser
from .student_times import _t_at_ve_level, default_student_times, times_at_ve_levels

__all__ = [
    "FewStepGenerator",
    "OneStepGenerator",
    "TeacherInitGenerator",
    "class_index",
    "default_student_times",
    "draw_latent",
    "times_at_ve_levels",
]

# Initial output std per dimension: samples start near the origin (about N(0, 0.1^2)) rather
# than at the O(1) scale of an untrained MLP, which would put early samples off the data range.
_OUT_INIT_STD = 0.1


def draw_latent(
    n: int,
    dim: int,
    rng: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``z ~ N(0, I)`` of shape ``(n, dim)``, drawn on ``rng``'s device, returned on ``device``."""
    where = rng.device if rng is not None else device
    return torch.randn(n, dim, generator=rng, dtype=dtype, device=where).to(device)


def class_index(
    cond: Tensor | None, n: int, num_classes: int, device: torch.device
) -> Tensor | None:
    """Rows of a class embedding with a null row last: ``cond: (n,)`` labels in
    ``[NULL_LABEL, num_classes)`` (or None: all null); None when ``num_classes == 0``."""
    if cond is None:
        return None if num_classes == 0 else torch.full((n,), num_classes, device=device)
    cond = cond.to(device).long().reshape(n)
    if bool(((cond < NULL_LABEL) | (cond >= num_classes)).any()):
        raise ValueError(
            f"cond labels must lie in [{NULL_LABEL}, {num_classes - 1}] "
            f"(num_classes={num_classes}); got {cond.unique().tolist()}"
        )
    if num_classes == 0:
        return None
    return torch.where(cond == NULL_LABEL, torch.full_like(cond, num_classes), cond)


def _param_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class OneStepGenerator(nn.Module):
    """``x = G(z, c)``: SiLU MLP ``(B, dim) -> (B, dim)`` with an added class embedding.

    ``depth`` hidden layers of width ``hidden``. The class embedding's last row is the null
    class (``cond`` entries equal to ``NULL_LABEL = -1``, or ``cond=None``); ``num_classes = 0``
    is unconditional. The output layer is scaled at construction so initial samples are about
    ``N(0, 0.1^2 I)`` (a small spread around the origin) centred at the origin. NFE 1.
    """

    def __init__(self, dim: int, *, hidden: int = 256, depth: int = 3, num_classes: int = 0):
        super().__init__()
        if min(dim, hidden, depth) < 1 or num_classes < 0:
            sizes = f"{dim=}, {hidden=}, {depth=}, {num_classes=}"
            raise ValueError(f"need dim, hidden, depth >= 1 and num_classes >= 0; got {sizes}")
        self.dim, self.hidden, self.depth, self.num_classes = dim, hidden, depth, num_classes
        self.nfe = 1
        self.inp = nn.Linear(dim, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.bias)
        self._rescale_output()

    @torch.no_grad()
    def _rescale_output(self) -> None:
        """Scale the output layer so samples start with std ``_OUT_INIT_STD`` per dimension.

        PyTorch's default init shrinks the activations layer by layer (output std ~0.006 at
        depth 3), so the scale is measured on 1024 latents from a fixed local seed (LSUV-style;
        the global RNG is untouched)."""
        rng = torch.Generator().manual_seed(0)
        z = torch.randn(1024, self.dim, generator=rng, dtype=self.out.weight.dtype)
        labels = None if self.class_emb is None else torch.full((1024,), NULL_LABEL)
        std = self(z, labels).std(0).mean().item()
        self.out.weight.mul_(_OUT_INIT_STD / max(std, 1e-12))
        self.out.bias.sub_(self(z, labels).mean(0))  # centre the initial samples at 0

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim) ~ N(0, I)`` on the parameters' device."""
        return draw_latent(n, self.dim, rng, dtype, _param_device(self))

    def _class_index(self, cond: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        return class_index(cond, n, self.num_classes, device)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z: (B, dim)``, ``cond: (B,)`` integer labels or None -> ``x: (B, dim)``."""
        n = z.shape[0]
        h = self.inp(z.reshape(n, self.dim))
        idx = self._class_index(cond, n, z.device)
        if idx is not None:
            h = h + self.class_emb(idx)
        for layer in self.layers:
            h = layer(F.silu(h))
        return self.out(F.silu(h))


class TeacherInitGenerator(nn.Module):
    """A trainable deep copy of a neural denoiser used as a one-step generator (SiD, DMD).

        x = D(sigma_t z, t_init, c),   z ~ N(0, I),   sigma_t / alpha_t = sigma_init at t_init

    ``t_init = schedules.t_from_log_snr(schedule, -2 log sigma_init)``. On ``alpha = 1``
    schedules (EDM) the input is exactly ``sigma_init z``; on others ``x_t / alpha`` (the VE view
    the teacher's preconditioning sees) is ``sigma_init z``, so the same weights play the same
    role on every schedule. ``sigma_init`` is fixed for training and inference (changing it
    breaks the model, note b4). The copy's parameters require grad; the teacher is untouched.

    ``latent_extra = E > 0`` draws ``E`` more latent dimensions, ``z = [z_x, z_e]``, and adds
    ``W z_e`` to the denoiser's first hidden layer (``MLPDenoiserNet``'s ``extra``), ``W``
    starting at zero: at step 0 the student is still the teacher copy. A push-forward of a
    Gaussian through a continuous map must put mass between disconnected modes; for a given
    Lipschitz constant the least it must put there is reached by a "simplicial cluster"
    partition of the latent, available once the latent's dimension is at least the number of
    modes (Issenhuth et al., "On the optimal precision of GANs", ICLR 2023, arXiv 2207.10541),
    where a 2-D latent cut into m sectors pays for boundaries that grow with m. ``E = 0``: none.
    """

    def __init__(
        self, denoiser: NeuralDenoiser, sigma_init: float = 2.5, latent_extra: int = 0
    ) -> None:
        super().__init__()
        if not sigma_init > 0:
            raise ValueError(f"sigma_init must be > 0, got {sigma_init}")
        if latent_extra < 0:
            raise ValueError(f"latent_extra must be >= 0, got {latent_extra}")
        dim = getattr(denoiser, "dim", None)
        if dim is None:
            raise ValueError("the denoiser must say its dim (its net needs a .dim attribute)")
        self.denoiser = copy.deepcopy(denoiser).requires_grad_(True).train()
        self.dim, self.num_classes = int(dim), int(getattr(denoiser, "num_classes", 0))
        self.sigma_init, self.nfe = float(sigma_init), 1
        self.t_init = _t_at_ve_level(self.denoiser.schedule, self.sigma_init)
        self.latent_extra = int(latent_extra)
        self.extra: nn.Linear | None = None
        if latent_extra:
            hidden = getattr(self.denoiser.net, "hidden", None)
            if hidden is None:
                raise ValueError("latent_extra needs a denoiser net with a .hidden width")
            self.extra = nn.Linear(latent_extra, int(hidden), bias=False)
            nn.init.zeros_(self.extra.weight)

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim + latent_extra) ~ N(0, I)`` on the parameters' device."""
        return draw_latent(n, self.dim + self.latent_extra, rng, dtype, _param_device(self))

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z: (B, dim + latent_extra)``, ``cond: (B,)`` or None -> ``x: (B, dim)``."""
        n = z.shape[0]
        z = z.reshape(n, self.dim + self.latent_extra)
        t = torch.full((n,), self.t_init, dtype=z.dtype, device=z.device)
        _, sigma = self.denoiser.schedule.alpha_sigma(t)
        x_t = sigma[:, None] * z[:, : self.dim]
        if self.extra is None:
            return self.denoiser(x_t, t, cond)
        return self.denoiser.denoise(x_t, t, cond, extra=self.extra(z[:, self.dim :]))


class FewStepGenerator(nn.Module):
    """K-step generator: a denoiser ``D_theta(x_t, t, c)`` at student times ``t_1 > ... > t_K``.

    ``forward`` (NFE = K = ``len(ts)``)::

        x = D_theta(sigma_1 z, t_1)                       # pure-noise input at t_1
        for k = 2..K:  x = D_theta(alpha_k x + sigma_k eps_k, t_k),  eps_k ~ N(0, I) fresh

    ``forward(z, cond, rng=rng, k=k)`` is DMD2's backward simulation (note b2): roll out ``k - 1``
    steps without grad, re-noise to ``t_k``, return the ``k``-th output with grad. Under DDP every
    rank must use the same ``k`` (note b20.8): draw it with ``draw_step(rng)`` on a shared seed or
    broadcast it, then call the DDP-wrapped module's forward with ``k``. ``backward_simulation``
    does the draw and the call in one go for a single process.

    The times default to ``default_student_times`` from ``t_max`` (DMD2's t = 999, where an MMSE
    denoiser returns the data mean whatever ``z``); ``sigma_init`` starts them at the VE level
    ``sigma/alpha = sigma_init`` instead (SiD's 2.5, as ``TeacherInitGenerator`` for one step).
    The denoiser is used as given (not copied); ``from_mlp`` builds a fresh one and
    ``from_teacher`` a trainable copy of a neural teacher.
    """

    def __init__(
        self,
        denoiser: NeuralDenoiser,
        *,
        steps: int = 4,
        ts: Sequence[float] | None = None,
        sigma_init: float | None = None,
    ) -> None:
        super().__init__()
        dim = getattr(denoiser, "dim", None)
        if dim is None:
            raise ValueError("the denoiser must say its dim (its net needs a .dim attribute)")
        self.denoiser = denoiser
        self.dim, self.num_classes = int(dim), int(getattr(denoiser, "num_classes", 0))
        if ts is not None and sigma_init is not None:
            raise ValueError("give ts or sigma_init, not both")
        if ts is None:
            if steps < 1:
                raise ValueError(f"steps must be >= 1, got {steps}")
            top = None if sigma_init is None else _t_at_ve_level(denoiser.schedule, sigma_init)
            ts = default_student_times(denoiser.schedule, steps, t_top=top)
        ts = tuple(float(t) for t in ts)
        if (
            not ts
            or any(not 0 < t <= 1 for t in ts)
            or any(a <= b for a, b in itertools.pairwise(ts))
        ):
            raise ValueError(f"ts must be non-empty, strictly decreasing and in (0, 1]; got {ts}")
        self.ts = ts

    @classmethod
    def from_mlp(
        cls,
        dim: int,
        schedule: Schedule | str,
        *,
        steps: int = 4,
        ts: Sequence[float] | None = None,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        sigma_data: float = 0.5,
        sigma_init: float | None = None,
    ) -> FewStepGenerator:
        """A fresh ``NeuralDenoiser(MLPDenoiserNet(...), schedule)`` as the student network."""
        net = MLPDenoiserNet(dim, hidden, depth, num_classes)
        sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
        den = NeuralDenoiser(net, sched, "edm", sigma_data, num_classes)
        return cls(den, steps=steps, ts=ts, sigma_init=sigma_init)

    @classmethod
    def from_teacher(
        cls,
        teacher: NeuralDenoiser,
        *,
        steps: int = 4,
        ts: Sequence[float] | None = None,
        sigma_init: float | None = None,
    ) -> FewStepGenerator:
        """A trainable deep copy of a neural teacher as the student network (DMD2)."""
        net = copy.deepcopy(teacher).requires_grad_(True).train()
        return cls(net, steps=steps, ts=ts, sigma_init=sigma_init)

    @property
    def nfe(self) -> int:
        return len(self.ts)

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim) ~ N(0, I)`` on the parameters' device."""
        return draw_latent(n, self.dim, rng, dtype, _param_device(self))

    def draw_step(self, rng: torch.Generator | None = None) -> int:
        """A step index ``k`` uniform in ``1..K`` (draw it identically on every rank)."""
        where = rng.device if rng is not None else "cpu"
        return int(torch.randint(1, self.nfe + 1, (), generator=rng, device=where))

    def _noised(self, x: Tensor, k: int, rng: torch.Generator | None, scale: float = 1.0) -> Tensor:
        """``alpha_k x + scale sigma_k eps`` at student time ``t_k`` (1-based), fresh ``eps``."""
        alpha, sigma = self._alpha_sigma(k, x)
        eps = draw_latent(x.shape[0], self.dim, rng, x.dtype, x.device)
        return alpha * x + scale * sigma * eps

    def _alpha_sigma(self, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.denoiser.schedule.alpha_sigma(self._t(k, x))
        return a[:, None], s[:, None]

    def _t(self, k: int, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.ts[k - 1], dtype=x.dtype, device=x.device)

    def forward(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        rng: torch.Generator | None = None,
        k: int | None = None,
        noise_scale: float = 1.0,
        x_t: Tensor | None = None,
    ) -> Tensor:
        """``z: (B, dim)``, ``cond: (B,)`` or None -> ``x: (B, dim)``.

        ``k=None``: the full K-step rollout (every call records gradients if enabled).
        ``k`` in ``1..K``: backward simulation; only the ``k``-th call records gradients.
        ``x_t`` (with ``k``): the ``k``-th step's output from this input at ``t_k`` (``z`` is
        unused; the per-step regression of ``runs.distill``), through ``forward`` so that DDP sees it.
        ``rng`` draws the re-noising noise (None: torch's global generator).
        ``noise_scale`` (γ) multiplies the input noise ``sigma_1 z`` and every re-noising
        ``sigma_k eps``: inference-time noise modulation (SiD-Protein, Xie et al. 2025, its
        ``generate_multistep``: ``x_t = interpolate(γ x_0, x_g, t)``, γ = 0.45); 1 in training.
        """
        last = self.nfe if k is None else int(k)
        if not 1 <= last <= self.nfe:
            raise ValueError(f"k must lie in 1..{self.nfe} (the number of steps), got {k}")
        if x_t is not None:
            if k is None:
                raise ValueError("x_t needs the step k it is the input of")
            return self.denoiser(x_t, self._t(last, x_t), cond)
        z = z.reshape(z.shape[0], self.dim)
        x_t = noise_scale * self._alpha_sigma(1, z)[1] * z
        with torch.set_grad_enabled(torch.is_grad_enabled() and k is None):
            for j in range(1, last):
                x = self.denoiser(x_t, self._t(j, x_t), cond)
                x_t = self._noised(x, j + 1, rng, noise_scale)
        return self.denoiser(x_t, self._t(last, x_t), cond)

    def backward_simulation(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        rng: torch.Generator | None,
        k: int | None = None,
    ) -> tuple[Tensor, int]:
        """DMD2's training mode: ``(x, k)`` with ``k ~ U{1..K}`` from ``rng`` (or the given ``k``)
        and ``x = forward(z, cond, rng=rng, k=k)``, whose gradient flows only through the k-th
        denoiser call. Single-process convenience: under DDP draw ``k`` once for all ranks and
        call the wrapped module's ``forward`` (see the class docstring)."""
        if k is None:
            k = self.draw_step(rng)
        return self(z, cond, rng=rng, k=k), k

    def extra_repr(self) -> str:
        return f"nfe={self.nfe}, ts={tuple(round(t, 4) for t in self.ts)}"


def rollout(generator: nn.Module, z: Tensor, cond: Tensor | None, rng: torch.Generator) -> Tensor:
    """A student's samples from latents ``z``: a ``FewStepGenerator``'s re-noising noise comes
    from ``rng`` too (not torch's global generator), so an evaluation draw is fixed by its seed
    alone; any other generator is one call ``generator(z, cond)``."""
    if isinstance(generator, FewStepGenerator):
        return generator(z, cond, rng=rng)
    return generator(z, cond)
