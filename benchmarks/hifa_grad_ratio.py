"""How much of HiFA's update reaches a field's renders through each of its two terms.

On the bundled view-aware teacher (``assets/teachers/views-sd``), 20 batches of 16 ring renders
of a field: the norm of the latent term's gradient on the renders (it arrives through the VAE
encoder's transposed Jacobian) over the norm of the image-space term's at ``lambda_rgb = 1``
(same draws of ``t``, noise and DDIM noise; ``t`` uniform over HiFA's range, ``t_schedule="random"``,
so each batch sees another noise level). The ratio is the ``lambda_rgb`` at which the two
terms pull the pixels equally hard. Fields: the initial one and the last checkpoint of each run
folder given::

    OMP_NUM_THREADS=1 python benchmarks/hifa_grad_ratio.py runs/s33/views/sds-sd-field-s0 \\
        runs/s33/views/hifa-sd-field-s0 runs/s33/views/hifa-sd-field-rgb100-s0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from scoredistill.io import atomic_write_json
from scoredistill.runs.optimize_sd import load_teacher, resolve
from scoredistill.runs.optimize_sd_field import render
from scoredistill.scene.field3d import VoxelField
from scoredistill.teachers.views import prompt_for_azimuth

VIEWS = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "views-sd"


def ratios(field_, teacher, objective, cfg, batches: int = 20, batch: int = 16) -> torch.Tensor:
    """Per batch: |d latent term / d renders| / |d image term (lambda_rgb = 1) / d renders|."""
    objective = dataclasses.replace(objective, t_schedule="random")
    latent = dataclasses.replace(objective, lambda_rgb=0.0)
    image = dataclasses.replace(objective, lambda_sds=0.0, lambda_rgb=1.0)
    out = []
    for k in range(batches):
        rng = torch.Generator().manual_seed(k)
        az = 360.0 * torch.rand(batch, generator=rng, dtype=torch.float64)
        px = render(field_, teacher, az, cfg.source.elevation, rng).detach().requires_grad_(True)
        z, cond = teacher.encode(px), 1 + prompt_for_azimuth(az)
        norms = []
        for obj in (latent, image):
            loss = obj.generator_loss(
                z, cond, teacher=teacher, rng=torch.Generator().manual_seed(100 + k), pixels=px
            )
            norms.append(torch.autograd.grad(loss.value, px, retain_graph=True)[0].norm())
        out.append(float(norms[0] / norms[1]))
    return torch.tensor(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--teacher", type=Path, default=VIEWS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sets = [f"teacher={args.teacher / 'pipeline'}", f"prompts={args.teacher / 'prompts.txt'}"]
    cfg, objective = resolve("hifa-sd-field", sets)
    teacher, s = load_teacher(cfg), cfg.source
    field_ = VoxelField(
        s.resolution, image_size=teacher.image_shape[1], n_samples=s.n_samples,
        background=s.background, init_density=s.init_density, init_noise=s.init_noise,
        rng=torch.Generator().manual_seed(0),
    )  # fmt: skip
    rows = []
    for run in [None, *args.runs]:
        if run is not None:
            latest = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
            state = load_file(run / "checkpoints" / f"step-{latest}" / "state.safetensors")
            prefix = "model/source/"
            field_.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        r = ratios(field_, teacher, objective, cfg)
        q1, med, q3 = (float(r.quantile(q)) for q in (0.25, 0.5, 0.75))
        rows.append({"field": str(run or "initial"), "median": med, "q1": q1, "q3": q3})
        print(f"{rows[-1]['field']:<44} ratio median {med:.0f} (IQR {q1:.0f}-{q3:.0f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
