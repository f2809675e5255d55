"""A learned teacher: an MLP denoiser trained by denoising score matching on an exact testbed
(the training loop is ``train.dsm``; loading a saved one as a testbed: ``teachers.testbeds``).

The network sees the noise level only through the VE view ``x_t / alpha = x + s eps``,
``s = sigma / alpha``, preconditioned as in EDM (Karras et al. 2022, Table 1): input
``c_in x_t / alpha``, ``c_in = 1 / sqrt(s^2 + sigma_data^2)``, noise embedding
``c_noise = log(s) / 4``; so the same weights are valid on every schedule. The raw output is any
``parametrization`` prediction type (default EDM's ``F``). The data being an exact mixture, the
learned teacher's error is measurable (``denoiser_errors``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import io as fileio
from ..parametrization import PREDICTIONS, to_denoiser
from ..schedules import Schedule, get_schedule
from .analytic import GaussianMixtureTeacher
from .mlp import MLPDenoiserNet

__all__ = [
    "MLPDenoiserNet",
    "NeuralDenoiser",
    "denoiser_errors",
    "load_learned_teacher",
    "save_learned_teacher",
]

CONFIG_FILE = "teacher.json"
WEIGHTS_FILE = "teacher.safetensors"
_FORMAT = "scoredistill.learned_teacher"
_LOG_S_RANGE = (math.log(1e-5), math.log(1e5))  # keeps c_noise finite where alpha or sigma is 0
_NET_KEYS = ("dim", "hidden", "depth", "num_classes")
_DENOISER_KEYS = ("prediction", "sigma_data", "num_classes")
_CONFIG_KEYS: dict[str, type] = {
    **dict.fromkeys(_NET_KEYS, int),
    **dict.fromkeys(("format", "prediction", "schedule", "weights_sha256"), str),
    **{"sigma_data": float, "truth": dict, "train": dict},
}


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

    def denoise(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, extra: Tensor | None = None
    ) -> Tensor:
        """``D(x_t, t, cond)``; ``x_t: (B, *D)``, ``t: (B,)`` or scalar, ``cond: (B,)`` or None;
        ``extra`` goes to the network as is (``MLPDenoiserNet``: added to its first hidden layer)."""
        t, alpha, sigma, x_in, c_noise = self._inputs(x_t, t)
        sd, pred = self.sigma_data, self.prediction
        out = (
            self.net(x_in, c_noise, cond) if extra is None else self.net(x_in, c_noise, cond, extra)
        )
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
    weights_path = config_path.parent / WEIGHTS_FILE
    # the checksum and the shapes are checked before the network the JSON describes is
    # allocated: a doctored 'hidden' must not reserve memory (shapes checked on the meta device)
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: missing (the teacher's weights)")
    if fileio.sha256_file(weights_path) != meta["weights_sha256"]:
        raise ValueError(f"{weights_path} does not match key 'weights_sha256' of {config_path}")
    tensors = fileio.load_safetensors(weights_path)
    net_kwargs = {key: meta[key] for key in _NET_KEYS}
    try:
        with torch.device("meta"):
            shapes = MLPDenoiserNet(**net_kwargs).state_dict()
        fileio.check_tensor_shapes(shapes, tensors, str(weights_path))
        net = MLPDenoiserNet(**net_kwargs)
        kwargs = {key: meta[key] for key in _DENOISER_KEYS}
        denoiser = NeuralDenoiser(net, meta["schedule"], **kwargs)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    net.load_state_dict(tensors)
    return denoiser.eval(), meta
