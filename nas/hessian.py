"""Sharpness: eigenvalues of the Hessian of the validation loss with respect to α.

Hessian-vector products come from double backpropagation through L_val at the current w and α
(no finite differences).  The dominant eigenvalue comes from power iteration; the top-k spectrum
from Lanczos (ARPACK via scipy) on the same products; a dense Hessian is available for small α
to check both.  The loss is evaluated on a fixed, seeded set of α-split batches without
augmentation, so values are comparable across epochs and runs, through the method's
deterministic mixing weights (the softmax, or the Dirichlet mean).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nas.rng import rng_stream
from nas.utils import generator_for


def hvp(loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v for H = ∇²_α loss_fn(α), by double backprop."""
    a = alpha.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(a), [a], create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), [a])
    return hv.detach()


def dense_hessian(loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
    """The full Hessian, one Hessian-vector product per coordinate (small α only)."""
    n = alpha.numel()
    rows = []
    for i in range(n):
        e = torch.zeros(n, dtype=alpha.dtype, device=alpha.device)
        e[i] = 1.0
        rows.append(hvp(loss_fn, alpha, e.view_as(alpha)).flatten())
    h = torch.stack(rows)
    return 0.5 * (h + h.T)


@dataclass
class Eigen:
    value: float  # dominant eigenvalue (largest magnitude)
    iterations: int
    seconds: float
    top: list[float] | None = None  # top-k algebraic eigenvalues, descending, when asked for


def power_iteration(loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor, iters: int = 50,
                    tol: float = 1e-5, seed: int = 0, shift: float = 0.0) -> Eigen:
    """Largest-magnitude eigenvalue of ∇²_α loss - shift·I by power iteration (plus ``shift``)."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(alpha.shape, generator=g, dtype=alpha.dtype).to(alpha.device)
    v = v / v.norm()
    value = 0.0
    it = 0
    for it in range(1, iters + 1):
        hv = hvp(loss_fn, alpha, v) - shift * v
        new = float((hv * v).sum())
        norm = hv.norm()
        if norm == 0:
            value = 0.0
            break
        v = hv / norm
        if it > 1 and abs(new - value) <= tol * max(abs(new), 1e-12):
            value = new
            break
        value = new
    return Eigen(value + shift, it, time.perf_counter() - t0)


def top_eigenvalue(loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor, method: str = "lanczos",
                   k: int = 1, iters: int = 50, tol: float = 1e-5, seed: int = 0) -> Eigen:
    """The largest (algebraic) eigenvalue of ∇²_α L_val, the sharpness measure of RobustDARTS.

    ``power``: power iteration, shifted by the first result when that is negative so that it
    converges to the top of the spectrum.  ``lanczos``: ARPACK, also giving the top-k spectrum.
    """
    if method == "lanczos":
        return lanczos_top(loss_fn, alpha, k=k, tol=tol, seed=seed)
    first = power_iteration(loss_fn, alpha, iters, tol, seed)
    if first.value >= 0:
        return first
    second = power_iteration(loss_fn, alpha, iters, tol, seed, shift=first.value)
    return Eigen(second.value, first.iterations + second.iterations, first.seconds + second.seconds)


def lanczos_top(loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: torch.Tensor, k: int = 1,
                tol: float = 1e-6, seed: int = 0) -> Eigen:
    """Top-k algebraic eigenvalues by Lanczos (scipy's ARPACK) on Hessian-vector products."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    t0 = time.perf_counter()
    n = alpha.numel()
    calls = 0

    def mv(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=alpha.dtype, device=alpha.device).view_as(alpha)
        return hvp(loss_fn, alpha, v).flatten().cpu().double().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    k = min(k, n - 1)
    # a short Lanczos basis: the top eigenvalue converges in ~10 products instead of ARPACK's default 20+
    ncv = min(n, max(2 * k + 2, 8))
    vals = eigsh(op, k=k, which="LA", v0=v0, tol=tol, ncv=ncv, return_eigenvectors=False)
    vals = sorted((float(x) for x in vals), reverse=True)
    return Eigen(vals[0], calls, time.perf_counter() - t0, vals)


def fixed_batches(stream, n_batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_batches`` batches of a seeded, unaugmented pass over ``stream``'s images."""
    aug = stream.augment
    stream.augment = False
    try:
        out = []
        gen = generator_for(seed, rng_stream("hessian-batches"), device=stream.device)
        for b, batch in enumerate(stream.epoch(gen)):
            if b >= n_batches:
                break
            out.append(batch)
    finally:
        stream.augment = aug
    return out


def val_loss_fn(model: torch.nn.Module, batches, to_mix: Callable[[torch.Tensor], object]):
    """L_val(α) averaged over fixed batches, at the model's current w."""
    import torch.nn.functional as F

    def loss(alpha: torch.Tensor) -> torch.Tensor:
        mix = to_mix(alpha)
        total = 0.0
        for x, y in batches:
            total = total + F.cross_entropy(model(x, mix), y)
        return total / len(batches)

    return loss


def sharpness(model: torch.nn.Module, batches, to_mix: Callable[[torch.Tensor], object], alpha: torch.Tensor,
              method: str = "lanczos", k: int = 1, seed: int = 0, tol: float = 1e-3) -> Eigen:
    """Top eigenvalue of ∇²_α L_val at the model's current w; BN running statistics are left as
    they were, so computing it does not change the search."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        return top_eigenvalue(val_loss_fn(model, batches, to_mix), alpha.detach(), method, k=k, tol=tol, seed=seed)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        model.train(was_training)


def early_stop_epoch(eigs: dict[int, float], epoch: int, window: int = 5, lookback: int = 5,
                     factor: float = 1.3, start: int = 10) -> int | None:
    """RobustDARTS's DARTS-ES rule.  ``eigs`` maps epoch (1-based) to the top eigenvalue.  At
    ``epoch``, compare the mean over the last ``window`` epochs with the mean over the window
    ending ``lookback`` epochs earlier; if it grew by more than ``factor``, return the epoch to
    roll back to (``epoch - lookback``), else None."""
    first = epoch - lookback - window + 1
    if epoch < start or first < 1:
        return None
    try:
        now = sum(eigs[t] for t in range(epoch - window + 1, epoch + 1)) / window
        before = sum(eigs[t] for t in range(first, epoch - lookback + 1)) / window
    except KeyError:
        return None
    if before > 0 and now / before > factor:
        return epoch - lookback
    return None
