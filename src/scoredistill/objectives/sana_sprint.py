"""SANA-Sprint: sCM + latent adversarial distillation in one step-adaptive student (Chen et al.
2025, "SANA-Sprint: One-Step Diffusion with Continuous-Time Consistency Distillation", arXiv
2503.09641; ``NVlabs/Sana`` ``train_scripts/train_scm_ladd.py``).

The student loss adds a hinge GAN term (LADD: the discriminator reads the teacher's features)
to sCM (``objectives/scm.py``, reused). Generator phase, with ``x_0`` a data batch:

    L_G = lambda_sCM L_sCM(x_0) - lambda_adv mean_b Dis(x_D(x_hat_0), theta_D)              (G)
    x_hat_0 = f_theta(cos(theta') x_0 + sin(theta') sigma_d z', theta')                (one step)
    theta' = theta_max with probability p_max, else theta' ~ sCM's law              (step-adaptive)

Discriminator phase, heads on the **frozen** teacher trunk, ``sg(x_hat_0)`` a fresh draw:

    L_D = 1/2 (mean relu(1 - Dis(x_D(x_0))) + mean relu(1 + Dis(x_D(sg(x_hat_0)))))       (hinge)

``x_D(x) = cos(theta_D) x + sin(theta_D) sigma_d eps`` with ``log sigma_D ~ N(-0.6, 1.0)``,
``theta_D = atan(sigma_D / sigma_d)``: in the VE view ``x + sigma_D eps``, here drawn on the
discriminator's own schedule (``sample_t_lognormal``). Fake and real get independent times.
Because one network is pushed towards data at every angle (``theta'`` covers the whole range and
half the batch starts from pure noise), the same student serves 1-4 sampler steps.

``adv_steps = k > 0`` is the step-specific control (not SANA's default): ``x_hat_0`` is the
student's own ``k``-step sample (``student.sample``, the evaluation sampler, gradients through
every step), so the adversarial term trains exactly the ``k``-step sampler; the sCM term is
unchanged. With ``adv_weight = 0`` the loss is ``scm_weight L_sCM`` exactly
(``tests/test_sana_sprint.py``).

Defaults and their source (``NVlabs/Sana`` ``train_scripts/train_scm_ladd.py`` and
``configs/sana_sprint_config/1024ms/SanaSprint_1600M_1024px_allqknorm_bf16_scm_ladd.yaml``, read
for this file): ``scm_lambda = 1``, ``adv_lambda = 0.5``, ``discriminator_loss: hinge``
(G: ``adv_loss = -mean(pred_fake)``; D: ``0.5 (mean relu(1 - pred_true) + mean relu(1 +
pred_fake))``), ``train_largest_timestep: true``, ``largest_timestep = 1.57080``,
``largest_timestep_prob = 0.5``, ``logit_mean/std = 0.2/1.6`` (sCM's time law) and
``logit_mean/std_discriminator = -0.6/1.0``, both ``weighting_scheme: logit_normal_trigflow``,
which ``diffusion/model/respace.py::compute_density_for_timestep_sampling`` reads as a **log-normal
sigma**, ``theta = atan(sigma / 0.5)`` (0.5 is SANA's sigma_d); ``tangent_warmup_steps = 4000``;
``diff_timesteps_D = True`` (config default); G and D alternate 1 : 1 (``phase``); the
discriminator trunk is the teacher with ``requires_grad_(False)``, only the heads train (diffusers
``examples/research_projects/sana/train_sana_sprint_diffusers.py``: ``disc.model.requires_grad_(
False)``, ``disc.heads.requires_grad_(True)``).

Departures, each a choice of this library:
- **no teacher features on an exact testbed**: the trunk is a frozen DSM fit of the teacher (the
  critic rCM starts from, ``runs/consistency.py``), one MLP head on its last hidden layer
  (``NeuralDenoiser.attach_logit_head``) in place of SANA's four spectral-norm conv heads on
  blocks 2/8/14/19;
- the consistency term is the library's sCM (FastGen's ``||g|| / sqrt(D)`` and the extra ``1/D``;
  SANA: ``||g||``, no ``1/D``; the adaptive ``u(theta)`` absorbs the constant, so the sCM
  gradient has the same size at the optimum of ``u`` and ``lambda_adv`` keeps its meaning);
- ``theta = atan(sigma / sigma_d)`` with the testbed's ``sigma_d`` (the library's sCM convention);
- no CFG embedding, no misaligned caption pairs, no R1 penalty (off in SANA's config).

``train_trunk = True`` (off by default) is DMD2's setting, not SANA's: the trunk trains with the
head on ``L_D`` (DMD2's GAN head sits on its fake-score critic, which trains). ``L_G`` still
reaches the student only: ``adversarial_loss`` freezes every discriminator parameter.
``trunk_dsm_weight = w > 0`` (with ``train_trunk``) completes DMD2's setting: the trunk's
denoiser also takes DMD2's fake-score loss, EDM-weighted DSM on ``sg(x_hat_0)`` (a fresh no-grad
draw of what the head judges), ``L_D + w L_DSM``, so the features the head reads stay those of a
denoiser of the student's distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, UnitFloat
from ._ingredients import Loss, add_noise, denoising_loss, frozen_params, sample_t_lognormal
from .scm import SCM

__all__ = ["SanaSprint", "hinge_critic_loss"]


@dataclass(frozen=True)
class SanaSprint:
    # the consistency term: SANA's time law logit_mean/std 0.2/1.6, tangent_warmup_steps 4000
    scm: SCM = field(default_factory=lambda: SCM(p_mean=0.2, p_std=1.6, tangent_warmup_steps=4000))
    scm_weight: NonNegativeFloat = 1.0  # scm_lambda
    adv_weight: NonNegativeFloat = 0.5  # adv_lambda
    d_p_mean: float = -0.6  # D's noise: log sigma ~ N(this, d_p_std^2) (logit_mean_discriminator)
    d_p_std: PositiveFloat = 1.0  # logit_std_discriminator
    largest_prob: UnitFloat = 0.5  # largest_timestep_prob (train_largest_timestep: true)
    # the largest angle's VE level: None = pi/2 (SANA's 1.57080, pure noise); a value s gives
    # theta = atan(s / sigma_d), e.g. 80: the angle the few-step sampler starts from
    largest_sigma: PositiveFloat | None = None
    adv_steps: NonNegativeInt = 0  # 0: SANA's step-adaptive branch; k: the k-step sampler's output
    adv_start: NonNegativeInt = 0  # student steps of pure sCM first (SANA: 0, both from the start)
    # False: SANA's frozen trunk, only the head trains; True: the trunk trains on L_D too, a
    # departure (DMD2's setting: its GAN head's trunk is the fake-score critic, which trains)
    train_trunk: bool = False
    # with train_trunk: + this weight x DSM of the trunk on sg(x_hat_0) (DMD2's fake-score loss)
    trunk_dsm_weight: NonNegativeFloat = 0.0

    needs_logit_head: ClassVar[bool] = True  # the run attaches a head (make_discriminator)

    def __post_init__(self) -> None:
        if self.trunk_dsm_weight > 0 and not self.train_trunk:
            raise ConfigError(
                "config key 'trunk_dsm_weight' trains the discriminator's trunk as a denoiser; "
                "it needs train_trunk=true (SANA's frozen trunk takes no loss)"
            )

    def uses_critic(self, step: int) -> bool:
        """Whether the adversarial term (and the discriminator's training) is on at ``step``."""
        return self.adv_weight > 0 and step >= self.adv_start

    def make_discriminator(self, critic: nn.Module, width: int) -> nn.Module:
        """``critic`` (the DSM fit, ``.attach_logit_head``) as the discriminator: its trunk
        frozen (SANA) or trainable (``train_trunk``), plus a fresh trainable head ``width`` wide."""
        return critic.requires_grad_(self.train_trunk).attach_logit_head(width)

    def largest_angle(self, sigma_d: float) -> float:
        if self.largest_sigma is None:
            return math.pi / 2
        return math.atan(self.largest_sigma / sigma_d)

    def fake(
        self, x0: Tensor, cond: Tensor | None, student, rng: torch.Generator, grad: bool = True
    ) -> Tensor:
        """The student's ``x_hat_0: (B, D)`` the discriminator judges (module docstring)."""
        n, sd = x0.shape[0], student.sigma_data
        with torch.set_grad_enabled(grad):
            if self.adv_steps:
                z = torch.randn(x0.shape, generator=rng, dtype=x0.dtype)
                return student.sample(z, cond, steps=self.adv_steps, rng=rng)
            # sCM's angle law (the draw of SCM.loss), then theta_max with probability p_max
            _, theta = self.scm.draw_angles(n, sd, rng)
            top = torch.rand(n, generator=rng, dtype=torch.float64) < self.largest_prob
            theta = torch.where(top, torch.full_like(theta, self.largest_angle(sd)), theta)
            z = sd * torch.randn(x0.shape, generator=rng, dtype=torch.float64)
            cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
            x_hat = (cos * x0.double() + sin * z).to(x0.dtype)
            return student(x_hat, theta.to(x0.dtype), cond)

    def logit(self, x: Tensor, cond: Tensor | None, critic, rng: torch.Generator) -> Tensor:
        """``Dis(x_D(x), theta_D)``, ``(B,)``: ``x`` noised at ``log sigma_D ~ N(d_p_mean,
        d_p_std^2)`` on the discriminator's schedule."""
        t = sample_t_lognormal(
            x.shape[0], critic.schedule, self.d_p_mean, self.d_p_std, rng, dtype=x.dtype
        )
        x_t, _, _, _ = add_noise(x, t, critic.schedule, rng)
        return critic.logit(x_t, t, cond)

    def adversarial_loss(
        self, x0: Tensor, cond: Tensor | None, *, student, critic, rng: torch.Generator
    ) -> Loss:
        """SANA's hinge generator loss ``-mean Dis(x_D(x_hat_0))``; the discriminator's
        parameters get no gradient, the student's do (through ``x_hat_0``)."""
        x = self.fake(x0, cond, student, rng)
        with frozen_params(critic):
            logit = self.logit(x, cond, critic, rng)
        value = -logit.mean()
        return Loss(value, {"adv_loss": value.item(), "logit_fake_g": logit.mean().item()})

    def loss(
        self,
        x0: Tensor,
        cond: Tensor | None,
        *,
        student,
        teacher,
        rng: torch.Generator,
        step: int,
        target=None,
        critic=None,
    ) -> Loss:
        """``x0: (B, D)`` data; ``critic`` has ``.logit(x_t, t, cond)`` and ``.schedule``;
        ``target`` is unused (``F^-`` is the stop-grad student)."""
        scm = self.scm.loss(x0, cond, student=student, teacher=teacher, rng=rng, step=step)
        value = self.scm_weight * scm.value
        logs = {**scm.logs, "scm_loss": scm.value.item()}
        if critic is not None and self.uses_critic(step):
            adv = self.adversarial_loss(x0, cond, student=student, critic=critic, rng=rng)
            value, logs = value + self.adv_weight * adv.value, logs | adv.logs
        return Loss(value, logs)

    def critic_loss(
        self, x0: Tensor, cond: Tensor | None, *, student, critic, rng: torch.Generator, index: int
    ) -> Loss:
        """SANA's hinge discriminator loss on real ``x0`` against a fresh no-grad ``x_hat_0``
        (``+ trunk_dsm_weight`` x the trunk's DSM on that ``x_hat_0``, module docstring)."""
        fake = self.fake(x0, cond, student, rng, grad=False)
        logit_fake = self.logit(fake, cond, critic, rng)
        logit_real = self.logit(x0, cond, critic, rng)
        loss = hinge_critic_loss(logit_real, logit_fake)
        if not self.trunk_dsm_weight:
            return loss
        dsm = denoising_loss(critic, fake, cond, rng)
        logs = loss.logs | {"trunk_dsm": dsm.value.item()}
        return Loss(loss.value + self.trunk_dsm_weight * dsm.value, logs)


def hinge_critic_loss(logit_real: Tensor, logit_fake: Tensor) -> Loss:
    """``1/2 (mean relu(1 - logit_real) + mean relu(1 + logit_fake))`` (SANA's D loss)."""
    real, fake = F.relu(1 - logit_real).mean(), F.relu(1 + logit_fake).mean()
    value = 0.5 * (real + fake)
    acc = 0.5 * ((logit_fake < 0).float().mean() + (logit_real > 0).float().mean())
    logs = {"d_loss_real": real.item(), "d_loss_fake": fake.item(), "d_accuracy": acc.item()}
    return Loss(value, logs | {"logit_real": logit_real.mean().item()})
