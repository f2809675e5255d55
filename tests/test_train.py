"""Training utilities and the two-player loop: checkpoints, resume, EMA, the non-finite guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from scoredistill.io import load_safetensors
from scoredistill.runs.distill import resolve, run_distill
from scoredistill.train.common import (
    NonFiniteLossError,
    check_finite,
    ema_decay,
    ema_update,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def test_ema_halflife():
    """After h steps of decay 0.5^(1/h) the old weights keep exactly half their weight."""
    ema, model = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.constant_(ema.weight, 1.0)
    nn.init.constant_(model.weight, 0.0)
    for _ in range(10):
        ema_update(ema, model, ema_decay(10))
    assert ema.weight.item() == pytest.approx(0.5, rel=1e-6)
    assert ema_decay(0) == 0.0


def test_check_finite_names_step_and_quantity():
    check_finite(torch.tensor(1.0), 3, "loss")
    with pytest.raises(NonFiniteLossError, match="critic loss is not finite at step 7"):
        check_finite(torch.tensor(float("nan")), 7, "critic loss")


def _trained_pair(steps: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.SiLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    rng = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 2, generator=rng)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, rng


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path):
    model, opt, rng = _trained_pair(5)
    save_checkpoint(
        tmp_path, 5, modules={"m": model}, optimizers={"o": opt}, rngs={"r": rng}, extra={"a": 1}
    )
    expected_next = torch.randn(3, generator=rng)
    fresh, fresh_opt, fresh_rng = _trained_pair(0)
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "step-5"
    out = load_checkpoint(
        found, modules={"m": fresh}, optimizers={"o": fresh_opt}, rngs={"r": fresh_rng}
    )
    assert out == {"step": 5, "extra": {"a": 1}}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.randn(3, generator=fresh_rng), expected_next)
    s1, s2 = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(s1[0][k], s2[0][k]) for k in ("exp_avg", "exp_avg_sq"))


def test_checkpoints_are_pruned_and_latest_points_at_the_newest(tmp_path: Path):
    model, opt, rng = _trained_pair(1)
    for step in (1, 2, 3):
        save_checkpoint(
            tmp_path, step, modules={"m": model}, optimizers={"o": opt}, rngs={"r": rng}, keep=2
        )
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-2", "step-3"]
    assert json.loads((tmp_path / "latest.json").read_text())["path"] == "step-3"
    assert not list(tmp_path.glob(".tmp-*"))


def _tiny(steps: int, extra: list[str] | None = None):
    sets = [
        f"train.steps={steps}",
        "train.batch_size=64",
        "train.critic_updates=2",
        "train.eval_every=0",
        "train.eval_samples=200",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "critic.init_steps=5",
        "critic.init_batch=64",
        "critic.hidden=32",
        "critic.depth=2",
        "generator.hidden=32",
        "generator.depth=2",
        *(extra or []),
    ]
    return resolve("dmd2-ring8", sets)


def test_distill_run_writes_the_contract(tmp_path: Path):
    cfg, objective = _tiny(3)
    metrics = run_distill(cfg, objective, tmp_path)
    for key in (
        "mmd",
        "sw2",
        "energy",
        "mode_coverage",
        "mode_tv",
        "spread_ratio",
        "logp",
        "nfe",
        "wall_s",
    ):
        assert key in metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["nfe"] == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # one line per step, then the final exact evaluation
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 3]
    assert json.loads(lines[-1])["eval"] is True
    for name in ("samples.npz", "samples.png", "curves.png", "report.md", "config.json"):
        assert (tmp_path / name).exists(), name
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-3"


def test_resume_equals_uninterrupted_run(tmp_path: Path):
    """4 steps in one go == 2 steps, stop, resume to 4 (weights bit for bit)."""
    cfg4, objective = _tiny(4)
    run_distill(cfg4, objective, tmp_path / "full")
    cfg2, _ = _tiny(2)
    run_distill(cfg2, objective, tmp_path / "split")
    run_distill(cfg4, objective, tmp_path / "split", resume=True)
    full = load_safetensors(
        latest_checkpoint(tmp_path / "full" / "checkpoints") / "state.safetensors"
    )
    split = load_safetensors(
        latest_checkpoint(tmp_path / "split" / "checkpoints") / "state.safetensors"
    )
    gen_keys = [k for k in full if k.startswith("model/")]
    assert gen_keys and all(torch.equal(full[k], split[k]) for k in gen_keys)
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 2, 3, 4, 4]  # the interrupted run evaluated at its end (step 2)


def test_non_finite_generator_loss_stops_with_a_message(tmp_path: Path):
    cfg, objective = _tiny(3, ["train.lr_generator=1e30", "train.grad_clip=0"])
    with pytest.raises(NonFiniteLossError, match="not finite at step"):
        run_distill(cfg, objective, tmp_path)


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(tmp_path: Path):
    """torchrun with 2 CPU processes: Accelerate must join them (world size 2), not train alone."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    sets = ["train.batch_size=32", "critic.init_steps=3", "train.eval_every=0"]
    sets += ["train.eval_samples=100", "train.critic_updates=1", "train.checkpoint_every=2"]
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "scoredistill",
        "distill",
        "--preset",
        "dmd2-ring8",
    ]
    cmd += ["--steps", "3", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-3"


def test_few_step_generator_trains_by_backward_simulation(tmp_path: Path):
    cfg, objective = _tiny(3, ["generator.kind=few_step", "generator.steps=2"])
    metrics = run_distill(cfg, objective, tmp_path)
    assert metrics["nfe"] == 2 and metrics["testbed"] == cfg.testbed
    assert all(
        isinstance(v, float)
        for k, v in metrics.items()
        if k not in ("nfe", "world_size", "initial", "testbed")
    )


@pytest.mark.slow
def test_torchrun_update_equals_one_process_with_the_whole_batch(tmp_path: Path):
    """2 gloo processes on half a batch each give the update of 1 process on the whole batch."""
    import shutil
    import subprocess
    import sys

    script = Path(__file__).parent / "scripts" / "ddp_generator_update.py"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    for cmd in (
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        [sys.executable, str(script), str(tmp_path)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one = load_safetensors(tmp_path / "rank0-of-1")
    for rank in (0, 1):
        two = load_safetensors(tmp_path / f"rank{rank}-of-2")
        for key, value in one.items():
            # float32 sums in another order: ~1e-7 relative
            torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path: Path, monkeypatch):
    import scoredistill.train.common as common

    model, opt, rng = _trained_pair(1)
    kw = {"modules": {"m": model}, "optimizers": {"o": opt}, "rngs": {"r": rng}}
    save_checkpoint(tmp_path, 1, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(common, "save_safetensors_atomic", killed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, **kw)
    monkeypatch.undo()
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "step-1"
    fresh, fresh_opt, fresh_rng = _trained_pair(0)
    load_checkpoint(found, modules={"m": fresh}, optimizers={"o": fresh_opt}, rngs={"r": fresh_rng})
    for key, value in before.items():
        assert torch.equal(fresh.state_dict()[key], value)
    save_checkpoint(tmp_path, 2, **kw)  # the next save succeeds despite the leftover temp folder
    assert latest_checkpoint(tmp_path).name == "step-2"
