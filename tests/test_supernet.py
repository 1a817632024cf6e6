import torch

from nas.spaces import NB201, CellSlot, nb201
from nas.supernet import FusedCell, MixedCell, Supernet
from nas.supernet.fused import copy_to_reference


def _pair(c=6, seed=0):
    torch.manual_seed(seed)
    fused = FusedCell(c, nb201.OPS, nb201.EDGES).double()
    ref = MixedCell(NB201, CellSlot(0, (c,), c)).double()
    copy_to_reference(fused, ref)
    return fused, ref


def test_fused_cell_computes_the_plain_weighted_sum():
    fused, ref = _pair()
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(3, 6, 7, 7, dtype=torch.double, generator=g, requires_grad=True)
        w = torch.randn(6, 5, dtype=torch.double, generator=g).softmax(-1).requires_grad_()
        a, b = fused(x, w), ref(x, w)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        ga = torch.autograd.grad((a.sin()).sum(), [x, w, *fused.parameters()])
        gb = torch.autograd.grad((b.sin()).sum(), [x, w])
        torch.testing.assert_close(ga[0], gb[0], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(ga[1], gb[1], rtol=1e-9, atol=1e-10)


def test_fused_conv_weight_gradients_match_per_edge_gradients():
    fused, ref = _pair(c=4, seed=1)
    x = torch.randn(2, 4, 5, 5, dtype=torch.double)
    w = torch.rand(6, 5, dtype=torch.double)  # unnormalised weights work as well
    ga = torch.autograd.grad(fused(x, w).square().sum(), [c.weight for c in fused.convs["nor_conv_3x3"]])
    ref_convs = [ref.edges[nb201.EDGE_INDEX[(i, j)]].candidates[3][1].weight for j in range(3) for i in range(j + 1, 4)]
    gb = torch.autograd.grad(ref(x, w).square().sum(), ref_convs)
    torch.testing.assert_close(torch.cat(ga), torch.cat(gb), rtol=1e-9, atol=1e-10)


def test_fused_and_reference_supernets_have_equal_parameter_counts():
    a = Supernet(NB201, 8, 2, 10, 3)
    b = Supernet(NB201, 8, 2, 10, 3, reference=True)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_none_weight_has_zero_gradient_and_skip_weight_does_not():
    fused, _ = _pair()
    x = torch.randn(2, 6, 5, 5, dtype=torch.double)
    w = torch.rand(6, 5, dtype=torch.double, requires_grad=True)
    (g,) = torch.autograd.grad(fused(x, w).square().sum(), [w])
    assert torch.all(g[:, 0] == 0)
    assert torch.all(g[:, 1] != 0)


def test_search_cells_have_no_affine_bn_or_running_stats():
    net = Supernet(NB201, 4, 1, 10, 3)
    for cell in (m for m in net.modules() if isinstance(m, FusedCell)):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cell.modules())
    ref = Supernet(NB201, 4, 1, 10, 3, reference=True)
    for cell in (m for m in ref.modules() if isinstance(m, MixedCell)):
        bns = [m for m in cell.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(not b.affine and b.running_mean is None for b in bns)
