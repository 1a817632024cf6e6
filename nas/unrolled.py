"""The second-order DARTS hypergradient (Liu et al. 2019, eq. 7-8).

The gradient at the virtual step w' = w - ξ (μ·m + ∇_w L_train(w, α) + λ·w), i.e. the next SGD
step of the w optimiser (ξ its current learning rate, m its momentum buffer), is

    ∇_α L_val(w', α) - ξ · [∇_α L_train(w⁺, α) - ∇_α L_train(w⁻, α)] / (2r),
    w± = w ± r ∇_w' L_val(w', α),   r = eps / ||∇_w' L_val(w', α)||.

The virtual step is taken in place on the one model and undone afterwards: no copy of the
network is built per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.mix import Mix


def unrolled_alpha_grad(model: nn.Module, arch_params: list[torch.Tensor], mix: Callable[[], Mix | torch.Tensor],
                        batch_w: tuple[torch.Tensor, torch.Tensor], batch_a: tuple[torch.Tensor, torch.Tensor],
                        w_opt: torch.optim.SGD, eps: float = 0.01
                        ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Second-order DARTS hypergradient of ``arch_params``; returns (grads, L_val(w'), logits on
    the α batch).  ``mix()`` builds the mixing weights from the current architecture parameters.
    Model parameters are restored exactly on return."""
    params = [p for p in model.parameters() if p.requires_grad]
    group = w_opt.param_groups[0]
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    xw, yw = batch_w
    xa, ya = batch_a
    backup = [p.detach().clone() for p in params]
    # virtual step w' = w - lr * (mu * m + g + wd * w)
    loss_t = F.cross_entropy(model(xw, mix().detach()), yw)
    grads = torch.autograd.grad(loss_t, params)
    try:
        with torch.no_grad():
            for p, g in zip(params, grads):
                d = g + wd * p
                buf = w_opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None and mu:
                    d = d + mu * buf
                p.sub_(lr * d)
        logits = model(xa, mix())
        loss_v = F.cross_entropy(logits, ya)
        n_a = len(arch_params)
        all_grads = torch.autograd.grad(loss_v, [*arch_params, *params], allow_unused=True)
        g_arch = [g if g is not None else torch.zeros_like(a) for g, a in zip(all_grads[:n_a], arch_params)]
        g_w = [g if g is not None else torch.zeros_like(p) for g, p in zip(all_grads[n_a:], params)]
        norm = torch.sqrt(sum((g * g).sum() for g in g_w))
        r = eps / (norm + 1e-12)
        hv = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, g in zip(params, backup, g_w):
                    p.copy_(b + sign * r * g)
            loss = F.cross_entropy(model(xw, mix()), yw)
            gs = torch.autograd.grad(loss, arch_params, allow_unused=True)
            hv.append([g if g is not None else torch.zeros_like(a) for g, a in zip(gs, arch_params)])
        out = [ga - lr * (hp - hn) / (2 * r) for ga, hp, hn in zip(g_arch, hv[0], hv[1])]
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
    return out, loss_v.detach(), logits.detach()
