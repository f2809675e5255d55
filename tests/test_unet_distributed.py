"""Two gloo processes on the real-model path (a diffusers UNet teacher): DDP and FSDP2.

``train.parallel=ddp`` wraps the players in DDP through Accelerate; ``fsdp2`` shards them with
raw ``fully_shard`` (``train/parallel.py``). Either way one update on two half batches equals one
process's update on the whole batch, ``--resume`` continues bit for bit, checkpoints hold full
tensors in one format, and rank 0 alone writes the run folder and the exported pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.io import load_safetensors

SCRIPTS = Path(__file__).parent / "scripts"


def _torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert found is not None
    return found


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_make_optimizer_builds_adam_adamw_and_sgd():
    from scoredistill.train.two_player import TwoPlayerConfig, make_optimizer

    net = torch.nn.Linear(2, 2)
    adam = make_optimizer(TwoPlayerConfig(), net, "generator")  # the loop's Adam, unchanged
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-4
    assert adam.defaults["betas"] == (0.0, 0.999) and adam.defaults["weight_decay"] == 0.0
    cfg = TwoPlayerConfig(optimizer="adamw", beta1_critic=0.9, beta2=0.99, weight_decay=0.01)
    adamw = make_optimizer(cfg, net, "critic")
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 1e-3
    assert adamw.defaults["betas"] == (0.9, 0.99) and adamw.defaults["weight_decay"] == 0.01
    sgd = make_optimizer(TwoPlayerConfig(optimizer="sgd", weight_decay=0.1), net, "generator")
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0
    assert sgd.defaults["weight_decay"] == 0.1


def test_fsdp2_units_are_the_unet_blocks_and_one_process_stays_unsharded(teacher_dir, capsys):
    from accelerate import Accelerator

    from scoredistill.sources.diffusers import DiffusersGenerator
    from scoredistill.teachers.diffusers import load_diffusers_teacher
    from scoredistill.train.parallel import _blocks, is_sharded, prepare_players

    gen = DiffusersGenerator(load_diffusers_teacher(teacher_dir))
    names = {id(m): n for n, m in gen.named_modules()}
    assert [names[id(b)].removeprefix("denoiser.model.") for b in _blocks(gen)] == [
        "down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1", "mid_block"]  # fmt: skip
    critic = torch.nn.Linear(2, 2)
    players = prepare_players(
        Accelerator(cpu=True), "fsdp2", gen, critic, lambda m, _: torch.optim.SGD(m.parameters())
    )
    assert not any(is_sharded(m) for m in players[:2])
    assert "train.parallel=fsdp2 with 1 process" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_and_fsdp2_updates_equal_one_process_with_the_whole_batch(teacher_dir, tmp_path):
    """The library's DiffusersGenerator, prepared as the loop prepares it, takes one SGD step
    of DMD's surrogate on half a batch per rank: DDP's averaged and FSDP2's reduce-scattered
    gradients both give one process's update on the whole batch."""
    from scoredistill.teachers.diffusers import load_diffusers_teacher

    script = str(SCRIPTS / "unet_parallel_update.py")
    run2 = [_torchrun(), "--standalone", "--nproc_per_node", "2"]
    _run([*run2, script, teacher_dir, str(tmp_path), "ddp", "fsdp2"])
    _run([sys.executable, script, teacher_dir, str(tmp_path), "ddp"])
    one = load_safetensors(tmp_path / "ddp-rank0-of-1")
    start = load_diffusers_teacher(teacher_dir).state_dict()
    moved = max((one[f"denoiser.{k}"] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3  # a real update, not two copies of the initial weights
    for mode in ("ddp", "fsdp2"):
        ranks = [load_safetensors(tmp_path / f"{mode}-rank{r}-of-2") for r in (0, 1)]
        assert ranks[0].keys() == ranks[1].keys() == one.keys()
        for key, value in one.items():
            assert torch.equal(ranks[0][key], ranks[1][key]), (mode, key)
            # float32 sums in another order: ~1e-7 relative
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6)


def _distill(teacher: str, mode: str, out: Path, extra: tuple[str, ...] = ()) -> None:
    sets = ["train.batch_size=4", "train.critic_updates=1", "train.eval_every=0",
            "train.checkpoint_every=2", "eval.samples=16", "eval.nfe=[1]",
            'eval.samplers=["ddim"]', f"train.parallel={mode}"]  # fmt: skip
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "scoredistill", "distill", "--teacher",
           teacher, "--preset", "dmd2-unet", "--steps", "4", *extra]  # fmt: skip
    _run([*cmd, *[a for s in sets for a in ("--set", s)], "--out", str(out)])


def _loads_into_unsharded_modules(teacher: str, checkpoint: Path) -> None:
    """The checkpoint holds what an unsharded (DDP or 1-process) run saves: it loads into plain
    modules and Adam optimizers, and saving them again gives the same tensors."""
    from scoredistill.sources.diffusers import DiffusersGenerator, make_diffusers_critic
    from scoredistill.teachers.diffusers import load_diffusers_teacher
    from scoredistill.train.common import load_checkpoint, save_checkpoint
    from scoredistill.train.two_player import TwoPlayerConfig, make_optimizer

    teacher_net = load_diffusers_teacher(teacher)
    gen, critic = DiffusersGenerator(teacher_net), make_diffusers_critic(teacher_net)
    modules = {"generator": gen, "critic": critic, "ema": DiffusersGenerator(teacher_net)}
    optims = {k: make_optimizer(TwoPlayerConfig(), modules[k], k) for k in ("generator", "critic")}
    rngs = {"loop": torch.Generator(), "step": torch.Generator()}
    load_checkpoint(checkpoint, modules=modules, optimizers=optims, rngs=rngs, world_size=2)
    again = save_checkpoint(checkpoint.parent.parent / "again", 4, modules=modules,
                            optimizers=optims, rngs=rngs)  # fmt: skip
    saved, resaved = (load_safetensors(p / "state.safetensors") for p in (checkpoint, again))
    weights = [k for k in saved if not k.startswith("rng/")]
    assert weights and all(torch.equal(saved[k], resaved[k]) for k in weights)
    plain = [json.loads((p / "state.json").read_text())["optimizers"] for p in (checkpoint, again)]
    assert plain[0] == plain[1]


@pytest.mark.slow
# fsdp2 only: the DDP resume under torchrun is the same loop, covered on the testbeds
# (test_resume.py) and by the update equivalence above; each launch costs ~30 s of CPU
@pytest.mark.parametrize("mode", ["fsdp2"])
def test_torchrun_resume_is_bit_exact_and_rank0_exports(teacher_dir, tmp_path, mode):
    """``torchrun --nproc_per_node 2 ... distill --teacher DIR --set train.parallel=MODE``: the
    run writes world size 2 and one stock pipeline; stopped after its step-2 checkpoint and
    resumed, it ends with the uninterrupted run's step-4 checkpoint, bit for bit."""
    from diffusers import DiffusionPipeline

    full, cut = tmp_path / "full", tmp_path / "cut"
    _distill(teacher_dir, mode, full)
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["nfe"] == 1 and np.isfinite(metrics["fd"])
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(r.get("eval")) for r in records) == 1  # rank 0 alone scored and logged
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "latest.json", "step-2", "step-4"]  # fmt: skip
    pipe = DiffusionPipeline.from_pretrained(full / "pipeline", local_files_only=True)
    images = pipe(batch_size=2, class_labels=torch.arange(2), num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()

    # a run killed after writing step-2: the folder as it was then, latest.json at step-2
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step-4")
    (cut / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2, "path": "step-2"}))
    _distill(teacher_dir, mode, cut, ("--resume",))
    a, b = (load_safetensors(d / "checkpoints/step-4/state.safetensors") for d in (full, cut))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for player in ("generator", "critic"):  # every shard stepped at every update
        steps = {a[k].item() for k in a if k.startswith(f"optim/{player}/") and k.endswith("/step")}
        assert steps == {4.0}, (player, steps)
    _loads_into_unsharded_modules(teacher_dir, full / "checkpoints" / "step-4")


@pytest.mark.slow
def test_torchrun_runs_the_text_to_image_path_on_two_processes(sd_folder, prompts, tmp_path):
    """``distill --preset dmd2-sd`` under ``torchrun --nproc_per_node 2`` (DDP of the full
    student and critic on a latent teacher): world size 2 in the metrics, and rank 0's stock
    ``StableDiffusionPipeline`` loads."""
    from diffusers import DiffusionPipeline

    out = tmp_path / "run"
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "scoredistill", "distill",
           "--preset", "dmd2-sd", "--quick", "--steps", "2", "--teacher", str(sd_folder),
           "--prompts", prompts, "--out", str(out)]  # fmt: skip
    _run(cmd)
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
