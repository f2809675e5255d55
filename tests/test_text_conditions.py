"""Objectives on text conditions: a ``TextCond`` and the prompt ids of the same prompts give the
same loss and the same gradient, under the same rng (label dropout, class-ε pairs, the null
branches of BSD/CSD/ISM and guidance all take the structured condition)."""

from __future__ import annotations

import pytest
import torch

from scoredistill.objectives import BSD, CSD, DMD, ISM, SDS, VSD, SiD
from scoredistill.sources.diffusers import make_diffusers_critic
from scoredistill.teachers.diffusers_latent import load_latent_teacher

PROMPTS = ["a handwritten 3", "a bold handwritten 7", "a thin handwritten 1"]
OBJECTIVES = {
    "sds": SDS(),
    "vsd": VSD(guidance=2.0, cond_drop=0.5),
    "bsd": BSD(),
    "csd": CSD(),
    "ism": ISM(),
    "dmd": DMD(guidance=2.0),
    "sid": SiD(guidance=2.0, guidance_fake=2.0, guidance_critic=2.0, cond_drop=0.5),
}


@pytest.fixture(scope="module")
def players(sd_folder):
    teacher = load_latent_teacher(sd_folder)
    teacher.set_prompt_labels(PROMPTS)
    critic = make_diffusers_critic(teacher).requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a critic that is not the teacher: every update is nonzero
        for p in critic.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return teacher, critic


def _grads(obj, x, cond, teacher, critic):
    x = x.clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(3)
    loss = obj.generator_loss(x, cond, teacher=teacher, critic=critic, rng=rng)
    loss.value.backward()
    extra = None
    if hasattr(obj, "critic_loss"):
        extra = obj.critic_loss(x.detach(), cond, critic=critic, rng=rng).value
    return loss.value.detach(), x.grad, extra


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_text_condition_equals_prompt_ids(name, players):
    teacher, critic = players
    ids = torch.tensor([0, 1, 2, 0, 2, 1])
    text = teacher.encode_prompts([PROMPTS[i] for i in ids.tolist()])
    x = torch.randn(len(ids), teacher.dim, generator=torch.Generator().manual_seed(1))
    by_ids = _grads(OBJECTIVES[name], x, ids, teacher, critic)
    by_text = _grads(OBJECTIVES[name], x, text, teacher, critic)
    assert by_ids[1].abs().sum() > 0, "no gradient reached the sample"
    for a, b in zip(by_ids, by_text, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
