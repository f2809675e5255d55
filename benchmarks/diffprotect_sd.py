"""Diff-Protect on the bundled text-to-image teacher (``docs/text_to_image.md``, "Diff-Protect on
the latent pipeline")::

    OMP_NUM_THREADS=1 python benchmarks/diffprotect_sd.py --seeds 0 1 2

Per seed, ``runs.systems.diffprotect_sd.run_measurement`` on the first 64 held-out digits:
attacks none / random ±eps / SDS(+) / SDS(-) / AdvDM(+) / AdvDM(-) at the exact-testbed
version's budget (eps 32/255, step 2/255 in [-1, 1], 100 PGD steps), then diffusers' stock
``StableDiffusionImg2ImgPipeline`` of the same folder at 5 strengths with the prompt of the digit.
Prints mean ± std over seeds and writes JSON (per seed and aggregated) to
``benchmarks/out/diffprotect_sd.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from scoredistill.runs.systems.diffprotect_sd import DiffProtectSDConfig, run_measurement

OUT = Path(__file__).resolve().parent / "out" / "diffprotect_sd.json"
COLUMNS = (  # (key, header, format)
    ("pert_psnr", "pert. PSNR dB", ".1f"),
    ("dz_over_dx", "dz/dx", ".2f"),
    ("l2@0.05", "L2@0.05", ".3f"),
    ("l2@0.1", "L2@0.1", ".3f"),
    ("l2@0.2", "L2@0.2", ".3f"),
    ("l2@0.3", "L2@0.3", ".3f"),
    ("l2@0.5", "L2@0.5", ".3f"),
    ("psnr_mean", "PSNR (mean s) dB", ".2f"),
    ("acc_mean", "prompt acc (mean s)", ".3f"),
    ("acc@0.5", "acc@0.5", ".3f"),
    ("ms_per_step", "CPU ms/step", ".0f"),
    ("saved_kib_per_step", "saved KiB/step", ".0f"),
)


def _stats(vals: list[float | None]) -> tuple[float, float] | None:
    xs = [v for v in vals if v is not None and math.isfinite(v)]
    if len(xs) != len(vals) or not xs:
        return None
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(xs) > 1 else 0.0


def _row_values(r: dict) -> dict:
    v = dict(r)
    v["dz_over_dx"] = r["dz_rel"] / r["dx_rel"] if r["dx_rel"] > 0 else None
    v["ms_per_step"] = 1e3 * r["s_per_step"] if "s_per_step" in r else None
    return v


def aggregate(per_seed: dict[int, dict]) -> dict:
    """``{"results": {method: {key: [mean, std]}}, "claims": {key: [mean, std]}}``."""
    seeds = sorted(per_seed)
    methods = list(per_seed[seeds[0]]["results"])
    res = {}
    for m in methods:
        rows = [_row_values(per_seed[s]["results"][m]) for s in seeds]
        res[m] = {k: _stats([r.get(k) for r in rows]) for k in rows[0]}
    claims = {
        k: _stats([per_seed[s]["claims"].get(k) for s in seeds])
        for k in per_seed[seeds[0]]["claims"]
    }
    return {"results": res, "claims": claims}


def _fmt(st: tuple[float, float] | None, spec: str) -> str:
    return "–" if st is None else f"{format(st[0], spec)} ± {format(st[1], spec)}"


def table(agg: dict) -> str:
    lines = ["| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for m, r in agg["results"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(r.get(k), f) for k, _, f in COLUMNS) + " |")
    lines += ["", "| comparison | mean ± std |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v, '.3f')} |" for k, v in agg["claims"].items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--teacher", default="", help="pipeline folder; default: the bundled one")
    p.add_argument("--epsilon", type=float, default=None, help="L-inf budget in [-1, 1] units")
    p.add_argument("--methods", nargs="+", default=None, help="default: all six")
    p.add_argument(
        "--attack-prompt",
        default=None,
        help="the attack's prompt; '{digit}' attacks each image under its own class's prompt",
    )
    p.add_argument("--json", type=Path, default=OUT)
    p.add_argument("--resume", action="store_true", help="keep the seeds already in --json")
    a = p.parse_args()
    sets = {
        "epsilon": a.epsilon,
        "methods": tuple(a.methods) if a.methods else None,
        "attack_prompt": a.attack_prompt,
    }
    sets = {k: v for k, v in sets.items() if v is not None}
    per_seed, walls = {}, {}
    if a.resume and a.json.is_file():
        old = json.loads(a.json.read_text())
        per_seed = {int(k): v for k, v in old["per_seed"].items() if int(k) in a.seeds}
        walls = {int(k): v for k, v in old["times"].items() if int(k) in per_seed}
    for s in a.seeds:
        cfg = DiffProtectSDConfig(seed=s, n_images=a.n_images, teacher=a.teacher, **sets)
        if s in per_seed:
            continue
        start, cpu = time.perf_counter(), time.process_time()
        per_seed[s] = run_measurement(cfg)
        walls[s] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}
        print(
            f"seed {s}: {walls[s]['wall_s']:.0f} s wall, {walls[s]['cpu_s']:.0f} CPU-s", flush=True
        )
        a.json.parent.mkdir(parents=True, exist_ok=True)
        agg = aggregate(per_seed)
        a.json.write_text(
            json.dumps(
                {"config": vars(cfg) | {"seed": a.seeds}, "per_seed": per_seed, "times": walls}
                | {"aggregate": agg},
                indent=2,
            )
        )
    print(table(aggregate(per_seed)))


if __name__ == "__main__":
    main()
