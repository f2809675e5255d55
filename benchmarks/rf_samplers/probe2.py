"""Independent computations (diffusers' own steps) and the mechanism, on the rf schedule."""

import time

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from scoredistill.runs.systems.sid_protein import SiDProteinConfig, score
from scoredistill.samplers import ddim, dpmpp_2m, heun, nfe_to_steps, time_grid
from scoredistill.teachers.backbones import backbone_teacher, make_templates

F64 = torch.float64
cfg = SiDProteinConfig(seed=0)
_, tmpl = make_templates(cfg.templates, cfg.length, seed=cfg.testbed_seed, min_sep=cfg.min_sep_a)
teacher = backbone_teacher(tmpl, cfg.template_std_a)
rf = teacher.schedule
ex = torch.load("benchmarks/out/rf_exact.pt", weights_only=True)
z, x_exact = ex["z"], ex["x_exact"]
n = len(z)
t0 = time.process_time()


def err_a(x):
    d = (x.double() - x_exact).reshape(n, cfg.length, 3) * 10
    return float(d.pow(2).sum(-1).mean(-1).sqrt().median())


def D(x, sig):  # teacher denoiser at rf time t = sigma
    return teacher.denoise(x.double(), torch.full((len(x),), float(sig), dtype=F64)).float()


def x_T(sig0):
    return z.float() * float(sig0)


def diffusers_heun(sig):
    s = FlowMatchHeunDiscreteScheduler()
    s.set_timesteps(len(sig))
    sig = sig.float()
    s.timesteps = torch.cat([sig[:1], sig[1:].repeat_interleave(2)]) * 1000
    s.sigmas = torch.cat([sig[:1], sig[1:].repeat_interleave(2), torch.zeros(1)])
    s.set_begin_index(0)
    x = x_T(sig[0])
    for i, t in enumerate(s.timesteps):
        sg = s.sigmas[i]
        v = (x - D(x, sg)) / sg  # flow_prediction: x0 = x - sigma v
        x = s.step(v, t, x).prev_sample
    return x


def diffusers_euler(sig):
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(sigmas=sig.float().tolist())
    x = x_T(sig[0])
    for i, t in enumerate(s.timesteps):
        sg = s.sigmas[i]
        x = s.step((x - D(x, sg)) / sg, t, x).prev_sample
    return x


def diffusers_dpmpp(sig):
    s = DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        solver_order=2,
        final_sigmas_type="zero",
    )
    s.set_timesteps(len(sig))
    sig = sig.float()
    s.sigmas, s.timesteps = torch.cat([sig, torch.zeros(1)]), sig * 1000
    s.set_begin_index(0)
    x = x_T(sig[0])
    for i, t in enumerate(s.timesteps):
        sg = s.sigmas[i]
        x = s.step((x - D(x, sg)) / sg, t, x).prev_sample
    return x


def ours(fn, ts):
    return fn(teacher.denoise, rf, x_T(ts[0]).double() * 1, ts)


print("## diffusers vs ours (protein teacher, 500 samples; rf: sigma = t)")
for sp in ("uniform", "logsnr", "karras"):
    for nfe in (4, 8, 16, 32, 64):
        ts = time_grid(rf, nfe, sp)
        a = ours(dpmpp_2m, ts)
        b = diffusers_dpmpp(ts)
        print(
            f"dpmpp {sp:8s} nfe {nfe:3d} ours err {err_a(a):.4f} diffusers err {err_a(b):.4f} "
            f"max|diff| nm {float((a - b).abs().max()):.2e}",
            flush=True,
        )
for sp in ("uniform", "logsnr", "karras"):
    for nfe in (4, 8, 16, 32, 64):
        k, used = nfe_to_steps("heun", nfe)
        ts = time_grid(rf, k, sp)
        a = ours(heun, ts)
        b = diffusers_heun(ts)
        m = score(cfg, b, torch.from_numpy(tmpl))
        print(
            f"heun  {sp:8s} nfe {used:3d} ours(VE s~) err {err_a(a):9.4f} "
            f"diffusers FlowMatchHeun(t) err {err_a(b):9.4f} "
            f"designable {m['designability']:.3f} rmsd_med {m['rmsd_median_A']:.2f}",
            flush=True,
        )
ts = time_grid(rf, 8, "uniform")
a = ours(ddim, ts)
b = diffusers_euler(ts)
print(f"ddim uniform 8 vs FlowMatchEuler max|diff| nm {float((a - b).abs().max()):.2e}")

print("## mechanism: DPM-Solver++(2M) on uniform t with the step into t_min first order (DDIM)")
for nfe in (8, 16, 32, 64):
    ts = time_grid(rf, nfe, "uniform")
    lam = -torch.log(ts / (1 - ts))
    h = lam[1:] - lam[:-1]
    x = dpmpp_2m(teacher.denoise, rf, x_T(ts[0]).double(), ts[:-1], final_denoise=False)
    x = ddim(teacher.denoise, rf, x, ts[-2:])
    print(
        f"nfe {nfe}: last h {float(h[-1]):.2f}, previous h {float(h[-2]):.2f}, r {float(h[-2] / h[-1]):.3f};"
        f" 2M err {err_a(ours(dpmpp_2m, ts)):.4f} -> last step first order err {err_a(x):.4f}",
        flush=True,
    )
print("cpu s", time.process_time() - t0)
