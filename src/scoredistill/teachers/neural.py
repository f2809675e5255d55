"""A learned teacher: an MLP denoiser trained by denoising score matching on an exact testbed.

The network sees the noise level only through the VE view ``x_t / alpha = x + s eps``,
``s = sigma / alpha``, preconditioned as in EDM (Karras et al. 2022, Table 1): input
``c_in x_t / alpha``, ``c_in = 1 / sqrt(s^2 + sigma_data^2)``, noise embedding
``c_noise = log(s) / 4``; so the same weights are valid on every schedule. The raw output is any
``parametrization`` prediction type (default EDM's ``F``). The data being an exact mixture, the
learned teacher's error is measurable (``denoiser_errors``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import io as fileio
from ..parametrization import PREDICTIONS, to_denoiser
from ..schedules import Schedule, get_schedule, t_from_log_snr
from ..train.common import ema_decay, ema_update
from .analytic import GaussianMixtureTeacher
from .base import NULL_LABEL
from .mlp import MLPDenoiserNet

__all__ = [
    "MLPDenoiserNet",
    "NeuralDenoiser",
    "denoiser_errors",
    "dsm_loss",
    "load_learned_teacher",
    "load_learned_testbed",
    "sample_training_t",
    "save_learned_teacher",
    "train_dsm",
    "train_learned_teacher",
]

CONFIG_FILE = "teacher.json"
WEIGHTS_FILE = "teacher.safetensors"
_FORMAT = "scoredistill.learned_teacher"
P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1: log(sigma/alpha) ~ N(P_mean, P_std^2) during training
_LOG_S_RANGE = (math.log(1e-5), math.log(1e5))  # keeps c_noise finite where alpha or sigma is 0
_NET_KEYS = ("dim", "hidden", "depth", "num_classes")
_DENOISER_KEYS = ("prediction", "sigma_data", "num_classes")
_CONFIG_KEYS: dict[str, type] = {
    **dict.fromkeys(_NET_KEYS, int),
    **dict.fromkeys(("format", "prediction", "schedule", "weights_sha256"), str),
    **{"sigma_data": float, "truth": dict, "train": dict},
}
SampleData = Callable[[int, torch.Generator], "Tensor | tuple[Tensor, Tensor]"]


def _per_sample(c: Tensor, x: Tensor) -> Tensor:
    """Reshape ``(B,)`` to broadcast against ``x: (B, *D)``."""
    return c.reshape(-1, *([1] * (x.dim() - 1)))


class NeuralDenoiser(nn.Module):
    """Any network ``net(x_in, c_noise, cond)`` as a ``Teacher`` on ``schedule``.

    ``prediction`` says what the raw output is (see ``parametrization.PREDICTIONS``; ``"edm"``
    is EDM's ``F`` with ``sigma_data``). ``denoise(x_t, t, cond)`` returns ``D: (B, *D)``.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule | str,
        prediction: str = "edm",
        sigma_data: float = 0.5,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net, self.prediction, self.num_classes = net, prediction, num_classes
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self.sigma_data = float(sigma_data)
        # values in one sample (the Teacher protocol's dim); None when the net does not say
        self.dim: int | None = getattr(net, "dim", None)
        # optional discriminator head on ``net.features`` (DMD2's GAN; ``attach_logit_head``)
        self.head: nn.Module | None = None

    def _inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(t, alpha, sigma, x_in, c_noise)``: EDM preconditioning of the network's input."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        # c_in * x_t / alpha = x_t / sqrt(sigma^2 + alpha^2 sigma_data^2): finite even at alpha = 0
        x_in = x_t * _per_sample(torch.rsqrt(sigma**2 + (alpha * self.sigma_data) ** 2), x_t)
        c_noise = 0.25 * (torch.log(sigma) - torch.log(alpha)).clamp(*_LOG_S_RANGE)
        return t, alpha, sigma, x_in, c_noise

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x_t, t, cond)``; ``x_t: (B, *D)``, ``t: (B,)`` or scalar, ``cond: (B,)`` or None."""
        t, alpha, sigma, x_in, c_noise = self._inputs(x_t, t)
        sd, pred = self.sigma_data, self.prediction
        out = self.net(x_in, c_noise, cond)
        da, ds = self.schedule.alpha_sigma_deriv(t) if pred == "flow" else (None, None)
        return to_denoiser(out, x_t, alpha, sigma, pred, d_alpha=da, d_sigma=ds, sigma_data=sd)

    def attach_logit_head(self, width: int = 256) -> NeuralDenoiser:
        """Add a discriminator head ``features -> width -> 1`` (needs ``net.features``)."""
        if not hasattr(self.net, "features"):
            raise TypeError(f"{type(self.net).__name__} has no features(); no head can attach")
        hidden = int(self.net.hidden)
        self.head = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, 1))
        return self

    def logit(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The discriminator's logit ``(B,)`` (real vs generated) at ``x_t``, time ``t``."""
        if self.head is None:
            raise RuntimeError("this denoiser has no logit head; call attach_logit_head() first")
        _, _, _, x_in, c_noise = self._inputs(x_t, t)
        return self.head(self.net.features(x_in, c_noise, cond)).reshape(-1)

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, output: str = "denoise"
    ) -> Tensor:
        """``denoise`` or (``output="logit"``) ``logit``: one entry point, so a DDP-wrapped
        critic routes both through ``forward``."""
        return self.logit(x_t, t, cond) if output == "logit" else self.denoise(x_t, t, cond)


def sample_training_t(schedule: Schedule, n: int, rng: torch.Generator) -> Tensor:
    """``(n,)`` float64 times with ``log(sigma/alpha) ~ N(P_MEAN, P_STD^2)`` (EDM, Table 1),
    mapped by ``t_from_log_snr`` (``lambda = -2 log(sigma/alpha)``), clamped to
    ``[t_min, t_max]``. Drawn on ``rng``'s device."""
    log_s = P_MEAN + P_STD * torch.randn(n, generator=rng, dtype=torch.float64, device=rng.device)
    t = t_from_log_snr(schedule, -2.0 * log_s, iters=32)  # 2^-32 in t: below float32 spacing
    return t.clamp(schedule.t_min, schedule.t_max)


def dsm_loss(
    denoiser: Any, x0: Tensor, t: Tensor, eps: Tensor, cond: Tensor | None = None
) -> Tensor:
    """EDM's denoising loss on the VE view (Karras et al. 2022, eq. 2 with Table 1's weight):

        x_t = alpha_t x0 + sigma_t eps,   s = sigma_t / alpha_t
        lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2
        L = mean_b  lambda(s_b) * ||D(x_t, t_b, cond_b) - x0_b||^2 / dim

    ``x0``, ``eps``: ``(B, *D)``; ``t``: ``(B,)``; ``denoiser`` has ``schedule``, ``sigma_data``
    and ``denoise``. With EDM preconditioning this is ``||F - F_target||^2`` per dimension.
    """
    sd, (alpha, sigma) = denoiser.sigma_data, denoiser.schedule.alpha_sigma(t)
    x_t = _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * eps
    s = sigma / alpha
    weight = (s**2 + sd**2) / (s * sd) ** 2
    sq_err = (denoiser.denoise(x_t, t, cond) - x0).pow(2).flatten(1).mean(1)
    return (weight * sq_err).mean()


def _lr_factor(step: int, steps: int, kind: str) -> float:
    ramp = min(1.0, (step + 1) / max(1, steps // 20))  # 5% linear warm-up: small first steps
    return ramp * (0.5 * (1 + math.cos(math.pi * step / steps)) if kind == "cosine" else 1.0)


def train_dsm(
    denoiser: NeuralDenoiser,
    sample_data: SampleData,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    ema_halflife_steps: float = 100.0,
    lr_schedule: str = "cosine",
    cond_drop_prob: float = 0.1,
    progress: bool = True,
) -> dict[str, float]:
    """Train by ``dsm_loss`` with Adam; ``denoiser`` ends holding the EMA weights.

    ``sample_data(n, rng)`` returns clean ``x0: (n, *D)`` or ``(x0, labels)``; labels become
    ``NULL_LABEL`` with probability ``cond_drop_prob`` (CFG training). The EMA half-life ramps
    up as in EDM (at most 5% of the steps done). A non-finite loss or gradient raises
    ``RuntimeError`` naming the step. Returns ``steps``, ``final_loss``, ``wall_time_s``.
    """
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    rng = torch.Generator().manual_seed(seed)
    online = copy.deepcopy(denoiser).train()
    p0 = next(online.parameters())
    opt = torch.optim.Adam(online.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_factor(k, steps, lr_schedule))
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="dsm", dynamic_ncols=True)
    for step in bar:
        out = sample_data(batch_size, rng)
        x0, cond = (out[0].to(p0), out[1]) if isinstance(out, tuple) else (out.to(p0), None)
        if cond is not None and cond_drop_prob > 0:
            drop = torch.rand(batch_size, generator=rng) < cond_drop_prob
            cond = torch.where(drop.to(cond.device), NULL_LABEL, cond)
        t = sample_training_t(online.schedule, batch_size, rng).to(p0)
        eps = torch.randn(x0.shape, generator=rng, dtype=p0.dtype).to(p0.device)
        loss = dsm_loss(online, x0, t, eps, cond)
        if not torch.isfinite(loss):
            raise RuntimeError(f"DSM loss is non-finite ({loss.item()}) at step {step}; lr={lr}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(nn.utils.clip_grad_norm_(online.parameters(), math.inf)):
            raise RuntimeError(f"DSM gradient is non-finite at step {step}; lr={lr}")
        opt.step()
        sched.step()
        half = max(min(ema_halflife_steps, 0.05 * (step + 1)), 1e-8)
        ema_update(denoiser, online, ema_decay(half))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    tail = losses[-max(1, steps // 20) :]  # the last 5%: one step's loss is noisy
    return {
        "steps": steps,
        "final_loss": sum(tail) / len(tail),
        "wall_time_s": time.perf_counter() - start,
    }


def denoiser_errors(
    denoiser: NeuralDenoiser,
    truth: GaussianMixtureTeacher,
    t_values: Sequence[float] = (0.05, 0.2, 0.5),
    n: int = 16384,
    seed: int = 1234,
) -> dict[str, dict[str, float]]:
    """Learned-vs-exact error of the unconditional denoiser at each ``t`` of ``denoiser.schedule``,
    on ``n`` marginal samples ``x_t = alpha x0 + sigma eps``:

        denoiser_rel_err = E||D_theta - D*||^2 / E||D*||^2
        eps_rel_err      = E||D_theta - D*||^2 / E||x_t/alpha - D*||^2
                         = E||eps_theta - eps*||^2 / E||eps*||^2  (the same for the score)

    ``eps_rel_err`` is scale-free, what score distillation consumes, and the honest one at small
    ``t``, where ``denoiser_rel_err`` is tiny whatever the network does.
    """
    rng = torch.Generator().manual_seed(seed)
    p0 = next(denoiser.parameters())
    x0 = truth.sample(n, rng=rng, dtype=torch.float64)
    out: dict[str, dict[str, float]] = {"denoiser_rel_err": {}, "eps_rel_err": {}}
    for tv in t_values:
        t = torch.full((n,), float(tv), dtype=torch.float64)
        alpha, sigma = (c[:, None] for c in denoiser.schedule.alpha_sigma(t))
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=rng, dtype=x0.dtype)
        d_star = truth.denoise_at(x_t, alpha[:, 0], sigma[:, 0])
        with torch.no_grad():
            d_hat = denoiser.denoise(x_t.to(p0), t.to(p0)).to(torch.float64).cpu()
        err = (d_hat - d_star).pow(2).sum(1).mean()
        out["denoiser_rel_err"][f"{tv:g}"] = float(err / d_star.pow(2).sum(1).mean())
        out["eps_rel_err"][f"{tv:g}"] = float(err / (x_t / alpha - d_star).pow(2).sum(1).mean())
    return out


def save_learned_teacher(
    denoiser: NeuralDenoiser,
    directory: str | Path,
    *,
    truth_testbed: str,
    truth_seed: int,
    train_info: dict[str, Any],
) -> Path:
    """Write ``teacher.safetensors`` and ``teacher.json`` (config, truth, ``train_info``, weights'
    SHA-256) atomically; returns the json path."""
    net = denoiser.net
    if not isinstance(net, MLPDenoiserNet):
        raise TypeError(f"only MLPDenoiserNet teachers can be saved, got {type(net).__name__}")
    name = denoiser.schedule.name
    if get_schedule(name) != denoiser.schedule:
        raise ValueError(f"schedule {denoiser.schedule!r} differs from the registered {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    fileio.save_safetensors_atomic(net.state_dict(), weights, metadata={"format": _FORMAT})
    config = {
        "format": _FORMAT,
        **{key: getattr(net, key) for key in _NET_KEYS},
        **{key: getattr(denoiser, key) for key in _DENOISER_KEYS},
        "schedule": name,
        "weights_sha256": fileio.sha256_file(weights),
        "truth": {"testbed": truth_testbed, "seed": int(truth_seed)},
        "train": train_info,
    }
    fileio.atomic_write_json(directory / CONFIG_FILE, config)
    return directory / CONFIG_FILE


def load_learned_teacher(path: str | Path) -> tuple[NeuralDenoiser, dict[str, Any]]:
    """Load a teacher saved by ``save_learned_teacher`` (its directory or ``teacher.json``).

    Every problem raises ``ValueError`` naming the file and the key (json key or tensor name).
    """
    path = Path(path)
    config_path = path / CONFIG_FILE if path.is_dir() else path
    meta = fileio.read_json_object(config_path, _CONFIG_KEYS)
    truth = meta["truth"]
    if meta["format"] != _FORMAT:
        raise ValueError(f"{config_path}: key 'format' is {meta['format']!r}, not {_FORMAT!r}")
    if not (isinstance(truth.get("testbed"), str) and type(truth.get("seed")) is int):
        raise ValueError(f"{config_path}: key 'truth' needs 'testbed' (str), 'seed' (int): {truth}")
    try:
        net = MLPDenoiserNet(**{key: meta[key] for key in _NET_KEYS})
        kwargs = {key: meta[key] for key in _DENOISER_KEYS}
        denoiser = NeuralDenoiser(net, meta["schedule"], **kwargs)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    weights_path = config_path.parent / WEIGHTS_FILE
    tensors = fileio.load_safetensors(weights_path)
    fileio.check_tensor_shapes(net.state_dict(), tensors, str(weights_path))
    if fileio.sha256_file(weights_path) != meta["weights_sha256"]:
        raise ValueError(f"{weights_path} does not match key 'weights_sha256' of {config_path}")
    net.load_state_dict(tensors)
    return denoiser.eval(), meta


def load_learned_testbed(path: str | Path, schedule: str | None = None) -> Any:
    """A ``Testbed`` whose teacher is the learned denoiser and whose truth is the exact mixture.

    ``schedule`` (a name; ``None``: the training one) is set on the denoiser and the truth: the
    net saw the noise level only as ``sigma/alpha``, so its weights are valid on any schedule.
    """
    from .testbeds import get_testbed

    denoiser, meta = load_learned_teacher(path)
    if schedule is not None:
        denoiser.schedule = get_schedule(schedule)
    name, seed = meta["truth"]["testbed"], meta["truth"]["seed"]
    base = get_testbed(name, seed, denoiser.schedule.name)
    about = f"MLP denoiser trained by DSM on exact samples of {name!r} (seed {seed}) vs its truth"
    return dataclasses.replace(base, name=f"learned:{name}", teacher=denoiser, description=about)


def _data_std(truth: GaussianMixtureTeacher) -> float:
    """Per-dimension standard deviation of the mixture (EDM's sigma_data), in closed form."""
    w, mu = truth.weights, truth.means
    second = (w * (truth.eigvals.sum(1) + mu.pow(2).sum(1))).sum()
    return float(((second - (w @ mu).pow(2).sum()) / truth.dim).sqrt())


def train_learned_teacher(
    testbed_name: str = "moons",
    *,
    seed: int = 0,
    steps: int = 4000,
    out_dir: str | Path,
    hidden: int = 256,
    depth: int = 4,
    batch_size: int = 1024,
    lr: float = 2e-3,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an MLP teacher (``sigma_data`` = the mixture's std) on exact samples of a testbed,
    save it to ``out_dir``; returns the logs, ``denoiser_errors`` (EDM schedule) and ``path``."""
    from .testbeds import get_testbed

    truth = get_testbed(testbed_name, seed, "edm").truth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLPDenoiserNet(truth.dim, hidden, depth, num_classes=truth.num_classes)
    denoiser = NeuralDenoiser(net, truth.schedule, "edm", _data_std(truth), truth.num_classes)

    def sample_data(n: int, rng: torch.Generator) -> Tensor | tuple[Tensor, Tensor]:
        x, comp = truth.sample(n, rng=rng, return_components=True)
        return x if truth.labels is None else (x, truth.labels[comp])

    hyper = {"batch_size": batch_size, "lr": lr, "seed": seed}
    logs = train_dsm(denoiser, sample_data, steps=steps, progress=progress, **hyper)
    info = {**logs, **hyper, **denoiser_errors(denoiser, truth)}
    path = save_learned_teacher(
        denoiser, out_dir, truth_testbed=testbed_name, truth_seed=seed, train_info=info
    )
    return {**info, "path": str(path)}
