"""Issue 15, item 3: can ESD's lambda move the Janus rate toward the marginal matcher's? A sweep.

ESD (``esd-views``) with the continuous-azimuth critic (``critic.camera=azimuth``) over
``lambda`` x ``kappa`` x seeds, in one process (the renders are built once), resumable (a run
folder with ``metrics.json`` is read back, not rerun)::

    OMP_NUM_THREADS=1 python benchmarks/janus_sweep.py --out runs/janus --steps 400 \\
        --lams 0 0.25 0.5 1 --kappas 1 2 4 --seeds 0 1 2
    python benchmarks/janus_sweep.py --out runs/janus --table-only ...   # the tables only

Prints, per ``kappa``, the marginal matcher's references (``eval.janus_reference``) and per
``lambda`` the Janus rate, view entropy, front fraction, PSNR and IoU (mean ± std over seeds, and
the Janus rate per seed). ``--set KEY=VALUE`` adds overrides to every run (``--tag`` names them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scoredistill.runs.optimize import resolve, run_optimize

_KEYS = ("janus_rate", "view_entropy", "front_fraction", "psnr", "iou")


def run_dir(out: Path, tag: str, kappa: float, lam: float, seed: int) -> Path:
    return out / f"{tag}-k{kappa:g}-lam{lam:g}-s{seed}"


def run_one(out: Path, args: argparse.Namespace, kappa: float, lam: float, seed: int) -> dict:
    folder = run_dir(out, args.tag, kappa, lam, seed)
    if (folder / "metrics.json").exists():
        return json.loads((folder / "metrics.json").read_text())
    sets = [
        f"kappa={kappa}", f"objective.lam={lam}", f"train.seed={seed}", f"train.steps={args.steps}",
        "critic.camera=azimuth", "train.eval_every=0", f"train.checkpoint_every={args.steps}",
        *args.set,
    ]  # fmt: skip
    cfg, objective = resolve(args.preset, sets)
    return run_optimize(cfg, objective, folder)


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def table(rows: dict[tuple[float, float, int], dict], args: argparse.Namespace) -> str:
    lines = []
    for kappa in args.kappas:
        ref = next((m for (k, _, _), m in rows.items() if k == kappa), None)
        if ref is None:
            continue
        lines += [
            f"\nkappa = {kappa:g}: optimal-transport matcher Janus {ref['ot_janus_rate']:.3f}, "
            f"view entropy {ref['ot_view_entropy']:.3f}, front {ref['ot_front_fraction']:.3f}; "
            f"least Janus of any matcher {ref['least_janus_rate']:.3f}",
            "| lambda | Janus rate | per seed | view entropy | front fraction | PSNR dB | IoU |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
        for lam in args.lams:
            ms = [rows[(kappa, lam, s)] for s in args.seeds if (kappa, lam, s) in rows]
            if not ms:
                continue
            per_seed = ", ".join(f"{m['janus_rate']:.3f}" for m in ms)
            cells = [_ms([m[k] for m in ms]) for k in _KEYS]
            lines.append(f"| {lam:g} | {cells[0]} | {per_seed} | " + " | ".join(cells[1:]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="esd-views")
    p.add_argument("--tag", default="esd")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    p.add_argument("--kappas", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every run")
    p.add_argument("--table-only", action="store_true", help="read finished runs, run nothing")
    args = p.parse_args()
    rows = {}
    for seed in args.seeds:  # seed-major: an interrupted sweep has whole seeds
        for kappa in args.kappas:
            for lam in args.lams:
                folder = run_dir(args.out, args.tag, kappa, lam, seed)
                if args.table_only and not (folder / "metrics.json").exists():
                    continue
                rows[(kappa, lam, seed)] = run_one(args.out, args, kappa, lam, seed)
    print(table(rows, args))


if __name__ == "__main__":
    main()
