"""The view-aware text-to-image teacher (``assets/teachers/views-sd``) and the voxel fields made
under it, scored by view (``eval.views_sd``: nearest ground-truth ring render -> sector)::

    OMP_NUM_THREADS=1 python benchmarks/views_sd.py teacher --json benchmarks/out/views_sd_teacher.json
    OMP_NUM_THREADS=1 python benchmarks/views_sd.py fields --runs runs/views-sd \\
        --presets sds-sd-field vsd-sd-field esd-sd --seeds 0 1 2 --json benchmarks/out/views_sd_field.json

``teacher``: samples from ``DiffusionPipeline.from_pretrained(folder)`` itself (its DDIM,
trailing spacing, 20 steps), ``--n`` per prompt, for the bare prompt and its three view rows;
``view_acc`` is the fraction whose nearest ring render lies in the asked sector; for the bare
prompt the seen-sector shares (the data's: ``exp(4 cos az)``). ``fields``: runs made with
``scoredistill optimize --preset P --teacher .../pipeline --prompts .../prompts.txt`` (made
when missing, as ``benchmarks/optimize_sd.py`` does), their 24 ring renders (``samples.npz``)
scored per camera sector, ``janus`` and ``view_entropy``, beside ``view_spread``; the object's
own renders give the perfect row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from scoredistill.eval.metrics3d import apparent_azimuths
from scoredistill.eval.views_sd import (
    SECTORS,
    nearest_rms,
    reference_ring,
    truth_scores,
    view_scores,
)
from scoredistill.teachers.views import prompt_for_azimuth
from scoredistill.teachers.views_sd_data import (
    VIEW_SUFFIXES,
    ViewsDataConfig,
    render_object,
    views_sd_data,
)

ROOT = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "views-sd"
KEYS = ("view_acc", "view_acc_front", "view_acc_side", "view_acc_back", "janus", "off_45",
        "view_entropy", "nn_rms", "psnr", "view_spread", "dec_view_acc", "dec_janus",
        "dec_nn_rms", "wall_s")  # fmt: skip


def teacher(folder: Path, base: str, scales: list[float], n: int, seed: int) -> list[dict]:
    """One row per (CFG, prompt): the seen-sector shares and ``view_acc`` of ``n`` samples."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = reference_ring()
    x, captions, _ = views_sd_data()  # the training data through the same judge
    rows = [
        _row("data", p, x[[c == p for c in captions]], ref, k) for k, p in enumerate(_rows(base))
    ]
    for w in scales:
        for k, prompt in enumerate(_rows(base)):
            g = torch.Generator().manual_seed(seed + k)
            with torch.no_grad():
                out = pipe([prompt] * n, num_inference_steps=20, guidance_scale=w, generator=g,
                           output_type="pt")  # fmt: skip
            rows.append(_row(w, prompt, out.images * 2 - 1, ref, k))
    return rows


def _rows(base: str) -> list[str]:
    return [base, *(f"{base}, {v}" for v in VIEW_SUFFIXES)]


def _row(w: float | str, prompt: str, x: torch.Tensor, ref, k: int) -> dict:
    """Seen-sector shares of ``x`` (the ``k``-th prompt row), ``view_acc`` and ``nn_rms``."""
    seen = prompt_for_azimuth(apparent_azimuths(x, *ref))
    shares = {f"seen_{s}": float((seen == i).double().mean()) for i, s in enumerate(SECTORS)}
    acc = shares[f"seen_{SECTORS[k - 1]}"] if k else None
    row = {"cfg": w, "prompt": prompt, "n": len(x), "view_acc": acc, **shares,
           "nn_rms": nearest_rms(x, ref)}  # fmt: skip
    text = "  ".join(f"{a} {b:.3f}" for a, b in shares.items())
    text += (f"  view_acc {acc:.3f}" if k else "") + f"  nn_rms {row['nn_rms']:.3f}"
    print(f"cfg {w!s:>4}  {prompt:<22s} {text}", flush=True)
    return row


def fields(runs: Path, presets: list[str], seeds: list[int], extra: list[str], tag: str,
           folder: Path) -> dict:  # fmt: skip
    """``preset: [per-seed scores]`` and ``truth``: the object's renders at the same cameras.
    ``dec_*``: the same scores of the renders after the teacher's VAE (posterior mean, decoded),
    the picture the teacher is shown."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval()
    ref, out, az = reference_ring(), {}, None
    for preset in presets:
        out[preset + tag] = []
        for seed in seeds:
            run = runs / f"{preset}{tag}-s{seed}"
            if not (run / "metrics.json").is_file():
                cmd = [sys.executable, "-m", "scoredistill", "optimize", "--preset", preset,
                       "--seed", str(seed), "--out", str(run), *extra]  # fmt: skip
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            m = json.loads((run / "metrics.json").read_text())
            npz = np.load(run / "samples.npz")
            az = torch.from_numpy(npz["azimuth"]).double()
            x = torch.from_numpy(npz["x"]).float().reshape(len(az), *ref[0].shape[1:])
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            s = view_scores(x, az, ref) | {"view_spread": m["view_spread"], "wall_s": m["wall_s"]}
            s |= {f"dec_{k}": v for k, v in view_scores(y, az, ref).items()}
            out[preset + tag].append({"seed": seed, **s})
            print(f"{preset}{tag} s{seed}  " + "  ".join(f"{k} {s[k]:.3f}" for k in KEYS),
                  flush=True)  # fmt: skip
    if az is not None:  # the perfect method: the object itself, also through the VAE
        x = render_object(ViewsDataConfig(), az, torch.full_like(az, 15.0))
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        dec = {f"dec_{k}": v for k, v in view_scores(y, az, ref).items()}
        out["truth"] = [truth_scores(az, ref) | dec]
    return out


def table(result: dict) -> str:
    """Markdown: mean ± std over seeds per preset."""
    lines = ["| preset | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for preset, rows in result.items():
        cells = []
        for k in KEYS:
            vals = [float(r[k]) for r in rows if k in r]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}" if vals else "—")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("teacher", "fields"))
    p.add_argument("--teacher", type=Path, default=ROOT / "pipeline")
    p.add_argument("--prompt", default="a toy")
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=Path("runs/views-sd"))
    p.add_argument("--presets", nargs="+", default=["sds-sd-field", "vsd-sd-field", "esd-sd"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="sets", action="append", default=[], help="passed through")
    p.add_argument("--tag", default="", help="run-folder suffix, e.g. -novp")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if a.what == "teacher":
        result: dict | list = teacher(a.teacher, a.prompt, a.cfg, a.n, a.seed)
    else:
        extra = ["--teacher", str(a.teacher), "--prompts", str(a.teacher.parent / "prompts.txt")]
        extra += [x for kv in a.sets for x in ("--set", kv)]
        result = fields(a.runs, a.presets, a.seeds, extra, a.tag, a.teacher)
        print(table(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
