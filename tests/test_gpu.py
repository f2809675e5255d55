"""The real-model path on a CUDA device (marker ``gpu``; skipped without one).

Run on a lent GPU with ``pytest -m gpu tests/test_gpu.py``: (a) the latent teacher moved to the
GPU gives the CPU teacher's denoiser (float32, 1e-4: the same network, other kernels); (b)
``distill --preset dmd2-sd`` and ``swiftbrush-sd`` (LoRA players on the shared base) run on the
GPU in bf16 and log the device's peak memory; (c) the pixel path ``dmd2-unet`` runs there too;
(d) ``benchmarks/gpu_step_time.py``'s timing of a small pipeline works on the device. Every run
is ``--quick``: plumbing (devices, autocast, EMA on the players' device), not quality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_latent_teacher_on_cuda_equals_cpu(sd_folder):
    from scoredistill.teachers.diffusers_latent import load_latent_teacher

    cpu = load_latent_teacher(sd_folder)
    gpu = load_latent_teacher(sd_folder).to("cuda")
    for teacher in (cpu, gpu):
        teacher.set_prompt_labels(["a handwritten 3", "a bold handwritten 7"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, cpu.dim, generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    ids = torch.tensor([0, 1, -1, 0])
    with torch.no_grad():
        ref = cpu.denoise(x, t, ids)
        got = gpu.denoise(x.cuda(), t.cuda(), ids.cuda()).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["dmd2-sd", "swiftbrush-sd"])
def test_distill_sd_runs_on_the_gpu_in_bf16(preset, sd_folder, prompts, tmp_path):
    from scoredistill.cli import main

    out = tmp_path / "run"
    args = ["distill", "--preset", preset, "--teacher", str(sd_folder), "--prompts", prompts,
            "--quick", "--set", "precision=bf16", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["cuda_max_mib"] for r in rows if "cuda_max_mib" in r]
    assert peaks and all(p > 0 for p in peaks)
    assert (out / ("lora" if preset == "swiftbrush-sd" else "pipeline")).is_dir()


def test_distill_unet_runs_on_the_gpu(tmp_path):
    from scoredistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--preset", "dmd2-unet", "--quick", "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file()


def test_step_time_script_on_a_small_pipeline(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_step_time as bench

    teacher = bench.build_pipeline(tmp_path / "teacher", bench.TINY)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(bench.PROMPTS) + "\n")
    args = type("A", (), {"work": tmp_path, "steps": 4, "batch": 2, "warmup": 1})()
    row = bench.time_run(teacher, prompts, "dmd2-sd", "bf16", args)
    assert row["exit"] == 0 and row["step_s"] > 0 and row["peak_mib"] > 0
