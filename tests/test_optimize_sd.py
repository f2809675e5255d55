"""``scoredistill optimize --teacher SD_DIR --prompts FILE``: latent particles under a
text-to-image teacher, end to end, and its bad inputs.

The teacher is the tiny pipeline of ``conftest.sd_folder``; the runs use the ``--quick`` budget:
these tests check plumbing and contracts (files, a LoRA-only critic on an unchanged teacher,
bit-exact resume), not quality. That the objectives move particles toward a teacher's modes is
``test_score_objectives.py``'s, on exact teachers."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scoredistill.cli import main
from scoredistill.objectives import SCORE_OBJECTIVES
from scoredistill.presets.optimize_sd import SUCCESSORS
from scoredistill.runs import optimize_sd

N_QUICK = 16  # presets.optimize_sd.QUICK: source.n_particles


def _args(preset, sd_folder, prompts, out, *extra):
    return ["optimize", "--preset", preset, "--teacher", str(sd_folder), "--prompts", prompts,
            "--out", str(out), *extra]  # fmt: skip


def _probe(teacher) -> torch.Tensor:
    """The teacher's denoiser on fixed inputs: both prompts and the null one, three times."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, teacher.dim, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9] * 2, dtype=torch.float64)
    with torch.no_grad():
        return teacher.denoise(x, t, torch.tensor([0, 1, -1, 0, 1, -1]))


def test_dry_run_counts_the_lora_critic(sd_folder, prompts, tmp_path, capsys):
    assert main(_args("vsd-sd", sd_folder, prompts, tmp_path / "o", "--dry-run")) == 0
    vsd = json.loads(capsys.readouterr().out)["networks"]
    assert main(_args("sds-sd", sd_folder, prompts, tmp_path / "o", "--dry-run")) == 0
    sds = json.loads(capsys.readouterr().out)["networks"]
    unet = vsd["frozen_params"]["unet"]
    assert 0 < vsd["trainable_params"]["critic"] < unet // 10  # rank 4: a sliver of the UNet
    assert sds["trainable_params"] == {"particles": 60 * 64, "critic": 0}
    assert sds["teacher_folder"] == str(sd_folder) and sds["prompts"] == f"{prompts} (2)"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset", ["sds-sd", "vsd-sd"])
def test_quick_run_writes_the_contract(preset, sd_folder, prompts, tmp_path):
    out = tmp_path / "run"
    assert main(_args(preset, sd_folder, prompts, out, "--quick")) == 0
    for name in ("config.json", "report.md", "samples.png", "metrics.jsonl",
                 "checkpoints/step-3/state.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (N_QUICK, 64) and data["latents"].shape == (N_QUICK, 64)
    assert np.abs(data["x"]).max() <= 1.0 and np.isfinite(data["latents"]).all()
    assert data["labels"].tolist() == [i % 2 for i in range(N_QUICK)]  # particle i: prompt i mod 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["guidance"] == {"sds-sd": 101.0, "vsd-sd": 7.5}[preset]
    assert np.isfinite(metrics["fd"]) and 0 <= metrics["class_acc"] <= 1  # digits prompts
    assert "| step | fd |" in (out / "report.md").read_text()


@pytest.mark.parametrize("method", SUCCESSORS)
def test_successors_run_on_latents_with_their_objectives_defaults(
    method, sd_folder, prompts, tmp_path
):
    """CSD, CDS, ASD, BSD, ISM on the latent pipeline: the preset sets the loop only, so the
    objective keeps its paper defaults, and the particles move."""
    out = tmp_path / method
    assert main(_args(f"{method}-sd", sd_folder, prompts, out, "--quick")) == 0
    config = json.loads((out / "config.json").read_text())
    defaults = json.loads(json.dumps(dataclasses.asdict(SCORE_OBJECTIVES[method]())))
    assert config["method"] == method and config["objective"] == defaults
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["fd"]) and metrics["fd"] != metrics["initial"]["fd"]
    own = getattr(SCORE_OBJECTIVES[method](), "guidance", None)  # none: no CFG scale to report
    assert metrics["guidance"] == (None if own is None else float(own))


def test_lora_critic_is_the_only_trained_weight_and_the_teacher_is_unchanged(
    sd_folder, prompts, tmp_path, monkeypatch
):
    loaded = []

    def spy(cfg):
        loaded.append(real(cfg))
        return loaded[-1]

    real = optimize_sd.load_teacher
    monkeypatch.setattr(optimize_sd, "load_teacher", spy)
    fresh = real(optimize_sd.OptimizeSDConfig(teacher=str(sd_folder), prompts=prompts))
    out = tmp_path / "run"
    assert main(_args("vsd-sd", sd_folder, prompts, out, "--quick")) == 0
    teacher = loaded[-1]  # the run's (resolve loads one first, for its checks)
    assert torch.equal(_probe(teacher), _probe(fresh))  # the adapter rests off
    before = fresh.model.state_dict()
    base = {  # PEFT moves each adapted projection's weights under ``.base_layer``
        k.replace(".base_layer", ""): v
        for k, v in teacher.model.state_dict().items()
        if "lora_" not in k
    }
    assert base.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in base.items())
    state = load_file(out / "checkpoints" / "step-3" / "state.safetensors")
    critic = [k for k in state if k.startswith("model/critic/")]
    assert critic and all(k.startswith("model/critic/denoiser.lora.") for k in critic)
    named = dict(teacher.model.named_parameters())
    assert len(critic) == sum(".critic." in n for n in named)  # every adapter weight, no other
    lora_b = [p for n, p in named.items() if "lora_B.critic" in n]
    assert lora_b and any(b.abs().sum() > 0 for b in lora_b)  # B = 0 at init: it trained
    assert {k.split("/")[1] for k in state if k.startswith("model/")} == {"source", "critic"}


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run_bit_for_bit(sd_folder, prompts, tmp_path, monkeypatch):
    """VSD with its LoRA critic (Adam states of particles and adapter, RNGs): killed in step 3
    after the step-2 checkpoint, resumed in a fresh task; the step-3 checkpoints are equal
    tensor for tensor."""
    extra = ("--quick", "--set", "train.checkpoint_every=2")
    straight, cut = tmp_path / "a", tmp_path / "b"
    assert main(_args("vsd-sd", sd_folder, prompts, straight, *extra)) == 0
    real, draws = optimize_sd.build_task, {"n": 0}

    def dying(cfg, objective, teacher):
        task = real(cfg, objective, teacher)

        def draw(rng):
            draws["n"] += 1
            if draws["n"] > limit:
                raise KeyboardInterrupt
            return task["draw"](rng)

        return {**task, "draw": draw}

    monkeypatch.setattr(optimize_sd, "build_task", dying)
    limit = 1 + 2  # one warm-up draw (QUICK), then steps 1 and 2; killed in step 3
    assert main(_args("vsd-sd", sd_folder, prompts, cut, *extra)) == 130
    assert not (cut / "checkpoints" / "step-3").exists()
    draws["n"], limit = 0, 10**6
    assert main(_args("vsd-sd", sd_folder, prompts, cut, *extra, "--resume")) == 0
    assert draws["n"] == 1  # step 3 only: no warm-up again, no replay
    a = load_file(straight / "checkpoints" / "step-3" / "state.safetensors")
    b = load_file(cut / "checkpoints" / "step-3" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(straight / "samples.npz")["x"], np.load(cut / "samples.npz")["x"])


@pytest.mark.parametrize(
    ("preset", "change", "needle"),
    [
        ("sds-sd", {"prompts": "missing.txt"}, "missing.txt is not a file"),
        ("sds-sd", {"prompts": "EMPTY"}, "holds no prompt"),
        ("sds-sd", {"set": ["objective.guidance=1", "negative_prompt=blurry"]}, "negative_prompt"),
        ("vsd-sd", {"set": ["objective.lam=0.5"]}, "objective.lam"),
        ("vsd-sd", {"set": ["critic.lora_rank=0"]}, "critic.lora_rank"),
        ("sds-views", {}, "presets for --teacher: sds-sd, vsd-sd"),
        ("sds-sd", {"drop": "vae"}, "vae"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(
    preset, change, needle, sd_folder, prompts, tmp_path, capsys
):
    folder = sd_folder
    if "drop" in change:
        folder = tmp_path / "teacher"
        shutil.copytree(sd_folder, folder)
        shutil.rmtree(folder / change["drop"])
    if change.get("prompts") == "EMPTY":
        (tmp_path / "empty.txt").write_text("\n  \n")
        change = {"prompts": str(tmp_path / "empty.txt")}
    p = change.get("prompts", prompts)
    sets = [a for s in change.get("set", []) for a in ("--set", s)]
    code = main(_args(preset, folder, p, tmp_path / "o", *sets))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_critic_lora_targets_key(sd_folder, prompts, tmp_path, capsys):
    """``critic.lora_targets``: a list replaces ``default_targets`` (to_q/k/v/out.0 on a UNet),
    so adapting ``to_q`` alone trains a quarter of the default's projections' LoRA; a list
    naming no module is one ``config key 'critic.lora_targets'`` line, exit 2."""
    counts = {}
    for targets in ("[]", '["to_q"]'):
        sets = ["--set", f"critic.lora_targets={targets}", "--dry-run"]
        assert main(_args("vsd-sd", sd_folder, prompts, tmp_path / "o", *sets)) == 0
        counts[targets] = json.loads(capsys.readouterr().out)["networks"]["trainable_params"]
    # rank r on a (d_out, d_in) projection: r (d_in + d_out); to_q, to_k, to_v, to_out.0 of a
    # self-attention layer are all d x d, so to_q alone is a quarter there; cross-attention
    # to_k/to_v read the text width instead, so the share is compared with a bound
    only_q, default = counts['["to_q"]']["critic"], counts["[]"]["critic"]
    assert 0 < only_q < default / 2
    code = main(_args("vsd-sd", sd_folder, prompts, tmp_path / "o", "--dry-run",
                      "--set", 'critic.lora_targets=["nope"]'))  # fmt: skip
    # the weights load first (transformers' loading bars), then the one error line
    err = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
    assert code == 2 and len(err) == 1 and "config key 'critic.lora_targets'" in err[0], err


def test_a_diverged_source_stops_before_its_samples_are_written(
    sd_folder, prompts, tmp_path, capsys
):
    """At lr 1e30 the particles reach ~1e30: the SDS surrogate's ``θ − sg(θ − g)`` rounds to 0
    in float32, so the loss stays finite (0) while the decoder returns NaN. The run used to exit
    0 with all-NaN samples (sweep 5); it now stops with exit 3 before writing them."""
    args = _args("sds-sd", sd_folder, prompts, tmp_path / "o", "--quick", "--steps", "6")
    assert main([*args, "--set", "train.lr=1e30"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "the decoded samples are not finite after step 6: the source diverged" in err[-1]
    assert not (tmp_path / "o" / "samples.npz").exists()


def test_two_runs_write_the_same_checkpoint_bytes(tmp_path):
    """Every tensor of the checkpoint, the global RNG state included, is a function of the
    seed: the SDS path never seeded the global RNG, so the saved state differed between two
    identical runs (sweep 5) although the particles did not. On an RGB SDXL folder: the digits
    scorer, which seeds the global RNG on its own, does not run there."""
    from test_sdxl_teacher import PROMPTS, _pipe

    _pipe().save_pretrained(tmp_path / "sdxl")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    states = []
    for name, process_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(process_seed)  # two fresh processes start from different RNG states
        args = _args("sds-sd", tmp_path / "sdxl", str(prompts), tmp_path / name, "--quick")
        assert main(args) == 0
        states.append(load_file(tmp_path / name / "checkpoints" / "step-3" / "state.safetensors"))
    a, b = states
    assert "rng/torch_global" in a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
