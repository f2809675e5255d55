"""``--dry-run``'s network report for the seed systems (``runs.dry_run.network_report``): each
system's networks built untrained by the builders its ``procedure`` calls, nothing trained.

Memory is fp32 weights plus Adam's gradient and two moments (4 copies) for what trains, 1 copy
for what is held frozen (an EMA, an init a student is copied from, a network fitted earlier).
Where a run trains several networks one after the other, they are listed together: the total is
an upper bound. Every system's teacher is exact (no parameters) except Diff-Protect's learned
denoiser, listed among its networks. ``diffprotect_sd`` loads its networks from a diffusers folder
and is not reported (:data:`NOT_REPORTED`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..dry_run import count_params, network_report

__all__ = [
    "NOT_REPORTED",
    "dd2_networks",
    "diffprotect_networks",
    "dpo_networks",
    "nasa_networks",
    "sid_protein_networks",
    "sparse3d_networks",
]

NOT_REPORTED = {
    "diffprotect_sd": "not reported: the VAE, UNet and text encoder load from the diffusers "
    "folder of config key 'teacher' (default: the bundled digits-sd pipeline) and stay frozen; "
    "the attacks optimise only the images' perturbation",
}


def _seeded_build(seed: int, build: Any) -> Any:
    """``build()`` under ``torch.manual_seed(seed)`` (as the procedures seed before building),
    leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def dd2_networks(cfg: Any) -> dict[str, Any]:
    """DD2: the sequence generator and the prefix-conditioned critic (both trained, also in
    their init fits) and the generator's EMA (``train_two_player`` keeps one: frozen)."""
    from .dd2 import build, make_critic, make_generator

    def nets() -> tuple[nn.Module, nn.Module]:
        tb = build(cfg)[0]
        return make_generator(cfg, tb), make_critic(cfg, tb)

    generator, critic = _seeded_build(cfg.seed, nets)
    frozen = {"generator EMA (frozen)": generator}
    return network_report({"generator": generator, "critic": critic}, frozen)


def dpo_networks(cfg: Any) -> dict[str, Any]:
    """Distillation-DPO: the DPO student's generator and its two fake critics (winner, loser:
    trained), and the DMD student's generator (trained first, then held: frozen). A critic is a
    residual on the exact teacher: only the residual network has parameters."""
    from .dpo import make_players, make_task

    task = make_task(cfg.testbed_seed)
    dmd_gen, _ = _seeded_build(cfg.seed, lambda: make_players("dmd", cfg, task))
    gen, critics = _seeded_build(cfg.seed, lambda: make_players("dpo", cfg, task))
    trained = {"generator (dpo)": gen, "critics (dpo: winner, loser)": critics}
    return network_report(trained, {"generator (dmd, trained first, frozen)": dmd_gen})


def nasa_networks(cfg: Any) -> dict[str, Any]:
    """NASA: the cross-attention generator and the residual critic on the exact teacher
    (trained) and the generator's EMA (frozen)."""
    from .nasa import build

    _, _, gen, critic = _seeded_build(cfg.seed, lambda: build(cfg))
    return network_report({"generator": gen, "critic": critic}, {"generator EMA (frozen)": gen})


def sid_protein_networks(cfg: Any) -> dict[str, Any]:
    """SiD-Protein: the generator and the fake score (copies of the init: trained; the 1-step
    and the K-step students train in turn, the first's EMA held while the second trains), the
    generator's EMA, the init and its untrained generator (frozen). ``init=dsm``'s MLP is counted
    before its DSM fit (the same parameters)."""
    from ...sources.generators import FewStepGenerator
    from ...teachers.backbones import backbone_teacher, make_templates
    from .sid_protein import init_net, student_sigmas

    _, tmpl = make_templates(
        cfg.templates, cfg.length, seed=cfg.testbed_seed, min_sep=cfg.min_sep_a
    )
    init = _seeded_build(
        cfg.seed, lambda: init_net(cfg, backbone_teacher(tmpl, cfg.template_std_a))
    )
    ts = student_sigmas(cfg.student_steps, cfg.grid_first, cfg.grid_last, cfg.one_step_t)
    generator = FewStepGenerator(copy.deepcopy(init), ts=ts)
    n = count_params(generator)
    frozen: dict[str, nn.Module | int] = {"generator EMA (frozen)": n, "init (frozen)": init}
    frozen |= {"init generator, untrained (frozen)": n, "1-step student EMA (frozen)": n}
    return network_report({"generator": generator, "fake score": copy.deepcopy(init)}, frozen)


def sparse3d_networks(cfg: Any) -> dict[str, Any]:
    """Sparse3D: the voxel field (each arm fits a fresh one in turn: trained). The teachers
    are exact; the testbed's ground-truth field is data, not listed."""
    from .sparse3d import new_field

    return network_report({"voxel field (one arm at a time)": new_field(cfg)})


def diffprotect_networks(cfg: Any) -> dict[str, Any]:
    """Diff-Protect: the VAE (fitted by Adam first: trained), the learned denoiser (DSM trains
    a copy and keeps the network itself as its EMA: one trained, one frozen) and the protected
    images PGD iterates (``n_protect`` digits, 64 pixels: 1 copy, a sign step keeps no
    moments). The exact latent mixture is the other teacher."""
    from .diffprotect_lab import MLPVAE, learned_teacher

    vae = MLPVAE(64, cfg.latent_dim, cfg.vae_hidden)
    denoiser = learned_teacher(cfg.latent_dim, cfg.schedule, cfg.denoiser_hidden, cfg.seed)
    trained = {"vae": vae, "learned denoiser (DSM)": denoiser}
    frozen: dict[str, nn.Module | int] = {"learned denoiser EMA (frozen)": denoiser}
    frozen["protected images (PGD iterate)"] = cfg.n_protect * 64
    return network_report(trained, frozen)
