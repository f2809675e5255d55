"""diffusers models as teachers: a local model folder and its scheduler become the denoiser ``D``.

Every diffusers teacher reduces to "match log-SNR, rescale the input, convert the output to x0"
(reference note ``diffusers_integration.md`` §0). The library time ``t`` of ``teacher.schedule``
(any library schedule) gives ``lambda = log(alpha²/sigma²)``; per scheduler family:

- vp (DDPM, DDIM, LCM, PNDM, DPM-Solver++, Euler, Euler-ancestral, and any other diffusers
  scheduler built on a discrete beta table: Heun, UniPC, DEIS, KDPM2, LMS, ...): the fractional
  table index ``k`` whose interpolated log-SNR is lambda (§1.2), input ``x_t / sqrt(alpha² +
  sigma²)``, output eps / v / sample -> x0 (§1.1; Euler's VE view is the same network call, §1.3);
- edm (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): ``sigma = exp(-lambda/2)``,
  input ``c_in·x``, timestep ``c_noise = ln(sigma)/4``, ``x0 = c_skip·x + c_out·F`` (F sign
  flipped for v; §1.5);
- flow (``FlowMatchEulerDiscreteScheduler`` and its Heun and LCM siblings): ``s =
  sigmoid(-lambda/2)``, timestep ``s·N``, velocity ``eps - x0`` -> ``x0 = x - s·v`` (§1.4; the
  shift reparametrises time only).

Outside the trained log-SNR range lambda is clamped (§0 "Library rule"): the network sees ``x_t``
normalised at the nearest trained level; ``teacher.schedule`` reports the range as
``[t_min, t_max]``. Learned-variance outputs (``out_channels = 2C``, DiT) keep ``C`` channels.
Labels: a ``UNet2DModel`` with ``num_class_embeds = K + 1`` (the library's teacher trainer) or a
DiT with ``num_embeds_ada_norm = K`` has K classes and null row K, where ``NULL_LABEL = -1`` (and
``cond=None``) goes; ``num_classes=num_class_embeds`` declares no null row. Loading is offline
(``local_files_only=True``); classes are looked up by name in ``diffusers`` only.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL, to_denoiser
from ..schedules import Schedule
from .diffusers_schedules import (
    DiscreteVPSchedule,
    ShiftedFlowSchedule,
    native_schedule,
    restrict_schedule,
)
from .diffusers_variants import pick_variant

__all__ = [
    "DiffusersTeacher",
    "DiscreteVPSchedule",
    "ShiftedFlowSchedule",
    "TeacherFolderError",
    "load_diffusers_teacher",
]

_VP = ("DDPM", "DDIM", "LCM", "PNDM", "EulerDiscrete", "EulerAncestralDiscrete", "DPMSolverMultistep")  # fmt: skip
# EDMDPMSolverMultistep preconditions exactly as EDMEuler; FlowMatchHeun/LCM keep FlowMatchEuler's
# sigmas and shift (tests/test_diffusers_teacher.py's Gaussian bridge checks each class)
_EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
_FLOW = (
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
)
FAMILIES = dict.fromkeys(_EDM, "edm") | dict.fromkeys(_FLOW, "flow")
FAMILIES.update((f"{name}Scheduler", "vp") for name in _VP)
VALID = {"vp": ("epsilon", "v_prediction", "sample"), "edm": ("epsilon", "v_prediction")}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class TeacherFolderError(ValueError):
    """A teacher folder, file or config that cannot be used; the message is one line."""


def _beta_table(name: Any, cfg: dict[str, Any]) -> bool:
    """Whether diffusers' scheduler class ``name``, built from ``cfg``, holds a discrete VP
    table: ``alphas_cumprod`` with one entry per training timestep (Heun, UniPC, DEIS, KDPM2,
    LMS, TCD, ...: the network call is the same whichever of them samples)."""
    if (cls := _lookup(name, "SchedulerMixin")) is None:
        return False
    try:
        table = getattr(cls.from_config(cfg), "alphas_cumprod", None)
    except Exception:  # a class that cannot be built here (e.g. it needs torchsde)
        return False
    steps = cfg.get("num_train_timesteps", 1000)
    return isinstance(table, Tensor) and table.ndim == 1 and table.numel() == steps


def _check_scheduler(name: str, cfg: dict[str, Any]) -> tuple[str, str]:
    """``(family, prediction_type)``; unsupported classes and prediction types raise."""
    family = FAMILIES.get(name) or ("vp" if _beta_table(name, cfg) else None)
    if family is None:
        valid = ", ".join([*FAMILIES, "any other scheduler with a discrete beta table"])
        raise ValueError(f"scheduler class {name!r} is not supported; valid: {valid}")
    if family == "flow":
        return family, "flow"  # flow matching always predicts the velocity eps - x0
    kind, valid = cfg.get("prediction_type", "epsilon"), VALID[family]
    if kind not in valid:
        raise ValueError(f"prediction_type {kind!r} is not supported; valid: {', '.join(valid)}")
    return family, kind


def _classes(cfg: dict[str, Any], num_classes: int | None) -> tuple[int, int | None]:
    """``(num_classes, null row or None)`` from a model config (module docstring)."""
    if (kind := cfg.get("class_embed_type")) is not None:
        raise ValueError(f"class_embed_type {kind!r} is not supported; valid: null")
    rows = cfg.get("num_class_embeds")
    if rows is None and cfg.get("num_embeds_ada_norm") is not None:
        rows = cfg["num_embeds_ada_norm"] + 1  # DiT: K classes, null label K
    if rows is None:
        return 0, None
    k = rows - 1 if num_classes is None else num_classes
    if k not in (rows - 1, rows):
        valid = f"{rows - 1} (row {rows - 1} null) or {rows}"
        raise ValueError(f"num_classes={k} does not fit {rows} label rows; valid: {valid}")
    return k, (k if k < rows else None)


class DiffusersTeacher(nn.Module):
    """A diffusers model (``model(x, timestep=, class_labels=)``) and its scheduler object as a
    ``Teacher`` (``load_diffusers_teacher`` reads both from a folder). ``schedule=None`` is the
    scheduler's own (``t = k / (N-1)`` on VP tables); any library schedule works by log-SNR
    matching. ``denoise`` returns float32 (float64 for float64 input)."""

    def __init__(
        self,
        model: nn.Module,
        scheduler: Any,
        *,
        schedule: Schedule | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        cfg, scfg = dict(model.config), dict(scheduler.config)
        self.family, kind = _check_scheduler(type(scheduler).__name__, scfg)
        self.model, self.scheduler, self.prediction_type = model, scheduler, kind
        self.prediction = {"edm": "edm", "flow": "flow"}.get(self.family) or PREDICTIONS[kind]
        self.native_schedule, lo, hi = native_schedule(scheduler, self.family)
        if kind == "epsilon" and lo == -math.inf:
            msg = "a zero terminal SNR table leaves x0 undefined at the last step (note §1.1)"
            raise ValueError(f"prediction_type 'epsilon': {msg}; valid: v_prediction, sample")
        self.log_snr_range = (lo, hi)
        # the native schedule spans the trained range already (bisection would nudge its ends)
        self.schedule = (
            self.native_schedule if schedule is None else restrict_schedule(schedule, lo, hi)
        )
        self.sigma_data = float(scfg.get("sigma_data", 0.5))
        self.continuous = scfg.get("timestep_type") == "continuous" and kind == "v_prediction"
        self.num_train_timesteps = int(scfg.get("num_train_timesteps", 1000))
        # DDPM/DDIM/LCM clip their x0 estimate to ±clip_sample_range when clip_sample is set
        # (diffusers' default for DDPM/DDIM): part of what the teacher's own sampler computes
        clip = self.family == "vp" and bool(scfg.get("clip_sample", False))
        self.clip_sample = float(scfg.get("clip_sample_range", 1.0)) if clip else None
        # dynamic thresholding (Imagen, Saharia et al. 2022, Sec. 2.3) replaces the clipping
        # when set, as in diffusers' step: (percentile ratio, largest s) of _threshold_sample
        dynamic = self.family == "vp" and bool(scfg.get("thresholding", False))
        ratio = float(scfg.get("dynamic_thresholding_ratio", 0.995))
        self.threshold = (ratio, float(scfg.get("sample_max_value", 1.0))) if dynamic else None
        size = cfg.get("sample_size")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (int(cfg["in_channels"]), *hw)
        self.dim = math.prod(self.shape)
        self.num_classes, self.null_index = _classes(cfg, num_classes)

    def class_labels(self, cond: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        """Model label indices ``(n,)`` for library labels ``cond`` (``NULL_LABEL`` -> null row)."""
        low = NULL_LABEL if self.null_index is not None or self.num_classes == 0 else 0
        cond = torch.full((n,), NULL_LABEL) if cond is None else cond
        cond = cond.to(device).long().reshape(n)
        if bool(((cond < low) | (cond >= self.num_classes)).any()):
            got = cond.unique().tolist()
            raise ValueError(f"cond labels must lie in [{low}, {self.num_classes - 1}]; got {got}")
        if self.num_classes == 0 or self.null_index is None:
            return None if self.num_classes == 0 else cond
        return torch.where(cond == NULL_LABEL, self.null_index, cond)

    def native_level(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Native ``(alpha, sigma, timestep)``, float64 ``(B,)``, at log-SNR ``lam`` (clamped)."""
        lam = lam.to(torch.float64).clamp(*self.log_snr_range)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        if self.family == "vp":
            step = self.native_schedule.index_from_log_snr(lam)
            return alpha, sigma, (0.25 * (sigma / alpha).log() if self.continuous else step)
        if self.family == "edm":
            return torch.ones_like(lam), torch.exp(-lam / 2), -lam / 8  # c_noise = ln(sigma)/4
        s = torch.sigmoid(-lam / 2)
        return 1 - s, s, s * self.num_train_timesteps

    def network_condition(self, cond: Any, n: int, device: torch.device) -> dict[str, Any]:
        """The network's keyword arguments for the library condition ``cond`` (labels here;
        ``diffusers_latent`` gives text embeddings)."""
        return {"class_labels": self.class_labels(cond, n, device)}

    def _network(self, x_in: Tensor, timestep: Tensor, condition: dict[str, Any]) -> Tensor:
        """Raw output ``(B, C, H, W)``; float tensor timesteps (a Python float is truncated, §1.2)."""
        p = next(self.model.parameters(), None)
        dtype = p.dtype if p is not None else getattr(self.model, "dtype", torch.float32)
        ts = timestep.to(torch.float64 if dtype == torch.float64 else torch.float32)
        out = self.model(x_in.to(dtype), timestep=ts, **condition, return_dict=False)[0]
        return out[:, : self.shape[0]] if out.shape[1] == 2 * self.shape[0] else out

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x_t, t, cond)``: ``x_t: (B, dim) | (B, C, H, W)``, ``t: (B,)`` or scalar."""
        n, out_dtype = x_t.shape[0], torch.promote_types(x_t.dtype, torch.float32)
        if x_t[0].numel() != self.dim:
            want = f"(B, {self.dim}) or (B, *{self.shape})"
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}; this teacher takes {want}")
        x = x_t.reshape(n, *self.shape).to(out_dtype)
        t64 = torch.as_tensor(t, device=x.device).to(torch.float64).expand(n)
        a, s = self.schedule.alpha_sigma(t64)
        alpha, sigma, timestep = self.native_level(2 * (a.log() - s.log()))
        bc = (n, 1, 1, 1)  # x_n: x_t on the native scale, x_t / sqrt(a² + s²) for VP (note §0)
        x_n = x * ((alpha**2 + sigma**2) / (a**2 + s**2)).sqrt().reshape(bc).to(out_dtype)
        condition, kwargs = self.network_condition(cond, n, x.device), {}
        c_in = torch.ones_like(sigma)
        if self.family == "edm":  # EDM preconditioning (Karras et al. 2022, Table 1; note §1.5)
            c_in, kwargs = (sigma**2 + self.sigma_data**2).rsqrt(), {"sigma_data": self.sigma_data}
        elif self.family == "flow":  # native alpha = 1 - s, sigma = s: x0 = x - s v (note §1.4)
            kwargs = {"d_alpha": -torch.ones_like(alpha), "d_sigma": torch.ones_like(alpha)}
        x_in = x_n * c_in.reshape(bc).to(out_dtype)
        out = self._network(x_in, timestep, condition).to(out_dtype)
        if self.family == "edm" and self.prediction_type == "v_prediction":
            out = -out  # diffusers' EDM v-prediction is -F (c_out's sign, note §1.5)
        d = to_denoiser(out, x_n, alpha, sigma, self.prediction, **kwargs)
        if self.threshold is not None:
            d = dynamic_threshold(d, *self.threshold)
        elif self.clip_sample is not None:
            d = d.clamp(-self.clip_sample, self.clip_sample)
        return d.reshape(x_t.shape)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.denoise(x_t, t, cond)


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding of ``x0: (B, ...)``: per sample, ``s`` = the ``ratio``
    quantile of ``|x0|`` clamped to ``[1, max_value]``, then ``clamp(x0, -s, s) / s``."""
    flat = x0.reshape(x0.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):  # quantile needs a float type
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1.0, max_value)
    return (flat.clamp(-s[:, None], s[:, None]) / s[:, None]).reshape(x0.shape).to(x0.dtype)


def _fail(where: Path | str, what: str, err: Exception | None = None) -> TeacherFolderError:
    """One line: ``where: what`` (and the first line of the underlying error)."""
    first = "" if err is None else (str(err).strip() or "-").splitlines()[0]
    cause = "" if err is None else f" ({type(err).__name__}: {first})"
    return TeacherFolderError(f"{where}: {what}{cause}".replace("\n", " "))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _fail(path, "not readable JSON", err) from None
    if not isinstance(obj, dict):
        raise _fail(path, "expected a JSON object")
    return obj


def component_config(path: Path, part: str, name: str = "config.json") -> dict[str, Any]:
    """A pipeline folder's ``part/name`` config, or a ``TeacherFolderError`` naming the file."""
    if not (path / part / name).is_file():
        raise _fail(path / part / name, "not found; every component folder holds its config")
    return _read_json(path / part / name)


def _lookup(name: Any, base: str) -> type | None:
    """diffusers' class ``name`` when it is a subclass of ``diffusers.<base>``, else None."""
    import diffusers

    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, getattr(diffusers, base)) else None


def _diffusers_class(where: Path, name: Any, base: str) -> type:
    if (cls := _lookup(name, base)) is None:
        raise _fail(where, f"_class_name {name!r} is not a diffusers {base} class")
    return cls


def _folders(path: Path, scheduler: str | Path | None) -> tuple[Path, Path]:
    """``(model folder, scheduler folder)`` for a pipeline folder or a bare model folder."""
    text, index_path = str(path), path / "model_index.json"
    if not path.exists() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", text):
        how = f"download it first (huggingface-cli download {text} --local-dir DIR) and pass DIR"
        raise _fail(text, f"not a local folder; scoredistill loads offline: {how}")
    if not path.is_dir():
        raise _fail(path, "no such folder" if not path.exists() else "is a file, not a folder")
    if not index_path.is_file() and (path / "pipeline" / "model_index.json").is_file():
        path, index_path = path / "pipeline", path / "pipeline" / "model_index.json"  # a run
    if index_path.is_file():
        index = _read_json(index_path)
        if (index.get("vae") or [None])[0] is not None:
            raise _fail(index_path, "has a 'vae'; valid: pixel-space pipelines (no latent models)")
        part = next((k for k in ("unet", "transformer") if k in index), None)
        if part is None or not (isinstance(index[part], list) and index[part][:1] == ["diffusers"]):
            found = {k: index[k] for k in ("unet", "transformer") if k in index} or sorted(index)
            raise _fail(index_path, f"needs unet/transformer: ['diffusers', CLASS]; got {found}")
        if _lookup(index[part][1] if len(index[part]) > 1 else None, "ModelMixin") is None:
            raise _fail(index_path, f"{part!r}: {index[part]} names no diffusers model class")
        model_dir, sched_dir = path / part, path / "scheduler"
    elif (path / "config.json").is_file():
        model_dir, sched_dir = path, path
    else:
        what = "has neither model_index.json (a pipeline) nor config.json (a model)"
        raise _fail(path, f"not a diffusers model or pipeline folder: it {what}")
    if scheduler is not None:
        sched_dir = Path(scheduler)
        sched_dir = sched_dir.parent if sched_dir.is_file() else sched_dir
        if (sched_dir / "scheduler" / "scheduler_config.json").is_file():
            sched_dir = sched_dir / "scheduler"  # a pipeline folder given as the scheduler
    if not (sched_dir / "scheduler_config.json").is_file():
        hint = "pass scheduler=DIR (--scheduler DIR), a folder holding scheduler_config.json"
        raise _fail(sched_dir / "scheduler_config.json", f"not found; {hint}")
    return model_dir, sched_dir


def _check_model_class(cfg_path: Path) -> type:
    """The diffusers class named by ``config.json``; its forward must take
    ``(sample, timestep=, class_labels=)`` and need nothing else."""
    cls = _diffusers_class(cfg_path, _read_json(cfg_path).get("_class_name"), "ModelMixin")
    params = inspect.signature(cls.forward).parameters
    rest = [p for p in list(params)[2:] if p != "timestep"]
    needs = [p for p in rest if params[p].default is inspect.Parameter.empty]
    if "timestep" not in params or "class_labels" not in params or needs:
        need = f"needs {needs}" if needs else "takes no timestep or class_labels"
        what = "forward must take (sample, timestep, class_labels)"
        raise _fail(cfg_path, f"{cls.__name__}.{what}; it {need}")
    return cls


def _scheduler_class(sched_path: Path) -> Any:
    """The checked diffusers class of ``scheduler_config.json`` (errors name the file)."""
    sched_cfg = _read_json(sched_path)
    try:
        _check_scheduler(sched_cfg.get("_class_name"), sched_cfg)
    except ValueError as err:
        raise _fail(sched_path, str(err)) from None
    return _diffusers_class(sched_path, sched_cfg["_class_name"], "SchedulerMixin")


def load_diffusers_teacher(
    path: str | Path,
    *,
    scheduler: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    schedule: Schedule | None = None,
    num_classes: int | None = None,
    variant: str = "",
) -> DiffusersTeacher:
    """A teacher from a local pipeline folder written by diffusers (``model_index.json``, ``unet/``
    or ``transformer/``, ``scheduler/``) or a bare model folder (``config.json`` + weights) with
    ``scheduler=DIR`` (or ``scheduler_config.json`` beside it); frozen, eval mode; weight
    ``variant`` as ``diffusers_variants.pick_variant``. Every problem raises
    ``TeacherFolderError`` (a ``ValueError``) naming the file and key."""
    model_dir, sched_dir = _folders(Path(path), scheduler)
    sched_path, cfg_path = sched_dir / "scheduler_config.json", model_dir / "config.json"
    sched_cls = _scheduler_class(sched_path)
    if not cfg_path.is_file():
        raise _fail(cfg_path, "not found; a diffusers model folder holds config.json and weights")
    cls = _check_model_class(cfg_path)
    try:
        sched = sched_cls.from_pretrained(sched_dir, local_files_only=True)
    except Exception as err:
        raise _fail(sched_path, "cannot build the scheduler", err) from None
    extra = variant_kwargs(model_dir, variant)  # diffusers_variants: fp16-only folders
    try:
        model = cls.from_pretrained(model_dir, local_files_only=True, torch_dtype=dtype, **extra)
    except Exception as err:
        what = "weights are missing, corrupt or do not match config.json"
        raise _fail(model_dir, f"cannot load {cls.__name__}: {what}", err) from None
    model = model.to(device).eval().requires_grad_(False)
    try:
        return DiffusersTeacher(model, sched, schedule=schedule, num_classes=num_classes)
    except ValueError as err:
        raise _fail(sched_path if "prediction" in str(err) else cfg_path, str(err)) from None


def variant_kwargs(where: Path, variant: str = "") -> dict[str, str]:
    """``{"variant": v}`` for ``from_pretrained`` of the component folder ``where`` (the variant
    ``diffusers_variants.pick_variant`` finds; ``{}``: the standard weights); its refusal names
    the folder."""
    try:
        picked = pick_variant(where, variant)
    except ValueError as err:
        raise _fail(where, str(err)) from None
    return {"variant": picked} if picked else {}
