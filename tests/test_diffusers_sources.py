"""Students and critics from a diffusers teacher: initial values equal the teacher's denoiser,
gradients reach only the copies, the GAN head sits on the bottleneck, and the existing
objectives and the two-player loop run them unchanged on a tiny 8×8 UNet."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, LCMScheduler, UNet2DModel

from scoredistill.objectives import OBJECTIVES
from scoredistill.sources.diffusers import (
    DiffusersGenerator,
    lcm_timesteps,
    make_diffusers_critic,
)
from scoredistill.teachers.diffusers import DiffusersTeacher
from scoredistill.train.two_player import TwoPlayerConfig, train_two_player

BLOCKS = {
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}


def _teacher(num_class_embeds: int | None = None, prediction: str = "epsilon") -> DiffusersTeacher:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
        **BLOCKS,
    )
    sched = DDPMScheduler(prediction_type=prediction, clip_sample=False)
    return DiffusersTeacher(unet.eval().requires_grad_(False), sched)


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("top", "steps"), [(999, 1), (999, 4), (999, 3), (624, 1), (600, 2)])
def test_student_grid_is_lcm_schedulers_grid(top, steps):
    n = steps * ((top + 1) // steps)
    lcm = LCMScheduler(num_train_timesteps=n, original_inference_steps=steps)
    lcm.set_timesteps(steps)
    assert lcm_timesteps(top, steps) == tuple(lcm.timesteps.tolist())
    assert lcm_timesteps(999, 4) == (999, 749, 499, 249)  # DMD2's SDXL 4-step grid


def test_one_step_generator_at_init_is_the_teacher_at_pure_noise():
    teacher = _teacher()
    gen = DiffusersGenerator(teacher)
    assert (
        gen.timesteps == (999,)
        and gen.ts == (1.0,)
        and gen.init_scale == pytest.approx(1, abs=1e-12)
    )
    z = gen.sample_latent(3, _rng(0))
    with torch.no_grad():
        torch.testing.assert_close(gen(z), teacher.denoise(z, torch.ones(3)), rtol=1e-6, atol=1e-6)
    sid = DiffusersGenerator(teacher, sigma_init=2.5)  # SiD's VE level -> nearest timestep
    (k,) = sid.timesteps
    a, s = teacher.native_schedule.alpha_sigma(
        torch.tensor([k - 1, k, k + 1], dtype=torch.float64) / 999
    )
    assert abs(math.log(s[1] / a[1] / 2.5)) <= min(abs(math.log(s[i] / a[i] / 2.5)) for i in (0, 2))


def test_four_step_generator_is_the_teacher_rollout_with_fresh_noise():
    teacher = _teacher(num_class_embeds=3, prediction="v_prediction")
    gen = DiffusersGenerator(teacher, steps=4)
    z, c = gen.sample_latent(2, _rng(1)), torch.tensor([1, -1])
    with torch.no_grad():
        got = gen(z, c, rng=_rng(2))
        rng, x_t = _rng(2), z
        for j, t in enumerate(gen.ts):
            x = teacher.denoise(x_t, torch.full((2,), t, dtype=torch.float64), c)
            if j + 1 < len(gen.ts):
                a, s = teacher.schedule.alpha_sigma(
                    torch.tensor([gen.ts[j + 1]], dtype=torch.float64)
                )
                x_t = float(a) * x + float(s) * torch.randn(2, 64, generator=rng)
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # backward simulation to step k replays the same first k - 1 steps
        x_k, k = gen.backward_simulation(z, c, rng=_rng(2), k=4)
    assert k == 4
    torch.testing.assert_close(x_k, got)


def test_gradients_reach_the_copy_never_the_teacher():
    teacher = _teacher(num_class_embeds=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    gen = DiffusersGenerator(teacher, steps=2)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    x = gen(gen.sample_latent(2, _rng(3)), torch.tensor([0, 1]), rng=_rng(4), k=2)
    x.square().sum().backward()
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    opt.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_gradient_checkpointing_gives_the_same_gradients():
    teacher, grads = _teacher(), []
    for flag in (False, True):
        gen = DiffusersGenerator(teacher, gradient_checkpointing=flag)
        assert gen.denoiser.model.is_gradient_checkpointing == flag
        gen(gen.sample_latent(2, _rng(5))).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in gen.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_critic_at_init_equals_the_teacher_and_its_head_reads_the_bottleneck():
    teacher = _teacher(num_class_embeds=3)
    critic = make_diffusers_critic(teacher, logit_head=True, head_width=16)
    x, t, c = (
        torch.randn(4, 64, generator=_rng(6)),
        torch.rand(4, generator=_rng(7)),
        torch.tensor([0, 1, -1, 0]),
    )
    with torch.no_grad():
        torch.testing.assert_close(critic(x, t, c), teacher.denoise(x, t, c))
    logit = critic(x, t, c, output="logit")
    assert logit.shape == (4,) and torch.isfinite(logit).all()
    logit.sum().backward()
    model = critic.denoiser.model
    assert all(p.grad is not None for p in critic.head.parameters())
    assert all(p.grad is not None for p in model.mid_block.parameters())
    assert all(p.grad is None for p in model.up_blocks.parameters())  # the forward stopped
    assert all(p.grad is None for p in teacher.parameters())


def test_dit_critic_head_reads_the_middle_block():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=2,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=4,
    )
    teacher = DiffusersTeacher(dit.eval().requires_grad_(False), DDPMScheduler())
    critic = make_diffusers_critic(teacher, logit_head=True, head_width=8)
    assert critic.logit(torch.randn(3, 64), torch.rand(3), torch.tensor([0, 3, -1])).shape == (3,)


@pytest.mark.parametrize("name", ["dmd", "sid"])
def test_an_existing_objective_runs_end_to_end(name):
    teacher = _teacher(num_class_embeds=3)
    obj = OBJECTIVES[name]()
    if name == "dmd":
        obj = dataclasses.replace(obj, gan_generator_weight=3e-3)  # DMD2 + GAN (ImageNet-64)
    gen = DiffusersGenerator(teacher, steps=1)
    critic = make_diffusers_critic(teacher, logit_head=name == "dmd", head_width=16)
    rng, c = _rng(8), torch.tensor([0, 1, -1])
    x = gen(gen.sample_latent(3, rng), c)
    loss = obj.generator_loss(x, c, teacher=teacher, critic=critic, rng=rng)
    assert torch.isfinite(loss.value)
    loss.value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.parameters())
    # critic == teacher at init: SiD's update is exactly 0 there (its fixed point); DMD2's GAN
    # term is not
    assert (sum(float(p.grad.abs().sum()) for p in gen.parameters()) > 0) == (name == "dmd")
    real = {"real": (torch.randn(3, 64, generator=rng), c)} if name == "dmd" else {}
    closs = obj.critic_loss(x.detach(), c, critic=critic, rng=rng, **real)
    closs.value.backward()
    assert torch.isfinite(closs.value) and critic.denoiser.model.conv_in.weight.grad is not None


def test_two_player_loop_trains_a_four_step_diffusers_student(tmp_path):
    teacher = _teacher()
    gen, critic = DiffusersGenerator(teacher, steps=4), make_diffusers_critic(teacher)
    cfg = TwoPlayerConfig(
        steps=2, batch_size=4, critic_updates=1, eval_every=0, checkpoint_every=2, log_every=1
    )
    out = train_two_player(
        cfg,
        objective=OBJECTIVES["dmd"](),
        generator=gen,
        critic=critic,
        teacher=teacher,
        sample_latent=gen.sample_latent,
        sample_cond=None,
        evaluate=lambda g: {},
        out_dir=tmp_path,
    )
    assert math.isfinite(out["logs"]["generator_loss"]) and (tmp_path / "checkpoints").is_dir()
    assert all(p.grad is None for p in teacher.parameters())


def test_a_bf16_teacher_gives_float32_students_and_outputs():
    teacher = _teacher()
    teacher.model.to(torch.bfloat16)
    gen, critic = DiffusersGenerator(teacher), make_diffusers_critic(teacher)
    assert all(p.dtype == torch.float32 for p in [*gen.parameters(), *critic.parameters()])
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())  # the teacher is untouched
    x = torch.randn(2, 64)
    assert teacher.denoise(x, torch.full((2,), 0.5)).dtype == torch.float32


def test_sdpa_and_eager_attention_give_the_same_denoiser():
    """``student.attention``: the fused SDPA kernel and the explicit softmax agree to float32
    rounding, and the processors really change (attention blocks at the lowest level)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    from scoredistill.sources.diffusers import set_attention
    from scoredistill.train.unet_teacher import make_unet

    torch.manual_seed(0)
    unet = make_unet(8, 1, 10, channels=(16, 32), attention=True).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 500, 900])
    labels = torch.tensor([0, 3, 5, 9])
    outs = {}
    for kind, processor in (("sdpa", AttnProcessor2_0), ("eager", AttnProcessor)):
        assert set_attention(unet, kind) >= 1
        assert all(
            isinstance(m.processor, processor) for m in unet.modules() if isinstance(m, Attention)
        )
        with torch.no_grad():
            outs[kind] = unet(x, t, class_labels=labels).sample
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(outs["sdpa"], torch.zeros_like(outs["sdpa"]))
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention(unet, "flash")
