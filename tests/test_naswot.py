"""NASWOT, the training-free baseline: its score against a hand computation, ReLUs the loss does
not reach left out, and the method end to end through the one search entry point."""

import json

import pytest
import torch
from torch import nn

from nas.baselines import naswot_score
from nas.config import build_config
from nas.search import search
from nas.spaces import get_space
from nas.stages import select_stage
from nas.utils import NasError


def _codes_kernel(*codes: torch.Tensor) -> torch.Tensor:
    k = 0
    for c in codes:
        c = c.double()
        k = k + c @ c.T + (1 - c) @ (1 - c).T
    return k


def test_the_score_is_the_log_determinant_of_the_agreement_kernel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3))
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    h1 = net[1](net[0](x))
    h2 = net[3](torch.relu(h1))
    want = torch.linalg.slogdet(_codes_kernel(h1 > 0, h2 > 0)).logabsdet
    assert naswot_score(net, x, y) == pytest.approx(float(want), rel=1e-12)
    # K_H[i, i] is the number of ReLU units, N_A
    assert _codes_kernel(h1 > 0, h2 > 0).diagonal().tolist() == [16.0] * 5


class Branches(nn.Module):
    """Two ReLU branches; the second is computed but its output is dropped (a `none` edge)."""

    def __init__(self, use_second: bool):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 5), nn.Linear(6, 2)
        self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()
        self.use_second = use_second

    def forward(self, x):
        ha, hb = self.relu_a(self.a(x)), self.relu_b(self.b(x))
        return self.head(ha) + (hb.sum(1, keepdim=True) if self.use_second else 0)


def test_relus_that_the_loss_does_not_reach_are_left_out():
    torch.manual_seed(1)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    net = Branches(use_second=False)
    only_a = torch.linalg.slogdet(_codes_kernel(net.a(x) > 0)).logabsdet
    assert naswot_score(net, x, y) == pytest.approx(float(only_a), rel=1e-12)
    net.use_second = True
    both = torch.linalg.slogdet(_codes_kernel(net.a(x) > 0, net.b(x) > 0)).logabsdet
    assert naswot_score(net, x, y) == pytest.approx(float(both), rel=1e-12)


def test_naswot_search_keeps_the_best_score_and_is_deterministic(tiny_search, tmp_path):
    kw = tiny_search(method="naswot", naswot_samples=6, naswot_batch=32, channels=8, cells=1)
    a = search(build_config("search", overrides={**kw, "out": str(tmp_path / "a")}))
    b = search(build_config("search", overrides={**kw, "out": str(tmp_path / "b")}))
    assert a["history"] == b["history"]
    assert a["selection"] == "naswot" and a["alpha"] is None and len(a["history"]) == 6
    best = max(a["history"], key=lambda c: c["score"])
    assert a["genotype"] == best["genotype"]
    assert len({c["genotype"] for c in a["history"]}) > 1 and len({c["score"] for c in a["history"]}) > 1
    get_space("nb201").parse_genotype(a["genotype"])
    # the result is read back (schema-checked) and refused by magnitude selection with one line
    assert json.loads((tmp_path / "a" / "result.json").read_text())["genotype"] == a["genotype"]
    with pytest.raises(NasError, match="selected by naswot, not by magnitude"):
        select_stage(build_config("select", overrides={"method": "magnitude", "run": str(tmp_path / "a")}))


def test_naswot_works_on_the_darts_space(tiny_search, tmp_path):
    res = search(build_config("search", overrides=tiny_search(space="darts", method="naswot", naswot_samples=2,
                                                              naswot_batch=8, channels=4, cells=2)))
    sp = get_space("darts")
    edges = sp.genotype_edges(sp.parse_genotype(res["genotype"]))
    assert len(edges) == 16 and all(op in sp.edge_ops[e] for e, op in edges)
    # the kept cell is the best scored of the two samples, each scored once
    assert len(res["history"]) == 2 and res["genotype"] == max(res["history"], key=lambda c: c["score"])["genotype"]
