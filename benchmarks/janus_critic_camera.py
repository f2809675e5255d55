"""How much does a finished ESD run's learned critic depend on the camera? (issue 15, item 3)

ESD's lambda mixes the camera-conditional and the camera-free critic; if the two agree, lambda
cannot change the update. For each run folder (written by ``benchmarks/janus_sweep.py``) this
loads the last checkpoint, renders the field at 12 azimuths, noises the renders at several
times and prints ``|D(x_t; az) - D(x_t; no camera)| / |D(x_t; no camera)|`` beside the spread of
the renders themselves, ``|x - mean_az x| / |x|``::

    python benchmarks/janus_critic_camera.py runs/janus/esd-k1-lam1-s0 [more run folders]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from scoredistill.parametrization import NULL_LABEL
from scoredistill.runs.optimize import _views_task, resolve
from scoredistill.runs.optimize_build import load_testbed


def camera_effect(run: Path, times=(0.1, 0.3, 0.5, 0.7)) -> dict[str, float]:
    c = json.loads((run / "config.json").read_text())
    sets = [f"kappa={c['kappa']}", f"objective.lam={c['objective']['lam']}",
            f"train.seed={c['train']['seed']}", f"train.steps={c['train']['steps']}",
            "critic.camera=azimuth"]  # fmt: skip
    cfg, objective = resolve("esd-views", sets)
    testbed = load_testbed(cfg)
    task = _views_task(cfg, objective, testbed)
    state = load_file(run / "checkpoints" / f"step-{cfg.train.steps}" / "state.safetensors")
    for name in ("critic", "source"):
        prefix = f"model/{name}/"
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        task[name].load_state_dict(own)
    az = torch.arange(0.0, 360.0, 30.0)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    with torch.no_grad():
        x = task["source"](testbed.cameras(az))
        out["render_spread"] = float((x - x.mean(0)).norm() / x.norm())
        for t0 in times:
            t = torch.full((len(az),), t0)
            a, s = task["critic"].schedule.alpha_sigma(t)
            noise = torch.randn(x.shape, generator=gen)
            x_t = a[:, None, None, None] * x + s[:, None, None, None] * noise
            d_cam = task["critic"].denoise(x_t, t, az)
            d_free = task["critic"].denoise(x_t, t, torch.full_like(az, float(NULL_LABEL)))
            out[f"t{t0:g}"] = float((d_cam - d_free).norm() / d_free.norm())
    return out


def main() -> None:
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        print(arg, json.dumps({k: round(v, 4) for k, v in camera_effect(Path(arg)).items()}))


if __name__ == "__main__":
    main()
