"""KD-AIF: influence-function sample weights for distillation.

Wu, Luo, Liu, Deng, "KD with Adaptive Influence Weight", *Statistics* 59(2), 2025,
arXiv 2501.02705, method [S idea / R exact forms], with influence functions after Koh & Liang
(ICML 2017, §2.1, I_up,loss)::

    I_i = − ∇θ L_val(θ)ᵀ · H_θ⁻¹ · ∇θ ℓ_i(θ)      (> 0: upweighting i raises the val loss)
    w_i = σ(−I_i / s)                             (s: a scale, e.g. std of I over the batch)
    L   = Σ_i w_i · [α·CE(y_i, p_s,i) + (1−α)·T²·KL(p_t,i ‖ p_s,i)] / Σ_i w_i

``H⁻¹v`` is an explicit solve, conjugate gradients on a Hessian-vector product, or the identity
(a TracIn-like gradient dot product). Refreshing the weights every k steps is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["conjugate_gradient", "influence_scores", "influence_weights", "per_sample_grads"]


def conjugate_gradient(
    hvp: Callable[[Tensor], Tensor], b: Tensor, *, iters: int = 100, tol: float = 1e-10
) -> Tensor:
    """Solve ``H x = b`` for symmetric positive-definite ``H`` given as ``hvp(v) = H v``; ``b (P,)``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(iters):
        if rs.sqrt() <= tol:
            break
        hp = hvp(p)
        step = rs / (p @ hp)
        x = x + step * p
        r = r - step * hp
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def influence_scores(
    train_grads: Tensor,
    val_grad: Tensor,
    hessian: Tensor | Callable[[Tensor], Tensor] | None = None,
    *,
    damping: float = 0.0,
    cg_iters: int = 100,
) -> Tensor:
    """Influence ``I_i = − g_valᵀ (H + λI)⁻¹ g_i`` of each training sample (Koh & Liang 2017, §2.1).

    ``H`` is symmetric, so one solve ``(H + λI)⁻¹ g_val`` serves every sample.

    Args:
        train_grads: ``(N, P)`` per-sample loss gradients ``∇θ ℓ_i`` (see :func:`per_sample_grads`).
        val_grad: ``(P,)`` gradient of the validation loss.
        hessian: ``None`` (identity: TracIn-like ``−g_val·g_i``), a ``(P, P)`` matrix, or a
            Hessian-vector product ``v ↦ H v`` (solved by conjugate gradients).
        damping: ``λ ≥ 0`` added to the Hessian's diagonal [R].
        cg_iters: iterations for the HVP solve.

    Returns:
        ``(N,)``.
    """
    g_val = val_grad.detach()
    if hessian is None:
        v = g_val
    elif isinstance(hessian, Tensor):
        eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
        v = torch.linalg.solve(hessian.detach() + damping * eye, g_val)
    else:
        h = hessian
        v = conjugate_gradient(lambda x: h(x) + damping * x, g_val, iters=cg_iters)
    return -(train_grads.detach() @ v)


def influence_weights(
    train_grads: Tensor,
    val_grad: Tensor,
    hessian: Tensor | Callable[[Tensor], Tensor] | None = None,
    *,
    damping: float = 0.0,
    scale: float | None = None,
    renormalize: bool = True,
) -> Tensor:
    """KD-AIF sample weights ``w_i = σ(−I_i / s)`` (Wu et al. 2025) [R], shape ``(N,)``.

    Harmful samples (``I_i > 0``) get ``w_i < 1/2``. Constants: no gradient flows through them.

    Args:
        train_grads, val_grad, hessian, damping: as :func:`influence_scores`.
        scale: ``s`` [R]; ``None`` uses the standard deviation of ``I`` over the ``N`` samples.
        renormalize: [R] rescale to mean 1, so the weighted loss keeps the unweighted scale
            (pass the weights to ``kd_loss(..., weights=w)``).
    """
    scores = influence_scores(train_grads, val_grad, hessian, damping=damping)
    s = scores.std() if scale is None else scores.new_tensor(scale)
    w = torch.sigmoid(-scores / s.clamp_min(torch.finfo(scores.dtype).tiny))
    return w / w.mean() if renormalize else w


def per_sample_grads(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
) -> Tensor:
    """Flattened per-sample gradients ``(N, P)`` of ``loss_fn(model(x_i), y_i)`` (``torch.func``).

    ``loss_fn`` maps a batch of one (outputs ``(1, …)``, targets ``(1, …)``) to a scalar. Only
    parameters with ``requires_grad`` are differentiated (e.g. the last layer for the cheap
    last-layer influence), in ``model.named_parameters()`` order.
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, frozen, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)
