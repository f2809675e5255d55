"""One DMD-style generator update of a diffusers student, on this process's share of a batch.

``python unet_parallel_update.py TEACHER OUT MODE...`` under ``torchrun --nproc_per_node N``
(each rank takes 1/N of the batch) or plainly (the whole batch). For each MODE (``ddp``,
``fsdp2``) the library builds ``DiffusersGenerator`` and a critic from the teacher folder and
prepares them as the two-player loop does (``train.parallel.prepare_players``); the update is
DMD's with the noise set to zero (``x_t = alpha x`` at a fixed t, ``g = D_fake - D_real``), so
the averaged (DDP) or reduce-scattered (FSDP2) gradient must equal one process's gradient on the
whole batch. Writes the updated full weights to ``OUT/<mode>-rank<r>-of-<N>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from scoredistill.io import save_safetensors_atomic
from scoredistill.objectives._ingredients import surrogate_loss
from scoredistill.sources.diffusers import DiffusersGenerator, make_diffusers_critic
from scoredistill.teachers.diffusers import load_diffusers_teacher
from scoredistill.train.parallel import full_state_dict, prepare_players


def update(acc: Accelerator, teacher, mode: str) -> dict[str, torch.Tensor]:
    gen = DiffusersGenerator(teacher, sigma_init=2.5)
    critic = make_diffusers_critic(teacher)
    with torch.no_grad():  # a critic that differs from the teacher: a non-zero update
        for p in critic.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    gen, crit, opt, _ = prepare_players(
        acc, mode, gen, critic, lambda m, _: torch.optim.SGD(m.parameters(), lr=0.5)
    )
    rng = torch.Generator().manual_seed(1)
    z, labels = torch.randn(8, teacher.dim, generator=rng), torch.arange(8) % 10
    share = slice(
        acc.process_index * 8 // acc.num_processes, (acc.process_index + 1) * 8 // acc.num_processes
    )
    x = gen(z[share], labels[share])
    t = torch.full((x.shape[0],), 0.4, dtype=torch.float64)
    alpha, _ = teacher.schedule.alpha_sigma(t)
    with torch.no_grad():
        x_t = alpha[:, None].float() * x
        g = crit(x_t, t, labels[share]) - teacher.denoise(x_t, t, labels[share])
    opt.zero_grad()
    acc.backward(surrogate_loss(x, g))
    opt.step()
    return full_state_dict(acc.unwrap_model(gen), everywhere=True)


def main(teacher_dir: str, out: Path, modes: list[str]) -> None:
    acc = Accelerator(cpu=True)
    teacher = load_diffusers_teacher(teacher_dir)
    for mode in modes:
        torch.manual_seed(0)
        state = {k: v.detach().contiguous() for k, v in update(acc, teacher, mode).items()}
        name = f"{mode}-rank{acc.process_index}-of-{acc.num_processes}"
        save_safetensors_atomic(state, out / name)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
