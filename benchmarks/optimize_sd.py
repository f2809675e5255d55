"""Score distillation as optimization under the text-to-image prior: every ``optimize-sd`` preset
on the same teacher and seeds, one table (mean ± std over seeds, and per seed).

Runs that are missing are made with the CLI (``scoredistill optimize --preset P --seed S --out
RUNS/P-sS``); finished ones are read from their ``metrics.json``, so the script resumes::

    OMP_NUM_THREADS=1 python benchmarks/optimize_sd.py --runs runs/optsd --seeds 0 \\
        --presets sds-sd vsd-sd csd-sd cds-sd asd-sd bsd-sd ism-sd \\
        --json benchmarks/out/optimize_sd_latent.json
    OMP_NUM_THREADS=1 python benchmarks/optimize_sd.py --runs runs/optsd --seeds 0 1 2 \\
        --presets sds-sd-field vsd-sd-field esd-sd --json benchmarks/out/optimize_sd_field.json
    OMP_NUM_THREADS=1 python benchmarks/optimize_sd.py --runs runs/optsd --seeds 0 1 2 \\
        --presets sds-sd-field vsd-sd-field esd-sd --set source.prompt_index=7 --tag=-p7 \\
        --json benchmarks/out/optimize_sd_field_p7.json

Latent particles are scored as decoded images (digits FD, precision, recall, prompt accuracy);
a field by its ring renders (prompt accuracy over all views and per front/side/back sector, and
``view_spread``, the RMS distance between views). ``--teacher``/``--prompts`` pass through.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

KEYS = ("fd", "precision", "recall", "class_acc", "class_acc_front", "class_acc_side",
        "class_acc_back", "view_spread", "wall_s")  # fmt: skip


def run_once(preset: str, seed: int, out: Path, extra: list[str]) -> dict:
    """``metrics.json`` of the run, made first when missing."""
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "scoredistill", "optimize", "--preset", preset, "--seed",
               str(seed), "--out", str(out), *extra]  # fmt: skip
        if (out / "checkpoints").is_dir():
            cmd.append("--resume")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def summarise(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """``key: (mean, std)`` over the seeds' metrics (std 0 for one seed)."""
    out = {}
    for key in KEYS:
        vals = [float(r[key]) for r in rows if key in r]
        if vals:
            out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    if rows and "fd" in rows[0].get("initial", {}):
        out["initial_fd"] = (
            statistics.fmean(float(r["initial"].get("fd", "nan")) for r in rows),
            0.0,
        )
    return out


def _cell(stat: tuple[float, float] | None, seeds: int) -> str:
    if stat is None:
        return "–"
    return f"{stat[0]:.3g} ± {stat[1]:.2g}" if seeds > 1 else f"{stat[0]:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/optsd"))
    parser.add_argument("--teacher", default="")
    parser.add_argument("--prompts", default="")
    parser.add_argument("--set", action="append", default=[], help="passed to every run")
    parser.add_argument("--tag", default="", help="run folders RUNS/<preset><tag>-s<seed>")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    extra = [*(["--teacher", args.teacher] if args.teacher else []),
             *(["--prompts", args.prompts] if args.prompts else []),
             *(a for kv in args.set for a in ("--set", kv))]  # fmt: skip
    results = {}
    for preset in args.presets:
        folders = [args.runs / f"{preset}{args.tag}-s{s}" for s in args.seeds]
        rows = [run_once(preset, s, f, extra) for s, f in zip(args.seeds, folders, strict=True)]
        results[preset] = {"seeds": args.seeds, "per_seed": rows, "summary": summarise(rows)}
    keys = [k for k in (*KEYS, "initial_fd") if any(k in r["summary"] for r in results.values())]
    print("| preset | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for preset, r in results.items():
        cells = [_cell(r["summary"].get(k), len(args.seeds)) for k in keys]
        print(f"| `{preset}` | " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
