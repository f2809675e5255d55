"""sCM on a diffusers teacher (``scm-unet``): the TrigFlow view of the LCM network
(``TrigFlowLCM``) against diffusers' own table, the forward-mode JVP through a UNet with
attention against central differences, and the objective's contract on it.

The teachers are tiny random ``UNet2DModel`` folders saved by diffusers (``conftest.teacher_dir``
has no attention; ``attn_teacher`` below has attention at the low resolution and in the
mid-block, as the bundled digits teacher); random weights suffice: every check is an identity
between two computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scoredistill.cli import main
from scoredistill.objectives.scm import SCM, student_jvp
from scoredistill.sources.diffusers_consistency import (
    LCMConsistency,
    TrigFlowLCM,
    forward_ad_attention,
)
from scoredistill.teachers.diffusers import load_diffusers_teacher

SD = 0.5


@pytest.fixture(scope="module")
def attn_teacher(tmp_path_factory):
    from diffusers import DDPMPipeline, DDPMScheduler

    from scoredistill.train.unet_teacher import make_unet

    torch.manual_seed(0)
    unet = make_unet(8, 1, 10, channels=(16, 32), attention=True)
    folder = tmp_path_factory.mktemp("attn-teacher") / "pipeline"
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return load_diffusers_teacher(folder)


def _student(teacher, dtype=torch.float32) -> TrigFlowLCM:
    torch.manual_seed(1)
    lcm = LCMConsistency(teacher)
    assert forward_ad_attention(lcm.denoiser.model) > 0
    return TrigFlowLCM(lcm, SD).to(dtype)


def test_angles_land_on_diffusers_table(attn_teacher):
    """theta of table entry k (from ``DDPMScheduler.alphas_cumprod``) maps back to index k and to
    the native sample ``sqrt(abar_k) x_hat / cos(theta)``; the range ends are entries 0 and N-1."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    s = _student(attn_teacher)
    ks = torch.tensor([0, 7, 250, 500, 981, 999])
    theta = torch.atan(((1 - abar[ks]) / abar[ks]).sqrt() / SD)
    x_hat = torch.randn(len(ks), 64, dtype=torch.float64)
    x_k, t = s._native(x_hat, theta)
    assert torch.allclose(t * 999, ks.double(), atol=1e-6)
    assert torch.allclose(x_k, x_hat * (abar[ks].sqrt() / torch.cos(theta))[:, None], rtol=1e-9)
    assert s.theta_range == pytest.approx((float(theta[0]), float(theta[-1])), rel=1e-9)


def test_forward_ad_attention_keeps_the_outputs(attn_teacher):
    """Eager attention + contiguous outputs = the teacher's SDPA network, value for value."""
    s = _student(attn_teacher)
    x, k = torch.randn(4, 64), torch.tensor([3.0, 200.0, 600.0, 999.0]) / 999
    labels = torch.tensor([0, 4, 8, 9])
    with torch.no_grad():
        ref = attn_teacher.denoise(x, k, labels)
        got = s.f.denoiser.denoise(x, k, labels)
    assert torch.allclose(got, ref, atol=1e-5)


def test_jvp_through_attention_matches_central_differences(attn_teacher):
    """``torch.func.jvp`` of ``F`` along (v_x, v_theta) through a UNet with attention equals a
    float64 central difference; the error falls ~4x when h halves (second order), so the two
    compute the same derivative. Angles stay away from pi/2, where F ~ 1/cos(theta) and the
    time embedding's float32 cast (diffusers) dominates a difference quotient."""
    s = _student(attn_teacher, torch.float64).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(6, 64, generator=g, dtype=torch.float64)
    theta = torch.tensor([0.05, 0.3, 0.6, 0.9, 1.1, 1.3], dtype=torch.float64)
    v_x = torch.randn(6, 64, generator=g, dtype=torch.float64)
    v_t = torch.cos(theta) * torch.sin(theta)
    labels = torch.arange(6)
    jvp = student_jvp(s, x, theta, v_x, v_t, labels)
    errs = []
    for eps in (4e-4, 2e-4):
        fd = student_jvp(s, x, theta, v_x, v_t, labels, mode="finite-diff", eps=eps)
        errs.append(float((jvp - fd).abs().max() / jvp.abs().max()))
    assert errs[1] < 2e-3 and errs[1] < 0.5 * errs[0]


def test_scm_loss_trains_the_student_only(attn_teacher):
    s = _student(attn_teacher).train()
    x0, labels = torch.rand(4, 64) * 2 - 1, torch.arange(4)
    rng = torch.Generator().manual_seed(0)
    loss = SCM(tangent_warmup_steps=0).loss(
        x0, labels, student=s, teacher=attn_teacher, rng=rng, step=0
    )
    loss.value.backward()
    assert torch.isfinite(loss.value) and loss.logs["r"] == 1.0
    assert s.logvar_head.weight.grad is not None
    assert all(p.grad is not None for p in s.f.parameters() if p.requires_grad)
    assert all(p.grad is None for p in attn_teacher.parameters())


def test_scm_clamps_angles_to_the_table(attn_teacher):
    """Levels below the table's smallest (sigma/alpha 6e-3 on the cosine table; here log sigma ~
    N(-6, 1.4) puts most draws there) are clamped to ``theta_range``, the network's levels."""
    s = _student(attn_teacher)
    seen = []
    s.logvar = lambda theta: (seen.append(theta.detach()), torch.zeros_like(theta))[1]
    SCM(p_mean=-6.0).loss(
        torch.zeros(16, 64), None, student=s, teacher=attn_teacher,
        rng=torch.Generator().manual_seed(0), step=0,
    )  # fmt: skip
    theta, (lo, hi) = seen[0].double(), s.theta_range
    assert int((theta == torch.tensor(lo, dtype=torch.float32).double()).sum()) > 8
    assert float(theta.min()) >= lo * (1 - 1e-6) and float(theta.max()) <= hi


@pytest.mark.parametrize(("m", "stride", "top"), [(50, 0, 999), (49, 0, 979), (47, 20, 939)])
def test_theta_range_tops_at_the_grids_first_timestep(attn_teacher, m, stride, top):
    """sCM trains no level above the sampler's first timestep: tan(theta_max) sigma_d is
    sigma/alpha of ``DDPMScheduler.alphas_cumprod[top]`` (diffusers' own table)."""
    from diffusers import DDPMScheduler

    abar = float(DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod[top])
    s = TrigFlowLCM(LCMConsistency(attn_teacher, original_steps=m, stride=stride), SD)
    assert s.timesteps(1) == (top,)
    assert SD * math.tan(s.theta_range[1]) == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-4)


def test_dry_run_and_a_bad_grid(teacher_dir, capsys):
    args = ["distill", "--preset", "scm-unet", "--teacher", teacher_dir, "--out", "unused"]
    assert main([*args, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "scm" and out["objective"]["tangent_warmup_steps"] == 400
    assert main([*args, "--dry-run", "--set", "student.original_steps=2000"]) == 2
    assert "student.original_steps" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_exports_the_lcm_network(teacher_dir, tmp_path):
    """The sCM student's pipeline is the LCM network's: same folder layout as ``cd-unet``, and
    the exported UNet holds the trained weights (not the teacher's)."""
    from diffusers import DiffusionPipeline

    out = tmp_path / "run"
    args = ["distill", "--preset", "scm-unet", "--teacher", teacher_dir, "--quick"]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_steps"]) == {"1", "2", "4"}
    assert all(math.isfinite(m["fd"]) for m in metrics["by_steps"].values())
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, local_files_only=True).unet
    moved = [
        float((a - b).abs().max())
        for a, b in zip(pipe.unet.parameters(), teacher.parameters(), strict=True)
    ]
    assert max(moved) > 0
