"""SFD forgetting a prompt on the text-to-image path (preset ``sfd-sd``, bundled digits teacher).

Prompts are labels there (prompt ``i`` is label ``i``), so SFD's label override is the prompt
override: rows of the forgotten prompt ask the teacher for the safe prompt's *text embedding*
while the fake keeps the forgotten prompt's, and every other row gets SiD-LSG's gradient bit for
bit. The embeddings are checked against ``encode_prompts`` of the texts, not against labels."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scoredistill.cli import main
from scoredistill.runs.sd import load_teacher, prompt_forgetting, resolve_sd

pytestmark = pytest.mark.usefixtures("one_thread")

FORGET, SAFE = "a handwritten 3", "a handwritten 8"  # the preset's pair


@pytest.fixture(scope="module")
def players():
    """``(sfd, sid_lsg, teacher, critic)``: the two presets' resolved ``(config, objective)`` on
    the bundled teacher and a fake that differs from it (seeded noise on a copy), so ``f_r -
    f_f`` is not zero."""
    from scoredistill.sources.diffusers import make_diffusers_critic

    sfd, sid = resolve_sd("sfd-sd", []), resolve_sd("sid-lsg-sd", [])
    teacher = load_teacher(sfd[0])
    torch.manual_seed(0)
    critic = make_diffusers_critic(teacher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return sfd, sid[1], teacher, critic


class _Spy:
    """A denoiser recording the condition of every call (everything else: the network's)."""

    def __init__(self, net) -> None:
        self.net, self.conds = net, []

    def denoise(self, x_t, t, cond=None):
        self.conds.append(cond.clone())
        return self.net.denoise(x_t, t, cond)

    def __getattr__(self, name):
        return getattr(self.net, name)


def _batch(teacher, n: int = 12):
    g = torch.Generator().manual_seed(2)
    cond = torch.randint(teacher.num_classes, (n,), generator=g)
    cond[:3] = teacher.prompt_table.prompts.index(FORGET)  # at least three forget rows
    return torch.randn(n, 64, generator=g), cond


def test_preset_is_sid_lsg_with_the_prompts_as_labels(players):
    sfd, sid_lsg, teacher, _ = players
    prompts = list(teacher.prompt_table.prompts)
    config, objective = sfd
    assert (objective.forget_class, objective.safe_class) == (13, 18)  # independent of the code:
    assert prompts[13] == FORGET and prompts[18] == SAFE  # the bundled list's order
    assert objective.base == sid_lsg  # every other row: sid-lsg-sd's objective, field for field
    assert config.objective["forget_class"] == 13  # config.json shows the labels


def test_forget_rows_ask_the_teacher_for_the_safe_prompt_and_the_fake_keeps_it(players):
    sfd, _, teacher, critic = players
    x, cond = _batch(teacher)
    spy_t, spy_c = _Spy(teacher), _Spy(critic)
    rng = torch.Generator().manual_seed(3)
    sfd[1].generator_loss(x, cond, teacher=spy_t, critic=spy_c, rng=rng)
    n, forget = len(cond), cond == 13
    safe_emb, forget_emb = teacher.encode_prompts([SAFE, FORGET]).embeds

    def embeds(c):  # the text embeddings the network was given for the conditional half
        return teacher.network_condition(c[n:], n, torch.device("cpu"))["encoder_hidden_states"]

    (asked_t,), (asked_c,) = spy_t.conds, spy_c.conds  # one guided call each: [null; cond]
    assert (asked_t[:n] == -1).all() and (asked_c[:n] == -1).all()  # CFG's null halves
    e_t, e_c = embeds(asked_t), embeds(asked_c)
    assert torch.equal(e_t[forget], safe_emb.expand(int(forget.sum()), -1, -1))
    assert torch.equal(e_c[forget], forget_emb.expand(int(forget.sum()), -1, -1))
    assert torch.equal(e_t[~forget], e_c[~forget])  # other rows: the same prompt to both
    assert torch.equal(asked_c[n:], cond)


def _grad_x(objective, x, cond, teacher, critic, seed: int):
    xx = x.clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(seed)
    objective.generator_loss(xx, cond, teacher=teacher, critic=critic, rng=rng).value.backward()
    return xx.grad


def test_other_rows_get_sid_lsgs_gradient_bit_for_bit(players):
    sfd, sid_lsg, teacher, critic = players
    x, cond = _batch(teacher)
    got = _grad_x(sfd[1], x, cond, teacher, critic, seed=4)
    want = _grad_x(sid_lsg, x, cond, teacher, critic, seed=4)
    keep = cond != 13
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=0)  # same arithmetic per row
    assert not torch.allclose(got[~keep], want[~keep])  # the forget rows do move elsewhere
    # the same pair made by hand: the preset is SFD with these labels and nothing else
    by_hand = dataclasses.replace(sfd[1], forget_class=13, safe_class=18)
    assert torch.equal(_grad_x(by_hand, x, cond, teacher, critic, seed=4), got)


@pytest.mark.parametrize(
    ("preset", "sets", "needle"),
    [
        ("sfd-sd", ["forget_prompt=a handwritten 42"], "'forget_prompt'"),
        ("sfd-sd", ["safe_prompt=a cat"], "'safe_prompt'"),
        ("sfd-sd", [f"safe_prompt={FORGET}"], "'safe_prompt'"),
        ("sfd-sd", ["prompts=PROMPTS"], "'safe_prompt'"),  # a list without the preset's pair
        ("sfd-sd", ["prompts=TWICE", "safe_prompt=a bold handwritten 7"], "'forget_prompt'"),
        ("sid-lsg-sd", [f"forget_prompt={FORGET}"], "'forget_prompt'"),
    ],
)
def test_bad_prompts_are_one_line_exit_2(preset, sets, needle, tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text(f"{FORGET}\na bold handwritten 7\n")
    (tmp_path / "twice.txt").write_text(f"{FORGET}\na bold handwritten 7\n{FORGET}\n")
    sets = [s.replace("PROMPTS", str(path)) for s in sets]
    sets = [s.replace("TWICE", str(tmp_path / "twice.txt")) for s in sets]
    args = ["distill", "--preset", preset, "--out", str(tmp_path / "o")]
    code = main([*args, *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


class _Digits:
    """A stand-in student: prompt ``i`` draws one fixed real image of digit ``show[i]``."""

    def __init__(self, images, show) -> None:
        self.images, self.show = images, show

    def sample_latent(self, n, rng):
        return torch.zeros(n, 64)

    def __call__(self, z, labels, rng=None):
        return self.images[self.show[labels]]


class _Teacher:
    image_shape = (1, 8, 8)

    def __init__(self, prompts) -> None:
        self.prompt_table = type("T", (), {"prompts": tuple(prompts)})()

    def decode(self, z):
        return z.reshape(-1, 1, 8, 8)


def test_prompt_forgetting_counts_what_the_classifier_reads():
    from scoredistill.data import load_digits_images
    from scoredistill.eval.features import load_digits_feature_net

    data, net = load_digits_images("test"), load_digits_feature_net()
    with torch.no_grad():
        right = net.logits(data.x).argmax(1) == data.labels
    # one exemplar per digit that the classifier reads correctly: exact expected shares
    images = torch.stack([data.x[(right & (data.labels == d)).nonzero()[0, 0]] for d in range(10)])
    prompts = [f"a {s}handwritten {d}" for s in ("", "bold ") for d in range(10)]
    teacher, forget, safe = _Teacher(prompts), 3, 8
    digits = torch.tensor([d for _ in range(2) for d in range(10)])
    forgot = digits.clone()
    forgot[forget] = 8  # the student answers "a handwritten 3" with an 8, the rest faithfully
    out = prompt_forgetting(_Digits(images.flatten(1), forgot), teacher, forget, safe, 16, 0)
    assert (out["forget_acc"], out["to_safe"], out["retain_acc"]) == (0.0, 1.0, 1.0)
    assert out["retain_same_digit_acc"] == 1.0 and out["n_retain"] == 19 * 4
    kept = prompt_forgetting(_Digits(images.flatten(1), digits), teacher, forget, safe, 16, 0)
    assert (kept["forget_acc"], kept["to_safe"]) == (1.0, 0.0)
    leak = digits.clone()
    leak[13] = 8  # "a bold handwritten 3" (the forgotten digit's neighbour) answered with an 8
    out = prompt_forgetting(_Digits(images.flatten(1), leak), teacher, forget, safe, 16, 0)
    assert out["retain_same_digit_acc"] == 0.0 and out["retain_acc"] == 18 / 19
