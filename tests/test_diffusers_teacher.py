"""The diffusers teacher adapter against closed forms and against diffusers itself.

(a) The exact-Gaussian bridge (reference note §0, [verified: bridge.py]): for x0 ~ N(mu, diag(v))
    the Bayes-optimal network is known at every noise level. ``GaussianOracle`` reads its noise
    level from the *timestep alone* (its own interpolation of the scheduler's table, written here),
    answers in the scheduler's native parametrisation, and the adapter must turn it back into the
    closed-form ``E[x0 | x_t] = mu + alpha v / (alpha² v + sigma²) (x_t - alpha mu)`` under
    library schedules that differ from the teacher's.
(b) Schedule conversion vs diffusers' tables, and the library's DDIM sampler with the adapter vs
    a loop over diffusers' own ``DDIMScheduler.step``.
(c) Loading folders written by diffusers; (d) every bad input is one ``TeacherFolderError`` line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DiTTransformer2DModel,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from torch import nn

from scoredistill.samplers import ddim
from scoredistill.schedules import get_schedule
from scoredistill.teachers.base import Teacher
from scoredistill.teachers.diffusers import (
    DiffusersTeacher,
    TeacherFolderError,
    load_diffusers_teacher,
)

F64 = torch.float64
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SHAPE = (1, 2, 2)
# the oracle's own reading of which classes are EDM-preconditioned and which flow matching
EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
FLOW = (
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
)


class GaussianOracle(nn.Module):
    """The Bayes-optimal network for x0 ~ N(mu, diag(var)) in a scheduler's native terms."""

    def __init__(self, scheduler, mu: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.scheduler, self.mu, self.var, self.dtype = scheduler, mu, var, F64
        self.config = {"sample_size": SHAPE[1], "in_channels": SHAPE[0]}
        cfg = scheduler.config
        self.kind = cfg.get("prediction_type", "flow")
        if hasattr(scheduler, "alphas_cumprod"):
            abar = scheduler.alphas_cumprod.double().numpy()
            with np.errstate(divide="ignore"):  # zero terminal SNR: lambda = -inf
                self.lam = np.log(abar) - np.log1p(-abar)

    def level(self, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Native (alpha, sigma) from the timestep: §1.2 (VP), §1.3 (continuous), §1.5, §1.4."""
        name, ts = type(self.scheduler).__name__, ts.double()
        if name in EDM:
            return torch.ones_like(ts), torch.exp(4 * ts)
        if name in FLOW:
            s = ts / self.scheduler.config.num_train_timesteps
            return 1 - s, s
        if self.scheduler.config.get("timestep_type") == "continuous":
            s_ve = torch.exp(4 * ts)
            return 1 / (1 + s_ve**2).sqrt(), s_ve / (1 + s_ve**2).sqrt()
        k, n = ts.numpy(), len(self.lam)
        lam = np.interp(k, np.arange(n), np.where(np.isinf(self.lam), -1e3, self.lam))
        alpha = np.sqrt(0.5 * (1 + np.tanh(lam / 2)))  # alpha² = sigmoid(lambda)
        if np.isinf(self.lam[-1]):  # zero terminal SNR: alpha linear on the last segment
            a_prev = np.sqrt(0.5 * (1 + np.tanh(self.lam[-2] / 2)))
            alpha = np.where(k >= n - 2, a_prev * (n - 1 - k), alpha)
        alpha = torch.from_numpy(alpha)
        return alpha, (1 - alpha**2).sqrt()

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        alpha, sigma = (c.reshape(-1, 1, 1, 1) for c in self.level(timestep))
        mu, var = self.mu.reshape(1, *SHAPE), self.var.reshape(1, *SHAPE)
        edm = type(self.scheduler).__name__ in EDM
        sd = self.scheduler.config.get("sigma_data", 0.5)
        x = sample * (sigma**2 + sd**2).sqrt() if edm else sample  # undo c_in
        d = mu + alpha * var / (alpha**2 * var + sigma**2) * (x - alpha * mu)
        eps = (x - alpha * d) / sigma
        if edm:
            c_skip = sd**2 / (sigma**2 + sd**2)
            f = (d - c_skip * x) / (sigma * sd / (sigma**2 + sd**2).sqrt())
            return (-f if self.kind == "v_prediction" else f,)
        if self.kind == "flow":
            return (eps - d,)
        return ({"epsilon": eps, "v_prediction": alpha * eps - sigma * d, "sample": d}[self.kind],)


def _oracle(sched) -> GaussianOracle:
    return GaussianOracle(sched, torch.zeros(SHAPE, dtype=F64), torch.ones(SHAPE, dtype=F64))


EPS_V_X0 = ("epsilon", "v_prediction", "sample")
NO_CLIP = {"clip_sample": False}  # x0 clipping (test_clip_sample_...) would cut the oracle
SCHEDULERS = {  # name: (constructor, prediction types)
    "ddpm-linear": (lambda p: DDPMScheduler(**NO_CLIP, prediction_type=p), EPS_V_X0),
    "ddim-sd": (lambda p: DDIMScheduler(**SD, **NO_CLIP, prediction_type=p), EPS_V_X0),
    "ddim-cosine": (
        lambda p: DDIMScheduler(beta_schedule="squaredcos_cap_v2", **NO_CLIP, prediction_type=p),
        ("epsilon", "v_prediction"),
    ),
    "ddim-zero-snr": (
        lambda p: DDIMScheduler(**SD, **NO_CLIP, rescale_betas_zero_snr=True, prediction_type=p),
        ("v_prediction", "sample"),
    ),
    "euler-sd": (
        lambda p: EulerDiscreteScheduler(**SD, prediction_type=p),
        ("epsilon", "v_prediction"),
    ),
    "euler-continuous": (
        lambda p: EulerDiscreteScheduler(**SD, timestep_type="continuous", prediction_type=p),
        ("v_prediction",),
    ),
    "euler-zero-snr": (
        lambda p: EulerDiscreteScheduler(**SD, rescale_betas_zero_snr=True, prediction_type=p),
        ("v_prediction",),
    ),
    "edm": (lambda p: EDMEulerScheduler(prediction_type=p), ("epsilon", "v_prediction")),
    "flow": (lambda p: FlowMatchEulerDiscreteScheduler(), ("flow",)),
    "flow-shift3": (lambda p: FlowMatchEulerDiscreteScheduler(shift=3.0), ("flow",)),
    # classes the adapter reads by what they hold (a beta table) or by family, not by name list
    "heun-sd": (lambda p: HeunDiscreteScheduler(**SD, prediction_type=p), EPS_V_X0),
    "unipc-cosine": (
        lambda p: UniPCMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=p),
        ("epsilon", "v_prediction"),
    ),
    "deis-linear": (lambda p: DEISMultistepScheduler(prediction_type=p), ("epsilon",)),
    "edm-dpmsolver": (
        lambda p: EDMDPMSolverMultistepScheduler(prediction_type=p),
        ("epsilon", "v_prediction"),
    ),
    "flow-heun-shift3": (lambda p: FlowMatchHeunDiscreteScheduler(shift=3.0), ("flow",)),
    "flow-lcm-shift3": (lambda p: FlowMatchLCMScheduler(shift=3.0), ("flow",)),
}
BRIDGE = [(name, p) for name, (_, preds) in SCHEDULERS.items() for p in preds]


@pytest.mark.parametrize("library_schedule", [None, "vp-cosine", "rf", "edm"])
@pytest.mark.parametrize(("name", "prediction"), BRIDGE)
def test_bridge_reproduces_the_gaussian_posterior_mean(name, prediction, library_schedule):
    rng = torch.Generator().manual_seed(0)
    mu = torch.randn(SHAPE, generator=rng, dtype=F64)
    var = 0.2 + torch.rand(SHAPE, generator=rng, dtype=F64)
    sched = SCHEDULERS[name][0](prediction)
    lib = None if library_schedule is None else get_schedule(library_schedule)
    teacher = DiffusersTeacher(GaussianOracle(sched, mu, var), sched, schedule=lib)
    s = teacher.schedule
    n = 256
    u = torch.cat(
        [torch.tensor([0.0, 1.0], dtype=F64), torch.rand(n - 2, generator=rng, dtype=F64)]
    )
    t = s.t_min + (s.t_max - s.t_min) * u
    alpha, sigma = (c.reshape(-1, 1) for c in s.alpha_sigma(t))
    x0 = mu.reshape(1, -1) + var.reshape(1, -1).sqrt() * torch.randn(n, 4, generator=rng, dtype=F64)
    x_t = alpha * x0 + sigma * torch.randn(n, 4, generator=rng, dtype=F64)
    m, v = mu.reshape(1, -1), var.reshape(1, -1)
    exact = m + alpha * v / (alpha**2 * v + sigma**2) * (x_t - alpha * m)
    got = teacher.denoise(x_t, t)
    assert got.dtype == F64 and got.shape == x_t.shape
    # float64 throughout, but eps -> x0 divides by alpha, down to 5e-5 at the cosine table's top:
    # the oracle's and the adapter's interpolations round alpha differently (~1e-13 relative),
    # which becomes ~1e-9 there; 1e-8 still checks eight digits
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-8)


def test_outside_the_trained_range_stays_finite():
    sched = DDPMScheduler(prediction_type="epsilon")
    teacher = DiffusersTeacher(_oracle(sched), sched, schedule=get_schedule("rf"))
    assert teacher.schedule.t_min > get_schedule("rf").t_min  # sigma/alpha 0.01 > rf's 0.002
    t = torch.tensor([0.0, 0.999, 1.0], dtype=F64)
    assert torch.isfinite(teacher.denoise(torch.randn(3, 4, dtype=F64), t)).all()


def test_zero_snr_top_is_pure_noise():
    sched = DDIMScheduler(**SD, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    mu = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=F64)
    teacher = DiffusersTeacher(GaussianOracle(sched, mu, torch.ones(SHAPE, dtype=F64)), sched)
    assert teacher.schedule.alpha_sigma(torch.ones(1, dtype=F64)) == (0, 1)  # x_T = eps exactly
    x_t = torch.randn(3, 4, dtype=F64)  # alpha = 0: E[x0 | x_T] is the data mean (x0 = -v)
    torch.testing.assert_close(teacher.denoise(x_t, torch.ones(3)), mu.reshape(1, 4).expand(3, 4))
    assert teacher.schedule.t_max < 1  # samplers start where sigma/alpha = 4096, as Euler's clamp


@pytest.mark.parametrize(
    "sched",
    [
        DDPMScheduler(),
        DDIMScheduler(**SD),
        DDIMScheduler(beta_schedule="squaredcos_cap_v2"),
        DDIMScheduler(**SD, rescale_betas_zero_snr=True, prediction_type="v_prediction"),
        EulerDiscreteScheduler(**SD, rescale_betas_zero_snr=True, prediction_type="v_prediction"),
    ],
)
def test_vp_table_matches_the_scheduler_at_integer_steps(sched):
    teacher = DiffusersTeacher(_oracle(sched), sched)
    n = len(sched.alphas_cumprod)
    a, s = teacher.schedule.alpha_sigma(torch.arange(n, dtype=F64) / (n - 1))
    abar = sched.alphas_cumprod.double()
    torch.testing.assert_close(a, abar.sqrt(), rtol=1e-12, atol=1e-12)  # the same table, float64
    torch.testing.assert_close(s, (1 - abar).sqrt(), rtol=1e-12, atol=1e-12)


def test_vp_linear_schedule_is_diffusers_ddpm_table():
    a, s = DiffusersTeacher(_oracle(DDPMScheduler()), DDPMScheduler()).schedule.alpha_sigma(
        torch.linspace(0, 1, 999, dtype=F64)
    )
    a_lib, s_lib = get_schedule("vp-linear").alpha_sigma(torch.linspace(0, 1, 999, dtype=F64))
    # diffusers' abar is a float32 cumulative product: a few 6e-8 ulps over 1000 factors, so
    # alpha is off by ~1e-7 and sigma = sqrt(1 - abar) by up to 6e-8 / (2 sigma) = 3e-6 at
    # the clean end (sigma = 0.01)
    torch.testing.assert_close(a, a_lib, rtol=0, atol=3e-7)
    torch.testing.assert_close(s, s_lib, rtol=0, atol=3e-6)


def test_flow_and_edm_schedules_match_the_scheduler_grids():
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    u = torch.arange(1000, 0, -1, dtype=F64) / 1000
    _, s = DiffusersTeacher(_oracle(flow), flow).native_schedule.alpha_sigma(u)
    torch.testing.assert_close(s, flow.sigmas.double(), rtol=1e-6, atol=0)  # float32 table
    edm = EDMEulerScheduler()
    ramp = torch.arange(1001, dtype=F64) / 1000
    _, s = DiffusersTeacher(_oracle(edm), edm).native_schedule.alpha_sigma(1 - ramp)
    torch.testing.assert_close(s, edm.sigmas[:-1].double(), rtol=1e-7, atol=0)  # float32 ramp


def _tiny_unet(**extra) -> UNet2DModel:
    torch.manual_seed(0)
    blocks = {
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
    }
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        **blocks,
        **extra,
    ).eval()


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_library_ddim_equals_diffusers_ddim_steps(prediction, clip):
    unet = _tiny_unet()
    sched = DDIMScheduler(prediction_type=prediction, clip_sample=clip, timestep_spacing="trailing")
    assert (DiffusersTeacher(unet, sched).clip_sample is not None) == clip
    teacher = DiffusersTeacher(unet, sched)
    sched.set_timesteps(4)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = z
    with torch.no_grad():
        for k in sched.timesteps:
            # with clip_sample, DDIM's step is in D-form (eps from the clipped x0) only with
            # use_clipped_model_output; the adapter's D is the clipped x0
            x = sched.step(unet(x, k).sample, k, x, use_clipped_model_output=clip).prev_sample
        ts = sched.timesteps.double() / 999  # trailing: 999, 749, 499, 249, then x = D
        ours = ddim(teacher.denoise, teacher.schedule, z.flatten(1), ts).reshape(x.shape)
    # same float32 network calls; coefficients rounded differently: ulps, amplified by 1/alpha
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4 * float(x.abs().max()))


def _manual_x0(unet, sched, x, k, labels=None):
    out = unet(x, torch.full((x.shape[0],), float(k)), class_labels=labels).sample
    return sched.step(out[:, :1], int(k), x).pred_original_sample


def test_load_a_ddpm_pipeline_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet, sched = _tiny_unet(), DDPMScheduler(clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    teacher = load_diffusers_teacher(tmp_path / "pipe")
    assert (teacher.family, teacher.num_classes, teacher.dim, teacher.shape) == (
        "vp",
        0,
        64,
        (1, 8, 8),
    )
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    assert isinstance(teacher, Teacher)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = teacher.denoise(x, torch.full((3,), 500 / 999))
        want = _manual_x0(unet, sched, x.reshape(3, 1, 8, 8), 500).flatten(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [HeunDiscreteScheduler, UniPCMultistepScheduler])
def test_a_folder_saved_with_another_beta_table_scheduler_is_the_same_teacher(tmp_path, cls):
    """A pipeline shipped with Heun or UniPC (not in the adapter's name list) holds the same
    beta table as DDPM's, so the same UNet is the same denoiser; the check reads the table."""
    unet, ddpm = _tiny_unet(), DDPMScheduler(clip_sample=False, **SD)
    DDPMPipeline(unet=unet, scheduler=ddpm).save_pretrained(tmp_path / "ddpm")
    DDPMPipeline(unet=unet, scheduler=cls.from_config(ddpm.config)).save_pretrained(
        tmp_path / "other"
    )
    a, b = load_diffusers_teacher(tmp_path / "ddpm"), load_diffusers_teacher(tmp_path / "other")
    assert type(b.scheduler) is cls and b.family == "vp"
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(b.denoise(x, t), a.denoise(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("max_value", [1.0, 3.0])
def test_dynamic_thresholding_is_the_schedulers_own(tmp_path, max_value):
    """``thresholding=True`` (Imagen's dynamic thresholding) replaces clipping in diffusers'
    step; the teacher's x0 must be the scheduler's ``pred_original_sample``, and the exported
    LCM scheduler must threshold the same way."""
    from scoredistill.export import cut_lcm_scheduler

    unet = _tiny_unet()
    sched = DDPMScheduler(thresholding=True, sample_max_value=max_value, clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    teacher = load_diffusers_teacher(tmp_path / "pipe")
    assert teacher.threshold == (0.995, max_value)
    x = 4 * torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    for k in (1, 500, 999):
        with torch.no_grad():
            got = teacher.denoise(x, torch.full((3,), k / 999))
            want = _manual_x0(unet, sched, x.reshape(3, 1, 8, 8), k).flatten(1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lcm = cut_lcm_scheduler(teacher, 1000, 4, 10.0)
    assert lcm.config.thresholding and lcm.config.sample_max_value == max_value
    big = 5 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(lcm._threshold_sample(big), sched._threshold_sample(big))


def test_load_a_bare_class_conditional_unet_with_a_scheduler_folder(tmp_path):
    unet, sched = (
        _tiny_unet(num_class_embeds=3),
        DDPMScheduler(clip_sample=False, prediction_type="v_prediction"),
    )
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "sched")
    teacher = load_diffusers_teacher(tmp_path / "unet", scheduler=tmp_path / "sched")
    assert (teacher.num_classes, teacher.null_index, teacher.prediction) == (2, 2, "v")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = teacher.denoise(x, torch.full((3,), 300 / 999), torch.tensor([0, 1, -1]))
        want = _manual_x0(unet, sched, x, 300, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"cond labels must lie in \[-1, 1\]"):
        teacher.denoise(x, torch.full((3,), 0.5), torch.tensor([0, 1, 2]))


def test_load_a_dit_with_learned_sigma(tmp_path):
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=2,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=4,
    ).eval()
    dit.save_pretrained(tmp_path / "dit")
    sched = DDPMScheduler(clip_sample=False)
    sched.save_pretrained(tmp_path / "dit")  # scheduler_config.json beside config.json
    teacher = load_diffusers_teacher(tmp_path / "dit")
    assert (teacher.num_classes, teacher.null_index, teacher.dim) == (4, 4, 64)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = teacher.denoise(x, torch.full((2,), 700 / 999), torch.tensor([3, -1]))
        out = dit(x, timestep=torch.full((2,), 700.0), class_labels=torch.tensor([3, 4])).sample
        want = sched.step(out[:, :1], 700, x).pred_original_sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def pipe_dir(tmp_path):
    DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(cfg | changes))


def _error(path, **kwargs) -> str:
    with pytest.raises(TeacherFolderError) as info:
        load_diffusers_teacher(path, **kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    return str(info.value)


def test_errors_name_the_problem(tmp_path, pipe_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _error("google/ddpm-cifar10-32")
    assert "not a local folder" in msg and "offline" in msg and "--local-dir" in msg
    assert "no such folder" in _error(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert "neither model_index.json" in _error(tmp_path / "junk")
    assert "scheduler_config.json: not found" in _error(pipe_dir / "unet")
    (tmp_path / "latent").mkdir()
    vae = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]}
    (tmp_path / "latent" / "model_index.json").write_text(
        json.dumps(vae | {"vae": ["diffusers", "AutoencoderKL"]})
    )
    assert "has a 'vae'" in _error(tmp_path / "latent")
    _edit_json(pipe_dir / "scheduler" / "scheduler_config.json", prediction_type="score")
    msg = _error(pipe_dir)
    assert "prediction_type 'score'" in msg and "valid: epsilon, v_prediction, sample" in msg
    _edit_json(pipe_dir / "scheduler" / "scheduler_config.json", _class_name="KarrasVeScheduler")
    assert "scheduler class 'KarrasVeScheduler' is not supported" in _error(pipe_dir)
    _edit_json(pipe_dir / "scheduler" / "scheduler_config.json", _class_name="IPNDMScheduler")
    msg = _error(pipe_dir)  # a diffusers scheduler without a beta table
    assert "'IPNDMScheduler' is not supported" in msg and "discrete beta table" in msg
    _edit_json(pipe_dir / "model_index.json", unet=["diffusers", "UNet9000Model"])
    msg = _error(pipe_dir)  # diffusers' own from_pretrained would refuse this folder too
    assert "model_index.json: 'unet'" in msg and "names no diffusers model class" in msg


def test_errors_for_models_and_weights(tmp_path, pipe_dir):
    sched = pipe_dir / "scheduler"
    _edit_json(pipe_dir / "unet" / "config.json", _class_name="UNet2DConditionModel")
    assert "forward must take (sample, timestep, class_labels)" in _error(
        pipe_dir / "unet", scheduler=sched
    )
    _edit_json(pipe_dir / "unet" / "config.json", _class_name="os.system")
    assert "is not a diffusers ModelMixin class" in _error(pipe_dir / "unet", scheduler=sched)
    _edit_json(pipe_dir / "unet" / "config.json", _class_name="UNet2DModel")
    (pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 9)
    assert "corrupt" in _error(pipe_dir)
    DDPMPipeline(
        unet=_tiny_unet(), scheduler=DDIMScheduler(rescale_betas_zero_snr=True)
    ).save_pretrained(tmp_path / "zero")
    assert "prediction_type 'epsilon': a zero terminal SNR table" in _error(tmp_path / "zero")
