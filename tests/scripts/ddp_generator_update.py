"""One generator update through Accelerate, on this process's share of a fixed batch.

Run under ``torchrun --nproc_per_node N`` (each rank takes 1/N of the batch) or plainly (the
whole batch). The update is DMD's with the noise set to zero (``x_t = alpha x`` at a fixed t), so
every sample's contribution is deterministic and the averaged DDP gradient must equal the
single-process gradient on the whole batch. Writes the updated weights to ``OUT/rank<r>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from scoredistill.io import save_safetensors_atomic
from scoredistill.objectives._ingredients import surrogate_loss
from scoredistill.sources.generators import OneStepGenerator
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.testbeds import get_testbed


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    gen = OneStepGenerator(2, hidden=32, depth=2)
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    gen, opt = acc.prepare(gen, opt)
    teacher = get_testbed("ring8").teacher
    critic = GaussianMixtureTeacher(torch.zeros(1, 2), [1.0], stds=[0.3])  # a fake score
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    share = z.chunk(acc.num_processes)[acc.process_index]
    x = gen(share)
    t = torch.full((x.shape[0],), 0.3)
    alpha, _ = teacher.schedule.alpha_sigma(t)
    with torch.no_grad():
        x_t = alpha[:, None] * x
        g = critic.denoise(x_t, t) - teacher.denoise(x_t, t)
    opt.zero_grad()
    acc.backward(surrogate_loss(x, g))
    opt.step()
    state = {k: v.detach().contiguous() for k, v in acc.unwrap_model(gen).state_dict().items()}
    save_safetensors_atomic(state, out / f"rank{acc.process_index}-of-{acc.num_processes}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
