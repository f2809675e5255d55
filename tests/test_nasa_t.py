"""SNOOPI's NASA-T (``sources.nasa_student``, ``runs.sd_nasa``) on the tiny SD-layout teacher.

Checked against independent computations: the critic's null row equals a teacher loaded with
the empty negative prompt, the teacher's the negative prompt's; the student at a fixed alpha
equals the plain student with NASA enabled by hand on its UNet with the negative embedded by the
stock ``StableDiffusionPipeline.encode_prompt``; a drawn alpha is ``U(low, high)`` of the call's
generator; a negative drawn from ``nasa.negatives`` is, for that call, both the student's NASA
negative and the teacher's guidance null (the stock pipeline's embedding), uniform over the
list; the shared base's processors are the same objects after a call; gradients reach the
student only; bad keys are one line, exit 2; a quick run resumes bit for bit (with a list too).
"""

from __future__ import annotations

import copy
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.parametrization import NULL_LABEL
from scoredistill.runs.sd import build_players, load_teacher, resolve_sd
from scoredistill.runs.sd_nasa import nasa_players
from scoredistill.sources.nasa_attention import disable_nasa, enable_nasa
from scoredistill.sources.nasa_student import NasaStudent, fixed_alpha, unwrap_nasa

pytestmark = pytest.mark.usefixtures("one_thread")
NEG = "a bold handwritten"
TOL = 1e-5


def _players(sd_folder, prompts, *sets):
    cfg, _ = resolve_sd(
        "snoopi-sd", [f"teacher={sd_folder}", f"prompts={prompts}", f"negative_prompt={NEG}", *sets]
    )
    torch.manual_seed(0)
    teacher = load_teacher(cfg)
    gen, critic = build_players(cfg, teacher)
    return cfg, teacher, nasa_players(cfg, teacher, gen, critic), critic


def _xt(teacher, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, teacher.dim, generator=g), torch.tensor(
        [0.7, 0.3, 0.04][:n], dtype=torch.float64
    )


@pytest.mark.parametrize("lora", [True, False])
def test_critic_null_is_the_empty_prompt_teacher_null_the_negative(sd_folder, prompts, lora):
    sets = [] if lora else ["critic.lora=false"]
    _cfg, teacher, _, critic = _players(sd_folder, prompts, *sets)
    plain_cfg, _ = resolve_sd("swiftbrush-sd", [f"teacher={sd_folder}", f"prompts={prompts}"])
    plain = load_teacher(plain_cfg)  # null: the empty prompt, loaded on its own
    x, t = _xt(teacher)
    null, cond = torch.full((3,), NULL_LABEL), torch.tensor([0, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(
            critic.denoise(x, t, null), plain.denoise(x, t, null), atol=TOL, rtol=0
        )
        torch.testing.assert_close(
            critic.denoise(x, t, cond), teacher.denoise(x, t, cond), atol=TOL, rtol=0
        )
        gap = (teacher.denoise(x, t, null) - plain.denoise(x, t, null)).abs().max()
    assert gap > 1e-3  # the teacher's null is the negative prompt's (eq. 5)


def test_critic_keeps_the_negative_when_asked(sd_folder, prompts):
    _, teacher, _, critic = _players(sd_folder, prompts, "nasa.critic_negative=true")
    x, t = _xt(teacher)
    null = torch.full((3,), NULL_LABEL)
    with torch.no_grad():
        torch.testing.assert_close(
            critic.denoise(x, t, null), teacher.denoise(x, t, null), atol=TOL, rtol=0
        )


def test_fixed_alpha_equals_nasa_enabled_by_hand(sd_folder, prompts):
    from diffusers import StableDiffusionPipeline

    _, _teacher, student, _ = _players(sd_folder, prompts, "student.lora=false")
    assert isinstance(student, NasaStudent)
    plain, unet = unwrap_nasa(student), unwrap_nasa(student).denoiser.model
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    neg = pipe.encode_prompt([NEG], "cpu", 1, False)[0]  # the stock pipeline's embedding
    z, c = student.sample_latent(4, torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        with fixed_alpha(student, 0.0):
            torch.testing.assert_close(student(z, c), plain(z, c), atol=TOL, rtol=0)
        with fixed_alpha(student, 0.6):
            steered = student(z, c)
        enable_nasa(unet, 0.6, neg)
        by_hand = plain(z, c)
        disable_nasa(unet)
    torch.testing.assert_close(steered, by_hand, atol=TOL, rtol=0)
    assert (steered - plain(z, c)).abs().max() > 1e-4


def test_alpha_is_drawn_from_the_calls_generator(sd_folder, prompts):
    _, _, student, _ = _players(sd_folder, prompts, "nasa.alpha_range=[0.2, 0.7]")
    z, c = student.sample_latent(2, torch.Generator().manual_seed(3)), torch.tensor([1, 0])
    a = 0.2 + 0.5 * float(torch.rand((), generator=torch.Generator().manual_seed(9)))
    with torch.no_grad():
        drawn = student(z, c, rng=torch.Generator().manual_seed(9))
        with fixed_alpha(student, a):
            fixed = student(z, c)
    torch.testing.assert_close(drawn, fixed, atol=TOL, rtol=0)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([student.draw_alpha(g) for _ in range(4000)])
    assert draws.min() >= 0.2 and draws.max() <= 0.7
    se = 0.5 / 12**0.5 / 4000**0.5  # U(0.2, 0.7): mean 0.45, sd 0.5 / sqrt(12)
    assert abs(float(draws.mean()) - 0.45) < 4 * se


def test_shared_base_is_restored_and_gradients_reach_the_student_only(sd_folder, prompts):
    _, teacher, student, _ = _players(sd_folder, prompts)  # LoRA student on the teacher's base
    before = dict(teacher.model.attn_processors)
    x, t = _xt(teacher)
    cond = torch.tensor([0, 1, 0])
    with torch.no_grad():
        ref = teacher.denoise(x, t, cond)
    z = student.sample_latent(3, torch.Generator().manual_seed(2))
    student(z, cond, rng=torch.Generator().manual_seed(4)).square().sum().backward()
    after = teacher.model.attn_processors
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    with torch.no_grad():
        assert torch.equal(teacher.denoise(x, t, cond), ref)
    grads = [p.grad for p in student.parameters()]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    base = [p for n, p in teacher.model.named_parameters() if ".lora_" not in n]
    assert all(p.grad is None for p in base)


NEGATIVES = ("a bold handwritten 3", "a bold handwritten 7", "blurry")


def _negatives(tmp_path) -> str:
    path = tmp_path / "negatives.txt"
    path.write_text("\n".join(NEGATIVES) + "\n\n")
    return str(path)


def test_a_drawn_negative_is_the_students_and_the_teachers_for_that_call(
    sd_folder, prompts, tmp_path
):
    from diffusers import StableDiffusionPipeline

    sets = (f"nasa.negatives={_negatives(tmp_path)}", "student.lora=false")
    _, teacher, student, critic = _players(sd_folder, prompts, *sets)
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    stock = lambda text: pipe.encode_prompt([text], "cpu", 1, False)[0]  # noqa: E731
    z, c = student.sample_latent(2, torch.Generator().manual_seed(3)), torch.tensor([1, 0])
    x, t = _xt(teacher)
    null = torch.full((3,), NULL_LABEL)
    with torch.no_grad():
        critic_null = critic.denoise(x, t, null)
        g = torch.Generator().manual_seed(9)  # the call's draws, replayed: alpha, then the index
        alpha = float(torch.rand((), generator=g))
        neg = NEGATIVES[int(torch.randint(len(NEGATIVES), (), generator=g))]
        drawn = student(z, c, rng=torch.Generator().manual_seed(9))
        torch.testing.assert_close(teacher.prompt_table.null, stock(neg), atol=TOL, rtol=0)
        torch.testing.assert_close(critic.denoise(x, t, null), critic_null)  # empty, unchanged
        plain, unet = unwrap_nasa(student), unwrap_nasa(student).denoiser.model
        enable_nasa(unet, alpha, stock(neg))
        by_hand = plain(z, c)
        disable_nasa(unet)
        torch.testing.assert_close(drawn, by_hand, atol=TOL, rtol=0)
        with fixed_alpha(student, 0.0):  # evaluation: the run's negative_prompt again
            torch.testing.assert_close(teacher.prompt_table.null, stock(NEG), atol=TOL, rtol=0)
    assert copy.deepcopy(student).negatives is student.negatives  # the EMA copy shares it


def test_negatives_are_drawn_uniformly(sd_folder, prompts, tmp_path):
    _, _, student, _ = _players(sd_folder, prompts, f"nasa.negatives={_negatives(tmp_path)}")
    g, n = torch.Generator().manual_seed(0), 3000
    counts = Counter(student.negatives.pick(g, training=True) for _ in range(n))
    sd = (n * (1 / 3) * (2 / 3)) ** 0.5  # binomial(n, 1/3) per negative
    assert set(counts) == set(NEGATIVES) and all(abs(k - n / 3) < 4 * sd for k in counts.values())
    assert student.negatives.pick(g, training=False) == NEG


@pytest.mark.parametrize(
    ("preset", "sets", "file"),
    [
        ("swiftbrush-sd", [], "list"),  # a list without NASA-T
        ("snoopi-sd", [], "missing"),
        ("snoopi-sd", [], "empty"),
        ("snoopi-sd", ["negative_prompt_2=ugly"], "list"),
    ],
)
def test_bad_negative_lists_are_one_line_exit_2(
    preset, sets, file, sd_folder, prompts, tmp_path, capsys
):
    path = {"list": _negatives(tmp_path), "missing": str(tmp_path / "none.txt")}.get(file)
    if file == "empty":
        (path := tmp_path / "empty.txt").write_text("\n  \n")
    args = _args(tmp_path / "o", sd_folder, prompts, *sets, f"nasa.negatives={path}", preset=preset)
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nasa.negatives" in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_teacher_without_cross_attention_is_refused():
    cfg = SimpleNamespace(nasa=SimpleNamespace(alpha_range=(0.0, 1.0), critic_negative=False))
    teacher = SimpleNamespace(model=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"nasa\.alpha_range"):
        nasa_players(cfg, teacher, None, None)


def _args(out, sd_folder, prompts, *sets, preset="snoopi-sd"):
    extra = [a for s in sets for a in ("--set", s)]
    return ["distill", "--preset", preset, "--teacher", str(sd_folder), "--prompts", prompts,
            "--out", str(out), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "sets", "needle"),
    [
        ("snoopi-sd", ["negative_prompt="], "negative_prompt"),
        ("snoopi-sd", ["nasa.alpha_range=[1, 0.5]"], "nasa.alpha_range"),
        ("snoopi-sd", ["nasa.alpha_range=[-1, 1]"], "nasa.alpha_range"),
        ("snoopi-sd", ["nasa.alpha_range=[0, 1, 2]"], "nasa.alpha_range"),
        ("swiftbrush-sd", ["nasa.eval_alpha=0.1"], "nasa.eval_alpha"),
        ("swiftbrush-sd", ["nasa.critic_negative=true"], "nasa.critic_negative"),
    ],
)
def test_bad_nasa_keys_are_one_line_exit_2(
    preset, sets, needle, sd_folder, prompts, tmp_path, capsys
):
    code = main(_args(tmp_path / "o", sd_folder, prompts, *sets, preset=preset))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("listed", [False, True])
def test_snoopi_quick_run_resumes_bit_exactly(sd_folder, prompts, tmp_path, listed):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    sets = (f"negative_prompt={NEG}", "nasa.eval_alpha=0.1")
    sets += (f"nasa.negatives={_negatives(tmp_path)}",) if listed else ()
    assert main([*_args(straight, sd_folder, prompts, *sets), "--quick"]) == 0
    assert main([*_args(resumed, sd_folder, prompts, *sets), "--quick", "--steps", "2"]) == 0
    again = [*_args(resumed, sd_folder, prompts, *sets), "--quick", "--resume", "--steps", "3"]
    assert main(again) == 0
    a = load_file(straight / "checkpoints" / "step-3" / "state.safetensors")
    b = load_file(resumed / "checkpoints" / "step-3" / "state.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (straight / "lora" / "pytorch_lora_weights.safetensors").is_file()
    readme = (straight / "lora" / "README.md").read_text()
    assert "NASA-T" in readme and f"negative {NEG!r}" in readme and "enable_nasa" in readme
