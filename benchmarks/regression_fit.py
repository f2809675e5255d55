"""How fast can a one-step student's map be fitted at all? Pure regression, no DMD.

The regression preset's student (``dmd2-teacher-init-reg-<testbed>``: the teacher copy at
``sigma_init``, after the critic's DSM start) is trained on DMD v1's regression loss alone,
``mean_b ||G(z_b) - y_b||^2`` against the teacher's DPM-Solver++(2M) samples ``y`` at 64 NFE
from the same ``z``, with AdamW (0.9, 0.999, wd 0.01) at each
``--variant lr,batch,pairs,steps[,cosine]``. It is scored every 500 steps on 2000 **fresh** ``z``
(not the training pairs) with the testbed's metrics. The teacher's own pairs give the ceiling a
perfect fit would read.

If the distillation run stalls where this fit stalls, the student's fit of the sharp
``z -> x`` map is the limit, not the distribution-matching term::

    OMP_NUM_THREADS=1 python benchmarks/regression_fit.py grid25 \\
        --variant 1e-3,512,4096,3000 --variant 3e-3,512,4096,3000 --json runs/s39/regfit.json

A mixture file takes the preset it would run with, e.g. ``fgring.npz --preset
dmd2-teacher-init-reg-ring8``. Unconditional testbeds only (the regression pairs of a conditional
one carry labels).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from scoredistill.eval.metrics import testbed_metrics
from scoredistill.runs.distill import _build, resolve
from scoredistill.samplers import sample
from scoredistill.teachers.testbeds import get_testbed

SHOW = ("within_3std", "mmd_local", "mmd", "sw2")


def _variant(text: str) -> tuple[float, int, int, int, str]:
    lr, batch, pairs, steps, *schedule = text.split(",")
    return float(lr), int(batch), int(pairs), int(steps), (schedule or ["constant"])[0]


def _score(testbed, x: torch.Tensor) -> dict[str, float]:
    m = testbed_metrics(testbed, x.double(), seed=1)
    return {k: m[k] for k in SHOW if k in m}


def fit(
    gen0,
    testbed,
    z,
    y,
    zt,
    lr: float,
    batch: int,
    pairs: int,
    steps: int,
    schedule: str,
    every: int = 500,
) -> list[dict]:
    """Regress a copy of ``gen0`` on the first ``pairs`` of ``(z, y)``; score on ``zt``.
    ``schedule``: ``constant`` or ``cosine`` (from ``lr`` to 0 over ``steps``)."""
    gen = copy.deepcopy(gen0)
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    if schedule not in ("constant", "cosine"):
        raise SystemExit(f"schedule must be constant or cosine, got {schedule!r}")
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    rng, rows = torch.Generator().manual_seed(0), []
    for step in range(1, steps + 1):
        idx = torch.randint(pairs, (batch,), generator=rng)
        loss = (gen(z[idx]) - y[idx]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
        if step % every == 0:
            with torch.no_grad():
                mse = loss.item() / z.shape[1]
                rows.append({"step": step, "train_mse": mse, **_score(testbed, gen(zt))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("testbed", help="a testbed name or a mixture .npz (then give --preset)")
    parser.add_argument(
        "--preset", help="the run's preset (default: dmd2-teacher-init-reg-TESTBED)"
    )
    parser.add_argument("--set", action="append", default=[], help="key=value, as the CLI's")
    parser.add_argument(
        "--variant", action="append", required=True, help="lr,batch,pairs,steps[,cosine]"
    )
    parser.add_argument("--every", type=int, default=500, help="score every N steps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    preset = args.preset or f"dmd2-teacher-init-reg-{args.testbed}"
    cfg, _ = resolve(preset, [f"testbed={args.testbed}", *args.set])
    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    if testbed.conditional:
        raise SystemExit(f"{args.testbed}: conditional testbeds are not supported here")
    gen0, _, _ = _build(cfg, testbed)
    variants = [_variant(v) for v in args.variant]
    rng = torch.Generator().manual_seed(555)
    z = gen0.sample_latent(max(v[2] for v in variants), rng)
    y, _ = sample(testbed.teacher, "dpmpp-2m", cfg.regression_nfe, len(z), rng=rng, z=z)
    zt = gen0.sample_latent(2000, torch.Generator().manual_seed(9))
    ceiling = _score(testbed, y[:2000])
    print(f"{args.testbed}: the teacher's 64-NFE pairs themselves (a perfect fit): {ceiling}")
    out = {"testbed": args.testbed, "ceiling": ceiling, "variants": {}}
    for text, v in zip(args.variant, variants, strict=True):
        start = time.perf_counter()
        rows = fit(gen0, testbed, z, y, zt, *v, every=args.every)
        took = time.perf_counter() - start
        out["variants"][text] = {"seconds": took, "rows": rows}
        print(
            f"\n{text} (lr, batch, pairs, steps[, schedule]), {took:.0f} s\n\n| step | "
            + " | ".join(SHOW)
            + " |"
        )
        print("|---:|" + "---:|" * len(SHOW))
        for r in rows:
            print(f"| {r['step']} | " + " | ".join(f"{r[k]:.4g}" for k in SHOW if k in r) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
