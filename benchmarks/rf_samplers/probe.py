"""Issue 14 side finding: rf-schedule samplers against the exact PF-ODE (SiD-Protein teacher).

Errors: per-sample RMS deviation over residues (Å) from the exact sampler output
D(Phi(x_T, t_max -> t_min), t_min), float64, 500 samples of the seed-20000 noise."""

import json
import time

import torch

from scoredistill.runs.systems.sid_protein import SiDProteinConfig, score
from scoredistill.samplers import sample
from scoredistill.teachers.backbones import backbone_teacher, make_templates
from scoredistill.teachers.pf_ode import pf_ode_map

F64 = torch.float64
cfg = SiDProteinConfig(seed=0)
_, tmpl = make_templates(cfg.templates, cfg.length, seed=cfg.testbed_seed, min_sep=cfg.min_sep_a)
teacher = backbone_teacher(tmpl, cfg.template_std_a)
tmpl_t = torch.from_numpy(tmpl)
rf = teacher.schedule
rng = torch.Generator().manual_seed(cfg.seed + 20_000)
z_all = torch.randn(cfg.eval_samples, teacher.dim, generator=rng, dtype=torch.float32)
n = 500
z = z_all[:n]
t0 = time.process_time()
xT = z.double() * rf.alpha_sigma(torch.tensor([rf.t_max], dtype=F64))[1]
T, S = torch.tensor(rf.t_max, dtype=F64), torch.tensor(rf.t_min, dtype=F64)
x_tmin = pf_ode_map(teacher, xT, T, S, rtol=1e-8, atol=1e-8)
x_exact = teacher.denoise(x_tmin, torch.full((n,), rf.t_min, dtype=F64))
print("exact ODE cpu s", time.process_time() - t0, score(cfg, x_exact, tmpl_t), flush=True)
torch.save({"z": z, "x_tmin": x_tmin, "x_exact": x_exact}, "benchmarks/out/rf_exact.pt")


def err_a(x):
    d = (x.double() - x_exact).reshape(n, cfg.length, 3) * 10  # nm -> Å
    per = d.pow(2).sum(-1).mean(-1).sqrt()
    return float(per.median())


rows = []
for sampler in ("ddim", "heun", "dpmpp-2m"):
    for sp in ("uniform", "logsnr", "karras"):
        for nfe in (2, 4, 8, 16, 32, 64):
            x, used = sample(teacher, sampler, nfe, n, rng=None, spacing=sp, z=z, dtype=F64)
            m = score(cfg, x, tmpl_t)
            rows.append(
                dict(
                    sampler=sampler,
                    spacing=sp,
                    nfe=used,
                    err_med_A=err_a(x),
                    designability=m["designability"],
                    rmsd_median_A=m["rmsd_median_A"],
                )
            )
            print(rows[-1], flush=True)
with open("benchmarks/out/rf_protein_errors.json", "w") as fh:
    json.dump(rows, fh, indent=1)
print("total cpu s", time.process_time() - t0)
