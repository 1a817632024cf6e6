"""The second-order DARTS hypergradient against exact autograd and finite differences."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas.spaces import NB201
from nas.supernet import Supernet
from nas.unrolled import unrolled_alpha_grad


def _problem(seed=0):
    torch.manual_seed(seed)
    model = Supernet(NB201, channels=2, cells=1, num_classes=3, in_channels=1).double()
    alpha = torch.nn.Parameter(0.3 * torch.randn(6, 5, dtype=torch.double))
    xw, xa = torch.randn(6, 1, 4, 4, dtype=torch.double), torch.randn(6, 1, 4, 4, dtype=torch.double)
    yw, ya = torch.randint(0, 3, (6,)), torch.randint(0, 3, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    # one real step so that the momentum buffer is non-zero, as in the middle of a search
    F.cross_entropy(model(xw, alpha.softmax(-1).detach()), yw).backward()
    opt.step()
    opt.zero_grad()
    return model, alpha, opt, (xw, yw), (xa, ya)


def _unrolled_objective(model, alpha, opt, bw, ba, create_graph):
    """L_val(w'(α), α) with w' = w - lr (μ m + ∇_w L_train(w, α) + λ w), exactly."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    g = opt.param_groups[0]
    loss_t = F.cross_entropy(model(bw[0], alpha.softmax(-1)), bw[1])
    grads = torch.autograd.grad(loss_t, params, create_graph=create_graph)
    new = {}
    for n, p, gr in zip(names, params, grads):
        buf = opt.state[p]["momentum_buffer"]
        new[n] = p - g["lr"] * (g["momentum"] * buf + gr + g["weight_decay"] * p)
    logits = functional_call(model, new, (ba[0], alpha.softmax(-1)))
    return F.cross_entropy(logits, ba[1])


def test_unrolled_gradient_matches_exact_second_order_autograd():
    model, alpha, opt, bw, ba = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    (approx,), loss_v, _ = unrolled_alpha_grad(model, [alpha], lambda: alpha.softmax(-1), bw, ba, opt, eps=1e-4)
    # parameters are restored exactly
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    exact = torch.autograd.grad(_unrolled_objective(model, alpha, opt, bw, ba, True), [alpha])[0]
    torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-9)
    # and the second-order term matters: first order alone is measurably different
    first = torch.autograd.grad(F.cross_entropy(model(ba[0], alpha.softmax(-1)), ba[1]), [alpha])[0]
    assert (first - exact).norm() > 1e-3 * exact.norm()


def test_unrolled_gradient_matches_finite_differences_in_alpha():
    model, alpha, opt, bw, ba = _problem(seed=1)
    (approx,), _, _ = unrolled_alpha_grad(model, [alpha], lambda: alpha.softmax(-1), bw, ba, opt, eps=1e-4)
    h = 1e-5
    fd = torch.zeros_like(alpha)
    for idx in range(alpha.numel()):
        vals = []
        for sign in (1, -1):
            a = alpha.detach().clone()
            a.view(-1)[idx] += sign * h
            a.requires_grad_(True)
            vals.append(float(_unrolled_objective(model, a, opt, bw, ba, False).detach()))
        fd.view(-1)[idx] = (vals[0] - vals[1]) / (2 * h)
    torch.testing.assert_close(approx, fd, rtol=1e-4, atol=1e-7)
