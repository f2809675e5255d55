"""Resume you can trust: each rank's noise, refused changes named, damaged folders recovered,
one writer per run folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scoredistill.errors import UserError
from scoredistill.objectives._ingredients import Loss
from scoredistill.train.common import (
    JsonlLogger,
    ResumeError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from scoredistill.train.optimize import Batch, OptimizeLoopConfig, optimize
from scoredistill.train.run_folder import RunFolderBusy, check_resume_config, run_lock


def _model(width: int = 8) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, 1))
    return model, torch.optim.Adam(model.parameters(), 1e-2)


# ----------------------------------------------------------------------------- checkpoints
def test_each_rank_resumes_its_own_noise(tmp_path: Path):
    """Two ranks' generators saved in one checkpoint; rank 1 restores rank 1's, not rank 0's."""
    model, opt = _model()
    ranks = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    states = [{"loop": g.get_state(), "torch_global": torch.get_rng_state()} for g in ranks]
    save_checkpoint(tmp_path, 2, modules={"m": model}, optimizers={"o": opt},
                    rngs={"loop": ranks[0]}, rank_states=states)  # fmt: skip
    expected = [torch.randn(3, generator=g) for g in ranks]
    for rank in (0, 1):
        fresh = torch.Generator()
        load_checkpoint(latest_checkpoint(tmp_path), modules={"m": model}, optimizers={"o": opt},
                        rngs={"loop": fresh}, rank=rank, world_size=2)  # fmt: skip
        assert torch.equal(torch.randn(3, generator=fresh), expected[rank])
    with pytest.raises(ResumeError, match="written by 2 process"):
        load_checkpoint(latest_checkpoint(tmp_path), modules={"m": model}, optimizers={"o": opt},
                        rngs={"loop": torch.Generator()}, rank=0, world_size=1)  # fmt: skip


def test_a_changed_architecture_is_refused_naming_the_tensor(tmp_path: Path):
    model, _ = _model(8)
    save_checkpoint(tmp_path, 1, modules={"gen": model}, optimizers={}, rngs={})
    wider, _ = _model(16)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ResumeError, match=r"tensor '0\.weight' has shape \(8, 2\).*\(16, 2\)"):
        load_checkpoint(latest_checkpoint(tmp_path), modules={"gen": wider}, optimizers={},
                        rngs={})  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # untouched


def test_a_changed_loop_setting_is_refused_naming_the_key(tmp_path: Path):
    model, opt = _model()
    cfg = {"steps": 4, "lr": 1e-3, "betas": [0.9, 0.99]}
    save_checkpoint(tmp_path, 2, modules={"m": model}, optimizers={"o": opt}, rngs={}, config=cfg)
    found = latest_checkpoint(tmp_path)
    kw = {"modules": {"m": model}, "optimizers": {"o": opt}, "rngs": {}}
    load_checkpoint(found, **kw, config={**cfg, "steps": 8})  # more steps: fine
    with pytest.raises(ResumeError, match=r"lr 0\.001 -> 0\.01"):
        load_checkpoint(found, **kw, config={**cfg, "lr": 1e-2})
    with pytest.raises(ResumeError, match="lr_decay"):
        load_checkpoint(found, **kw, config={**cfg, "steps": 8}, steps_fixed="lr_decay=true: …")


def test_missing_or_broken_latest_json_recovers_the_newest_complete_checkpoint(tmp_path, capsys):
    model, opt = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, modules={"m": model}, optimizers={"o": opt}, rngs={})
    (tmp_path / "latest.json").unlink()
    assert latest_checkpoint(tmp_path).name == "step-3"
    assert "latest.json is missing; resuming from" in capsys.readouterr().err
    (tmp_path / "step-3" / "state.safetensors").unlink()  # killed while writing its contents
    assert latest_checkpoint(tmp_path).name == "step-2"
    (tmp_path / "latest.json").write_text('{"step": 3, "pa')  # torn pointer
    assert latest_checkpoint(tmp_path).name == "step-2"


@pytest.mark.parametrize("target", ["../../etc", "/tmp", "step-1/../../x", "step-x"])
def test_latest_json_may_only_name_a_step_folder_inside_the_run(tmp_path: Path, target: str):
    (tmp_path / "latest.json").write_text(json.dumps({"step": 1, "path": target}))
    with pytest.raises(UserError, match="must be a step-<N> folder"):
        latest_checkpoint(tmp_path)


def test_stale_temporary_folders_are_removed(tmp_path: Path):
    model, opt = _model()
    (tmp_path / ".tmp-step-9-12345").mkdir(parents=True)
    save_checkpoint(tmp_path, 1, modules={"m": model}, optimizers={"o": opt}, rngs={})
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_torn_last_log_line_is_dropped_and_a_damaged_one_named(tmp_path: Path):
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.log({"step": step})
    with log.path.open("a") as fh:
        fh.write('{"step": 4, "lo')  # killed mid-write
    log.truncate_after(2)
    assert log.path.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2 is not a JSON object"):
        log.truncate_after(2)


# ----------------------------------------------------------------------------- the loop
class _Quadratic:
    """``|x - 1|^2``: a loss with noise (the rng draws), so resumed noise matters."""

    def generator_loss(self, x, cond, *, teacher, critic, rng):
        return Loss(((x - 1 + 0.1 * torch.randn(x.shape, generator=rng)) ** 2).sum(), {})


def _optimize(out: Path, steps: int, resume: bool = False, lr: float = 0.1, **cfg) -> torch.Tensor:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    source = nn.ParameterDict({"theta": nn.Parameter(torch.zeros(4, 2))})
    loop = OptimizeLoopConfig(steps=steps, lr=lr, checkpoint_every=2, log_every=1, **cfg)
    optimize(loop, source=source, objective=_Quadratic(), teacher=None,
             draw=lambda rng: Batch(source["theta"], None, None, {}), evaluate=lambda s: {},
             out_dir=out, resume=resume)  # fmt: skip
    return source["theta"].detach().clone()


def _logged(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_kill_between_log_and_checkpoint_resumes_exactly_without_duplicate_lines(tmp_path):
    full = _optimize(tmp_path / "full", 4)
    cut = tmp_path / "cut"
    _optimize(cut, 4)
    shutil.rmtree(cut / "checkpoints" / "step-4")  # killed after logging step 4, before saving
    (cut / "checkpoints" / "latest.json").unlink()  # ... and before the pointer moved
    assert torch.equal(_optimize(cut, 4, resume=True), full)
    assert _logged(cut) == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_restarts_the_log(tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')  # died before step-2
    _optimize(tmp_path, 1, resume=True)
    assert _logged(tmp_path) == [1]


def test_extending_steps_is_exact_but_refused_when_the_lr_decays_over_them(tmp_path: Path):
    full = _optimize(tmp_path / "full", 6)
    _optimize(tmp_path / "ext", 4)
    assert torch.equal(_optimize(tmp_path / "ext", 6, resume=True), full)
    _optimize(tmp_path / "decay", 4, lr_decay=True)
    with pytest.raises(ResumeError, match=r"steps cannot change from 4 to 6 \(lr_decay=true"):
        _optimize(tmp_path / "decay", 6, resume=True, lr_decay=True)
    with pytest.raises(ResumeError, match=r"lr 0\.1 -> 0\.2"):
        _optimize(tmp_path / "decay", 4, resume=True, lr=0.2, lr_decay=True)


# ----------------------------------------------------------------------------- the run folder
def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "then"}
        (tmp_path / ".lock").write_text(json.dumps(lock))
        busy = rf"in use by another run \(pid {holder.pid} on"
        with pytest.raises(RunFolderBusy, match=busy), run_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # the holder is gone: its lock is stale and taken over
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderBusy), run_lock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()


def _stored(tmp_path: Path, **cfg) -> Path:
    base = {"method": "dmd", "train": {"steps": 4, "lr": 1e-3, "lr_decay": False}}
    base["train"].update(cfg)
    (tmp_path / "config.json").write_text(json.dumps({"preset": "x", **base}))
    return tmp_path


def test_resume_config_may_only_extend_the_steps(tmp_path: Path):
    out = _stored(tmp_path)
    new = {"method": "dmd", "train": {"steps": 8, "lr": 1e-3, "lr_decay": False}}
    check_resume_config(out, new)  # "preset" is not a config field: not compared
    with pytest.raises(UserError, match=r"method 'dmd' -> 'sid'; train.lr 0.001 -> 0.01"):
        check_resume_config(out, {"method": "sid", "train": {**new["train"], "lr": 1e-2}})
    out = _stored(tmp_path, lr_decay=True)
    with pytest.raises(UserError, match=r"cannot change from 4 to 8 with train\.lr_decay=true"):
        check_resume_config(out, {"method": "dmd", "train": {**new["train"], "lr_decay": True}})


# ----------------------------------------------------------------------------- through the CLI
TINY = ["train.steps=3", "train.batch_size=16", "train.critic_updates=1", "critic.hidden=8",
        "critic.init_steps=2", "critic.init_batch=16", "generator.hidden=8", "train.eval_every=0",
        "train.eval_samples=50"]  # fmt: skip


def _stored_run(tmp_path: Path) -> Path:
    """A run folder whose config.json is the tiny dmd2-ring8 run's (no checkpoint yet)."""
    from scoredistill.config import to_dict
    from scoredistill.runs.distill import resolve

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_dict(resolve("dmd2-ring8", TINY)[0])))
    return out


def _cli(out: Path, *sets: str) -> tuple[int, str]:
    from scoredistill.cli import main

    args = ["distill", "--preset", "dmd2-ring8", *[a for s in [*TINY, *sets] for a in ("--set", s)]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*args, "--resume", "--out", str(out)])
    return code, err.getvalue()


def test_the_cli_refuses_a_resume_with_another_config_before_any_work(tmp_path: Path):
    out = _stored_run(tmp_path)
    before = (out / "config.json").read_text()
    code, err = _cli(out, "train.lr_generator=0.5", "generator.hidden=16")
    assert code == 2 and "generator.hidden 8 -> 16; train.lr_generator 0.001 -> 0.5" in err
    assert (out / "config.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_key_added_after_the_run_is_taken_at_its_default_and_named(tmp_path: Path, capsys):
    """A run of an older version lacks a key added since: resumable when the new value is the
    field's default (the old behaviour), refused when it is not; other keys stay strict."""
    out = _stored(tmp_path)  # no train.lr_schedule, no generator.sigmas
    defaults = {"train": {"lr_schedule": "constant", "lr": 5e-4}, "generator": {"sigmas": []}}
    new = {"method": "dmd", "train": {"steps": 8, "lr": 1e-3, "lr_decay": False,
           "lr_schedule": "constant"}, "generator": {"sigmas": []}}  # fmt: skip
    check_resume_config(out, new, defaults=defaults)
    err = capsys.readouterr().err
    assert 'predates generator.sigmas=[], train.lr_schedule="constant"' in err
    with pytest.raises(UserError, match=r"train\.lr_schedule '\(absent\)' -> 'cosine'"):
        check_resume_config(out, {**new, "train": {**new["train"], "lr_schedule": "cosine"}},
                            defaults=defaults)  # fmt: skip
    with pytest.raises(UserError, match=r"train\.lr_schedule '\(absent\)' -> 'constant'"):
        check_resume_config(out, new)  # no defaults given: strict, as before
    with pytest.raises(UserError, match=r"train\.lr 0\.001 -> 0\.0005"):  # stored keys: strict
        check_resume_config(out, {**new, "train": {**new["train"], "lr": 5e-4}}, defaults=defaults)


def test_field_defaults_are_the_unset_values_nested_configs_included():
    from dataclasses import dataclass, field

    from scoredistill.config import field_defaults

    @dataclass(frozen=True)
    class Inner:
        a: int = 1
        b: tuple[float, ...] = (0.5,)

    @dataclass(frozen=True)
    class Outer:
        need: Inner  # no default: its own fields' defaults
        name: str
        inner: Inner = field(default_factory=lambda: Inner(a=7))
        flag: bool = False

    cfg = Outer(need=Inner(a=3, b=()), name="x", inner=Inner(a=9), flag=True)
    assert field_defaults(cfg) == {
        "need": {"a": 1, "b": [0.5]},
        "inner": {"a": 7, "b": [0.5]},  # the factory's value, not the class's
        "flag": False,
    }


@pytest.mark.slow
def test_the_cli_resumes_a_run_whose_config_predates_a_key(tmp_path: Path):
    """Through ``distill --resume``: a 2-step run whose config.json and checkpoint lack keys
    added later (dropped here by hand) continues to 4 steps, equal to an uninterrupted run."""
    from scoredistill.cli import main
    from scoredistill.io import load_safetensors

    sets = [*[s for s in TINY if not s.startswith("train.steps=")], "train.checkpoint_every=2"]
    base = ["distill", "--preset", "dmd2-ring8", *[a for s in sets for a in ("--set", s)]]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*base, "--steps", "4", "--out", str(tmp_path / "full")]) == 0
        assert main([*base, "--steps", "2", "--out", str(tmp_path / "cut")]) == 0
    stored = json.loads((tmp_path / "cut" / "config.json").read_text())
    for section, key in (
        ("train", "lr_schedule"),
        ("train", "few_step_sample"),
        ("generator", "sigmas"),
    ):
        del stored[section][key]
    (tmp_path / "cut" / "config.json").write_text(json.dumps(stored))
    state = tmp_path / "cut" / "checkpoints" / "step-2" / "state.json"
    plain = json.loads(state.read_text())  # the loop settings stored in the checkpoint too
    del plain["config"]["lr_schedule"], plain["config"]["few_step_sample"]
    state.write_text(json.dumps(plain))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*base, "--steps", "4", "--resume", "--out", str(tmp_path / "cut")])
    assert code == 0, err.getvalue()[-500:]
    assert "predates generator.sigmas=null, train.few_step_sample=" in err.getvalue()
    full, cut = (
        load_safetensors(tmp_path / d / "checkpoints" / "step-4" / "state.safetensors")
        for d in ("full", "cut")
    )
    assert [k for k in full if not torch.equal(full[k], cut[k])] == []


def test_the_cli_refuses_a_second_run_on_a_locked_folder(tmp_path: Path):
    out = _stored_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "then"}
        (out / ".lock").write_text(json.dumps(lock))
        code, err = _cli(out)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"in use by another run (pid {holder.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json"]


@pytest.mark.slow
def test_torchrun_resume_equals_an_uninterrupted_run(tmp_path: Path):
    """2 gloo ranks: 4 steps in one go == 2 steps, then --resume to 4, bit for bit (each rank
    restores its own noise; with one shared RNG state most tensors differ)."""
    from scoredistill.io import load_safetensors

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    sets = ["train.batch_size=32", "critic.init_steps=3", "train.eval_every=0", "critic.hidden=16",
            "generator.hidden=16", "train.eval_samples=100", "train.critic_updates=1",
            "train.checkpoint_every=2"]  # fmt: skip
    base = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "scoredistill", "distill", "--preset",
            "dmd2-ring8", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    for steps, out, extra in ((4, "full", []), (2, "cut", []), (4, "cut", ["--resume"])):
        cmd = [*base, "--steps", str(steps), *extra, "--out", str(tmp_path / out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    full, cut = (
        load_safetensors(tmp_path / d / "checkpoints" / "step-4" / "state.safetensors")
        for d in ("full", "cut")
    )
    assert full.keys() == cut.keys()
    assert [k for k in full if not torch.equal(full[k], cut[k])] == []


def test_a_bench_cell_is_locked_and_an_interrupted_cell_resumes(tmp_path: Path):
    """``bench`` cells keep the run contract: a held folder is refused; a cell with checkpoints
    but no ``metrics.json`` (killed) continues from its last checkpoint, not from step 0."""
    from scoredistill.bench.runner import run_cell
    from scoredistill.runs import FAMILIES

    fam = FAMILIES["distill"]
    sets = [*fam.quick("dmd2-ring8"), "train.checkpoint_every=2", "train.log_every=1"]
    cell = tmp_path / "cell"
    with run_lock(cell), pytest.raises(RunFolderBusy):
        run_cell("distill", "dmd2-ring8", 0, [*sets, "train.steps=4"], cell)
    fam.run(fam.resolve("dmd2-ring8", [*sets, "train.steps=2", "train.seed=0"]), cell, False)
    (cell / "metrics.json").unlink()  # as if killed after the step-2 checkpoint
    run_cell("distill", "dmd2-ring8", 0, [*sets, "train.steps=4"], cell)
    logged = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if not r.get("eval")]
    assert steps == [1, 2, 3, 4]  # resumed at 2: no second step 1


def test_other_ranks_wait_until_rank_0_holds_the_lock(tmp_path: Path, monkeypatch):
    """Under torchrun a rank other than 0 may not write into --out before rank 0 has checked
    that it is empty and locked it (a faster rank 1 used to fail rank 0's check)."""
    import threading
    import time

    from scoredistill.train.run_folder import open_run_folder, wait_for_first_rank

    monkeypatch.setenv("RANK", "1")
    started = time.monotonic()
    threading.Timer(0.3, lambda: (tmp_path / ".lock").write_text("{}")).start()
    with open_run_folder(tmp_path, {}, resume=False):
        waited = time.monotonic() - started
    assert waited >= 0.25 and (tmp_path / ".lock").exists()  # rank 1 neither took nor removed it
    with pytest.raises(UserError, match="rank 0 did not lock"):
        wait_for_first_rank(tmp_path / "never", timeout_s=0.1)


def test_module_state_reads_back_each_saved_module(tmp_path: Path) -> None:
    """``module_state`` returns exactly the state dict ``save_checkpoint`` stored per module
    (the EMA a finished run evaluates, without its optimizers)."""
    from scoredistill.train.common import module_state, save_checkpoint

    torch.manual_seed(0)
    gen, ema = nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(gen.parameters())
    path = save_checkpoint(
        tmp_path, 7, modules={"generator": gen, "ema": ema}, optimizers={"generator": opt},
        rngs={"loop": torch.Generator().manual_seed(1)},
    )  # fmt: skip
    for name, module in (("generator", gen), ("ema", ema)):
        got = module_state(path, name)
        want = module.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    fresh.load_state_dict(module_state(path, "ema"))  # strict: no key of another module
    assert torch.equal(fresh[0].weight, ema[0].weight)
