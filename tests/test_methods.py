"""Properties of the method seams: Gumbel, Dirichlet, perturbations, partial channels, hard paths."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nas.config import build_config
from nas.methods import Dirichlet, GumbelHard, GumbelSoftmax, build_method
from nas.methods.perturb import AdversarialPerturbation, RandomSmoothing, project_capped_simplex
from nas.mix import Mix
from nas.spaces import NB201, CellSlot, nb201
from nas.supernet import FusedCell, MixedCell, Supernet
from nas.supernet.fused import copy_to_reference
from nas.utils import NasError


def _alpha(seed=0):
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- Gumbel

def test_hard_gumbel_samples_are_one_hot_with_softmax_frequencies():
    alpha = _alpha()
    mixing = GumbelHard(tau_max=10.0, tau_min=0.1)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(6, 5)
    n = 20000
    for _ in range(n // 100):
        # 100 draws at once through the same code path
        a = alpha.repeat(100, 1)
        m = mixing.sample(a, None, 3, 10, gen)
        assert torch.equal(m.weights.detach().sum(-1), torch.ones(600))
        assert set(m.weights.detach().unique().tolist()) <= {0.0, 1.0}
        counts += F.one_hot(m.index, 5).float().view(100, 6, 5).sum(0)
    freq = counts / n
    assert (freq - alpha.softmax(-1)).abs().max() < 0.015


def test_straight_through_gradients_reach_every_alpha():
    torch.manual_seed(0)
    net = Supernet(NB201, 4, 1, 3, 1)
    alpha = torch.zeros(6, 5, requires_grad=True)
    m = GumbelHard().sample(alpha, None, 0, 10, torch.Generator().manual_seed(0))
    loss = F.cross_entropy(net(torch.randn(4, 1, 6, 6), m), torch.tensor([0, 1, 2, 0]))
    (g,) = torch.autograd.grad(loss, [alpha])
    assert torch.isfinite(g).all() and (g != 0).all()


def test_temperature_schedules():
    gdas, snas = GumbelHard(), GumbelSoftmax()
    assert gdas.tau(0, 50) == 10.0 and abs(gdas.tau(49, 50) - 0.1) < 1e-12
    assert snas.tau(0, 50) == 10.0 and abs(snas.tau(49, 50) - 1.0) < 1e-12
    w = snas.sample(_alpha(), None, 0, 50, torch.Generator().manual_seed(0)).weights
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    assert (w > 0).all()  # relaxed, not one-hot


def _flops(cell, x, mix):
    with FlopCounterMode(display=False) as fc:
        cell(x, mix)
    return fc.get_total_flops()


def test_gdas_computes_one_op_per_edge():
    torch.manual_seed(0)
    c, hw = 8, 6
    cell = FusedCell(c, nb201.OPS, nb201.EDGES)
    x = torch.randn(2, c, hw, hw)
    conv3 = 2 * 2 * c * c * 9 * hw * hw  # flops of one 3x3 conv edge (2 per MAC)
    conv1 = conv3 // 9
    for op, per_edge in (("skip_connect", 0), ("nor_conv_3x3", conv3), ("nor_conv_1x1", conv1)):
        index = torch.full((6,), ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"].index(op))
        mix = Mix(F.one_hot(index, 5).float(), index=index)
        assert _flops(cell, x, mix) == 6 * per_edge
    soft = Mix(torch.full((6, 5), 0.2))
    assert _flops(cell, x, soft) == 6 * (conv3 + conv1)


def test_hard_path_equals_the_weighted_sum_with_one_hot_weights():
    torch.manual_seed(0)
    fused, ref = FusedCell(6, nb201.OPS, nb201.EDGES).double(), MixedCell(NB201, CellSlot(0, (6,), 6)).double()
    copy_to_reference(fused, ref)
    x = torch.randn(2, 6, 5, 5, dtype=torch.double, requires_grad=True)
    index = torch.tensor([3, 0, 2, 1, 4, 3])
    w = F.one_hot(index, 5).double()
    a = fused(x, Mix(w, index=index))
    b = ref(x, w)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0])


# ---------------------------------------------------------------- partial channels

@pytest.mark.parametrize("k", [2, 4])
def test_partial_channel_cell_matches_the_per_edge_reference(k):
    torch.manual_seed(k)
    fused = FusedCell(8, nb201.OPS, nb201.EDGES, k).double()
    ref = MixedCell(NB201, CellSlot(0, (8,), 8), k).double()
    copy_to_reference(fused, ref)
    x = torch.randn(2, 8, 5, 5, dtype=torch.double, requires_grad=True)
    w = torch.rand(6, 5, dtype=torch.double).softmax(-1).requires_grad_()
    scale = torch.rand(6, dtype=torch.double, requires_grad=True)
    a, b = fused(x, Mix(w, edge_scale=scale)), ref(x, Mix(w, edge_scale=scale))
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sin().sum(), [x, w, scale])
    gb = torch.autograd.grad(b.sin().sum(), [x, w, scale])
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q)


def _activation_bytes(net, x, mix):
    from nas.loops import saved_tensor_bytes

    return saved_tensor_bytes(lambda: F.cross_entropy(net(x, mix), torch.zeros(len(x), dtype=torch.long)).backward())


def test_partial_channels_use_less_activation_memory():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    w = Mix(torch.full((6, 5), 0.2))
    full = _activation_bytes(Supernet(NB201, 16, 2, 10, 3), x, w)
    pc = _activation_bytes(Supernet(NB201, 16, 2, 10, 3, partial_channels=4), x, w)
    assert pc < 0.6 * full


def test_edge_normalisation_is_a_softmax_over_incoming_edges():
    from nas.arch import Architecture
    from nas.spaces import get_space

    arch = Architecture(get_space("nb201"), True, torch.Generator().manual_seed(0))
    with torch.no_grad():
        arch.beta.copy_(torch.arange(6.0))
    s = arch.edge_scale()
    assert s[0] == 1.0  # node 1 has one input
    torch.testing.assert_close(s[1:3].sum(), torch.tensor(1.0))
    torch.testing.assert_close(s[3:6].sum(), torch.tensor(1.0))
    assert s[2] > s[1]


# ---------------------------------------------------------------- Dirichlet

def test_dirichlet_samples_lie_on_the_simplex():
    m = Dirichlet()
    w = m.sample(_alpha(), None, 0, 1, None).weights
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    beta = m.concentration(_alpha())
    torch.testing.assert_close(m.expected(_alpha()), beta / beta.sum(-1, keepdim=True))


def test_dirichlet_pathwise_gradient_matches_the_analytic_gradient():
    # f(x) = sum_i c_i x_i^2 has E[f] = sum_i c_i b_i (b_i + 1) / (b0 (b0 + 1)) under Dir(b)
    torch.manual_seed(0)
    beta = torch.tensor([0.7, 1.5, 2.0, 3.0], dtype=torch.double, requires_grad=True)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.double)
    b0 = beta.sum()
    exact = torch.autograd.grad((c * beta * (beta + 1)).sum() / (b0 * (b0 + 1)), beta)[0]
    x = torch.distributions.Dirichlet(beta).rsample((400_000,))
    mc = torch.autograd.grad((c * x.square()).sum(-1).mean(), beta)[0]
    torch.testing.assert_close(mc, exact, rtol=0.03, atol=2e-3)


def test_drnas_regularisers():
    alpha = _alpha().requires_grad_()
    l2 = Dirichlet("l2", 1e-3).penalty(alpha)
    torch.testing.assert_close(l2, 0.5e-3 * alpha.square().sum())
    kl = Dirichlet("kl", 1e-3).penalty(alpha)
    assert kl > 0
    at_anchor = Dirichlet("kl", 1e-3).penalty(torch.zeros(6, 5))  # ELU(0) + 1 = 1 = anchor
    assert abs(float(at_anchor)) < 1e-6


# ---------------------------------------------------------------- perturbations

def test_capped_simplex_projection_is_the_nearest_feasible_point():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(6, 5, generator=g).softmax(-1)
    eps = 0.1
    lo, hi = (w - eps).clamp(min=0), (w + eps).clamp(max=1)
    y = w + torch.randn(6, 5, generator=g) * 0.3
    p = project_capped_simplex(y, lo, hi)
    torch.testing.assert_close(p.sum(-1), torch.ones(6))
    assert (p >= lo - 1e-6).all() and (p <= hi + 1e-6).all()
    torch.testing.assert_close(project_capped_simplex(w, lo, hi), w)  # feasible points stay
    for _ in range(200):
        z = project_capped_simplex(w + torch.randn(6, 5, generator=g) * 0.2, lo, hi)
        assert ((y - p).norm(dim=-1) <= (y - z).norm(dim=-1) + 1e-5).all()


def _toy():
    torch.manual_seed(0)
    net = Supernet(NB201, 4, 1, 3, 1)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    w = Mix(_alpha().softmax(-1))
    return net, x, y, w


def test_pgd_raises_the_training_loss_inside_the_ball_and_on_the_simplex():
    net, x, y, w = _toy()
    def loss_fn(m):
        return F.cross_entropy(net(x, m), y)

    def value(m):
        with torch.no_grad():
            return float(loss_fn(m))

    adv = AdversarialPerturbation(epsilon=0.3, eps_start=0.03, steps=7)
    eps = adv.epsilon(9, 10)
    out = adv(w, loss_fn, 9, 10, torch.Generator().manual_seed(0)).weights
    assert value(Mix(out)) > value(w) + 1e-3
    assert (out - w.weights).abs().max() <= eps + 1e-6
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(6))
    # and it beats random noise of the same size
    rs = RandomSmoothing(sigma=0.3)(w, loss_fn, 9, 10, torch.Generator().manual_seed(0)).weights
    assert value(Mix(out)) > value(Mix(rs))


def test_random_smoothing_stays_in_the_ball_and_ramps():
    _, _, _, w = _toy()
    rs = RandomSmoothing(sigma=0.3, eps_start=0.03)
    assert rs.epsilon(0, 10) == pytest.approx(0.03) and rs.epsilon(10, 10) == pytest.approx(0.3)
    out = rs(w, None, 5, 10, torch.Generator().manual_seed(0)).weights
    assert (out - w.weights).abs().max() <= rs.epsilon(5, 10) + 1e-6
    torch.testing.assert_close(out.sum(-1), torch.ones(6))
    assert not torch.allclose(out, w.weights)


# ---------------------------------------------------------------- combinations

@pytest.mark.parametrize("sets,msg", [
    (["method=gdas", "perturb=adv"], "samples one-hot paths"),
    (["method=snas", "order=2"], "does not combine with order=2"),
    (["method=sdarts-adv", "order=2"], "does not combine with perturb='adv'"),
    (["method=rsps", "perturb=rs"], "trains no"),
    (["method=darts", "perturb=big"], "'perturb' must be one of auto, none, rs, adv, got 'big'"),
    (["method=darts", "progressive=true"], "progressive is the DrNAS schedule"),
    (["method=pc-darts", "channels=6"], "partial_channels 4 must divide channels 6"),
    (["method=dartz"], "method: unknown 'dartz'"),
])
def test_nonsense_combinations_are_refused(sets, msg):
    with pytest.raises(NasError, match=msg):
        build_method(build_config("search", sets=sets))


def test_sensible_combinations_build():
    m = build_method(build_config("search", sets=["method=drnas", "perturb=adv"]))
    assert (m.mixing.name, m.perturbation.name) == ("dirichlet", "adv")
    m = build_method(build_config("search", sets=["method=gdas", "partial_channels=4"]))
    assert (m.mixing.name, m.partial_channels, m.edge_norm) == ("gumbel-hard", 4, False)
    m = build_method(build_config("search", sets=["method=pc-darts"]))
    assert (m.partial_channels, m.edge_norm) == (4, True)
    m = build_method(build_config("search", sets=["method=sdarts-rs"]))
    assert m.perturbation.name == "rs"
