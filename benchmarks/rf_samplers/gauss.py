"""1-D Gaussian N(0, c^2) on rf: gain of each sampler, y_out / y_T, against the exact flow's."""

import torch

from scoredistill.samplers import SAMPLERS, nfe_to_steps, time_grid
from scoredistill.schedules import get_schedule
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
rf = get_schedule("rf")
for c in (0.055, 0.5):
    g = GaussianMixtureTeacher([[0.0]], [1.0], stds=[c], schedule="rf")
    aT, sT = rf.alpha_sigma(torch.tensor([rf.t_max], dtype=F64))
    a0, s0 = rf.alpha_sigma(torch.tensor([rf.t_min], dtype=F64))
    xT = sT.reshape(1, 1)  # z = 1
    # exact: x~ scales with sqrt(c^2 + s~^2); then the final denoise c^2/(c^2 + s~^2) x~ at t_min
    sve_T, sve_0 = float(sT / aT), float(s0 / a0)
    y_exact = (xT / aT) * ((c**2 + sve_0**2) / (c**2 + sve_T**2)) ** 0.5 * c**2 / (c**2 + sve_0**2)
    print(
        f"## c = {c}: exact output {float(y_exact):.5f} (x_T = {float(xT):.4f}); relative error of each sampler"
    )
    print("| sampler | grid | " + " | ".join(str(k) for k in (4, 8, 16, 32, 64)) + " |")
    for name in ("ddim", "heun", "dpmpp-2m"):
        for sp in ("uniform", "logsnr", "karras"):
            errs = []
            for nfe in (4, 8, 16, 32, 64):
                k, used = nfe_to_steps(name, nfe)
                out = SAMPLERS[name](g.denoise, rf, xT.clone(), time_grid(rf, k, sp))
                errs.append(f"{float((out - y_exact) / y_exact):+.3g}")
            print(f"| {name} | {sp} | " + " | ".join(errs) + " |")
    ts = time_grid(rf, 2, "uniform")
    one = SAMPLERS["heun"](g.denoise, rf, xT.clone(), ts, final_denoise=False)
    print(
        f"one Heun step t_max -> t_min (VE view): x = {float(one):.3f} "
        f"(x_T = {float(xT):.3f}, s~_T/2 = {sve_T / 2})"
    )
