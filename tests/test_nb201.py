import pytest
import torch

from nas.benchmarks import load_table
from nas.loops import count_params
from nas.spaces import get_space, nb201
from nas.stages import info_stage
from nas.utils import NasError

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def test_best_architecture_has_the_benchmark_parameter_count():
    net = nb201.build_network(nb201.parse_genotype(BEST), channels=16, cells=5, num_classes=10)
    assert count_params(net) == 1_073_466


def test_parameter_counts_follow_the_ops():
    # all-none and all-skip/pool cells carry no cell parameters: only stem, ResNet blocks and head remain
    macro_only = count_params(nb201.build_network(("none",) * 6))
    assert count_params(nb201.build_network(("skip_connect",) * 6)) == macro_only
    assert count_params(nb201.build_network(("avg_pool_3x3",) * 6)) == macro_only
    # one 3x3 conv edge: 15 cells over 3 stages at C, 2C, 4C: conv C*C*9 + BN 2C
    one_conv = ("nor_conv_3x3",) + ("none",) * 5
    extra = sum(5 * (c * c * 9 + 2 * c) for c in (16, 32, 64))
    assert count_params(nb201.build_network(one_conv)) == macro_only + extra


def test_info_reports_params_and_flops():
    info = info_stage("nb201", BEST)
    assert info["params"] == 1_073_466
    # macs grow with resolution by the pixel ratio (the head is negligible)
    small = info_stage("nb201", BEST, resolution=16)
    assert 3.9 < info["macs"] / small["macs"] < 4.01
    assert info["flops"] == 2 * info["macs"]
    # torch's FLOP counter agrees with a count by hand, layer by layer (conv: out pixels x
    # in-channels/groups x kernel; linear: in x out)
    net = nb201.build_network(nb201.parse_genotype(BEST), channels=16, cells=5, num_classes=10).eval()
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            total[0] += out[0].numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total[0] += mod.in_features * mod.out_features

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    assert info["macs"] == total[0]


def test_every_table_genotype_round_trips():
    table = load_table()
    assert len(table.rows) == 15625
    for arch in table.rows:
        assert nb201.format_genotype(nb201.parse_genotype(arch)) == arch


def test_the_fast_canonical_form_agrees_with_parsing_on_every_cell_and_refuses_alike():
    import itertools

    for geno in itertools.product(nb201.OPS, repeat=len(nb201.EDGES)):
        text = nb201.format_genotype(geno)
        assert nb201.canonical_genotype(f" {text}\n") == text
    for text, token in BAD:
        with pytest.raises(NasError, match=token):
            nb201.canonical_genotype(text)
    with pytest.raises(NasError, match="expected a string"):
        nb201.canonical_genotype(None)


BAD = [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "expected 3 '\\+'-separated"),
    ("|conv_7x7~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "'conv_7x7'"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "'nor_conv_3x3~1'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "needs 2 edges"),
    ("|nor_conv_3x3-0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "'nor_conv_3x3-0'"),
    ("nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "must start and end"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~1|", "'nor_conv_1x1~1'"),
]


@pytest.mark.parametrize("text,token", BAD)
def test_bad_genotypes_are_rejected_naming_the_token(text, token):
    with pytest.raises(NasError, match=token):
        nb201.parse_genotype(text)


def test_discrete_network_forward_and_all_none_cell():
    net = nb201.build_network(("none",) * 6, channels=4, cells=1, num_classes=3, in_channels=1)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_magnitude_selection_includes_none():
    space = get_space("nb201")
    w = torch.full((6, 5), 0.1)
    w[:, 0] = 0.6  # none strongest everywhere
    w[2, 3] = 0.9
    geno = space.select_magnitude(w)
    assert geno[0] == "none" and geno[2] == "nor_conv_3x3"


def test_unknown_space_is_named():
    with pytest.raises(NasError, match="'nb999'"):
        get_space("nb999")
