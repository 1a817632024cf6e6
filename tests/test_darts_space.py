"""The DARTS space, S1-S4, the evaluation network and PT's topology step."""

import json

import numpy as np
import pytest
import torch
from conftest import killed_then_resumed
from torch import nn

from nas.config import build_config
from nas.loops import count_params
from nas.mix import Mix
from nas.runs.files import torch_load
from nas.search import Search, search
from nas.select import pt_project
from nas.spaces import get_space
from nas.spaces.darts import CELL_EDGES, N_CELL_EDGES, parse_genotype
from nas.spaces.darts_ops import make_darts_op
from nas.stages import info_stage
from nas.train import retrain
from nas.utils import NasError

DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_the_published_darts_network_has_the_published_parameter_count():
    assert info_stage("darts", DARTS_V2, 36, 20, 10)["params"] == 3_349_342


@pytest.mark.parametrize("op,stride,expected", [
    ("sep_conv_3x3", 1, 2 * (9 * 16 + 16 * 16 + 2 * 16)),
    ("sep_conv_5x5", 1, 2 * (25 * 16 + 16 * 16 + 2 * 16)),
    ("dil_conv_3x3", 1, 9 * 16 + 16 * 16 + 2 * 16),
    ("dil_conv_5x5", 2, 25 * 16 + 16 * 16 + 2 * 16),
    ("skip_connect", 1, 0),
    ("skip_connect", 2, 2 * 16 * 8 + 2 * 16),  # factorized reduce
    ("max_pool_3x3", 1, 0),
    ("avg_pool_3x3", 2, 0),
    ("none", 2, 0),
])
def test_op_compositions_by_parameter_count(op, stride, expected):
    assert count_params(make_darts_op(op, 16, stride)) == expected


def test_op_structure_follows_the_paper():
    sep = make_darts_op("sep_conv_3x3", 8, 1)
    kinds = [type(m).__name__ for m in sep]
    assert kinds == ["ReLU", "Conv2d", "Conv2d", "BatchNorm2d"] * 2
    assert sep[1].groups == 8 and sep[1].kernel_size == (3, 3)
    dil = make_darts_op("dil_conv_5x5", 8, 1)
    assert dil[1].dilation == (2, 2) and dil[1].padding == (4, 4)
    pool = make_darts_op("max_pool_3x3", 8, 1, affine=False, search=True)
    assert isinstance(pool[1], nn.BatchNorm2d) and not pool[1].affine
    x = torch.randn(2, 8, 8, 8)
    for op in ("none", "skip_connect", "sep_conv_5x5", "dil_conv_3x3", "avg_pool_3x3", "noise"):
        assert make_darts_op(op, 8, 2)(x).shape == (2, 8, 4, 4)


def test_noise_ignores_its_input():
    noise = make_darts_op("noise", 4, 1)
    torch.manual_seed(0)
    a = noise(torch.zeros(2000, 4, 2, 2))
    torch.manual_seed(0)
    b = noise(torch.full((2000, 4, 2, 2), 7.0))
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05


def test_genotype_round_trips_in_both_forms():
    g = parse_genotype(DARTS_V2)
    space = get_space("darts")
    assert space.format_genotype(g) == DARTS_V2
    assert parse_genotype(json.dumps(g.to_json())) == g
    assert parse_genotype(DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)")) == g


@pytest.mark.parametrize("text,msg", [
    (DARTS_V2.replace("'dil_conv_3x3', 2", "'conv_9x9', 2"), "unknown op 'conv_9x9'"),
    (DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "input 5 must be in 0..4"),
    (DARTS_V2.replace("('sep_conv_3x3', 0), ", "", 1), "needs an even number"),
    ("Genome(normal=[])", "expected Genotype"),
    ('{"normal": [["sep_conv_3x3", 0]]}', "needs an even number"),
    ('{"normal": [], "reduce": []}', "needs an even number"),
    (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 6]"), r"normal_concat must list distinct nodes of 0\.\.5"),
    (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[3, 3]"), "normal_concat must list distinct"),
])
def test_bad_genotypes_are_named(text, msg):
    with pytest.raises(NasError, match=msg):
        parse_genotype(text)


def test_darts_selection_rule_on_a_hand_made_alpha():
    space = get_space("darts")
    w = torch.full(space.alpha_shape, 0.01)
    # node 2 (edges 0, 1): none dominates edge 0, but the rule ignores none
    w[0, 0] = 0.9
    w[0, 4] = 0.05  # sep_conv_3x3
    w[1, 6] = 0.5  # dil_conv_3x3
    # node 3 (edges 2, 3, 4): strongest non-none ops on edges 2 and 4
    w[2, 3] = 0.8
    w[3, 5] = 0.1
    w[4, 7] = 0.6
    geno = space.select_magnitude(w)
    assert geno.normal[:2] == (("sep_conv_3x3", 0), ("dil_conv_3x3", 1))
    assert geno.normal[2:4] == (("skip_connect", 0), ("dil_conv_5x5", 2))
    assert all(op != "none" for op, _ in geno.normal + geno.reduce)
    assert [j for _, j in geno.normal[4:6]] == sorted(j for _, j in geno.normal[4:6])


def test_s1_has_the_robustdarts_edge_ops():
    s1 = get_space("s1")
    assert s1.alpha_shape == (28, 2)
    assert s1.edge_ops[0] == ("skip_connect", "dil_conv_3x3")
    assert s1.edge_ops[5] == ("max_pool_3x3", "skip_connect")
    assert s1.edge_ops[13] == ("dil_conv_3x3", "dil_conv_5x5")
    assert s1.edge_ops[14] == ("max_pool_3x3", "avg_pool_3x3")
    assert s1.edge_ops[27] == ("skip_connect", "dil_conv_5x5")
    assert get_space("s4").edge_ops[3] == ("noise", "sep_conv_3x3")
    assert get_space("s3").alpha_shape == (28, 3)


def _tiny(tmp_path, **kw):
    base = dict(space="darts", dataset="digits", cache_dir=str(tmp_path / "cache"), epochs=1, channels=4, cells=3,
                eval_batch_size=32,
                batch_size=16, steps_per_epoch=2, out=str(tmp_path / "run"), device="cpu", progress=False)
    base.update(kw)
    return build_config("search", overrides=base)


@pytest.mark.parametrize("space", ["darts", "s1", "s2", "s3", "s4"])
def test_one_epoch_search_on_each_darts_space(tmp_path, space):
    res = search(_tiny(tmp_path, space=space))
    sp = get_space(space)
    geno = sp.parse_genotype(res["genotype"])
    for c, genes in enumerate((geno.normal, geno.reduce)):
        for n, (op, j) in enumerate(genes):
            e = c * N_CELL_EDGES + CELL_EDGES.index((2 + n // 2, j))
            assert op in sp.edge_ops[e]
    assert torch.tensor(res["alpha"]).shape == sp.alpha_shape
    assert res["genotype_json"]["normal_concat"] == [2, 3, 4, 5]


@pytest.mark.parametrize("method,extra", [("gdas", {}), ("pc-darts", {"channels": 8}), ("drnas", {}),
                                          ("sdarts-adv", {"adv_steps": 1, "epochs": 2}), ("rsps", {"rsps_candidates": 2}),
                                          ("random", {"random_samples": 1, "random_epochs": 1})])
def test_methods_work_on_the_darts_space(tmp_path, method, extra):
    res = search(_tiny(tmp_path, method=method, **extra))
    sp = get_space("darts")
    geno = sp.parse_genotype(res["genotype"])
    # a genotype of the space: two genes per node, each an op its edge offers (never none)
    edges = sp.genotype_edges(geno)
    assert len(edges) == 16 and all(op in sp.edge_ops[e] and op != "none" for e, op in edges)
    assert res["method"] == method and res["config"]["method"] == method
    if method in ("random", "rsps"):  # chosen by its own selection among sampled cells
        assert res["selection"] == method
    else:  # a supernet trained: α moved from its start and every epoch is recorded
        assert len(res["history"]) == res["config"]["epochs"] and torch.tensor(res["alpha"]).abs().sum() > 0


@pytest.mark.parametrize("space", ["darts", "s2"])
def test_progressive_drnas_prunes_and_widens_on_the_darts_space(tmp_path, space):
    kw = dict(space=space, method="drnas", progressive=True, channels=8, epochs=4, arch_warmup=1,
              progressive_k1=4, progressive_k2=2)
    if space == "darts":  # S2's edges have 2 ops: the auto keep is 2 there, 3 on the DARTS space
        kw["progressive_keep"] = 2
    res = search(_tiny(tmp_path, **kw))
    assert [r["stage"] for r in res["history"]] == [1, 1, 2, 2]
    assert [r["alpha_trained"] for r in res["history"]] == [False, True, False, True]
    mask = torch.tensor(res["mask"])
    assert mask.sum(-1).tolist() == [2] * 28
    w = torch.tensor(res["weights"])
    assert (w[~mask] == 0).all()
    # stage-2 mixed ops pass C/2 channels: a normal cell's sep_conv_3x3 depthwise conv has C/2 = 4 channels
    ck = torch_load(tmp_path / "run" / "checkpoint.pt")
    sep = get_space(space).edge_ops[0].index("sep_conv_3x3")
    dw = ck["model"][f"net.cells.0.edges.0.candidates.{sep}.1.weight"]
    assert dw.shape[0] == 8 // 2
    # an interruption in stage 2 resumes to the uninterrupted result
    resumed = killed_then_resumed(search, _tiny(tmp_path, **{**kw, "out": str(tmp_path / "again")}), at=3)
    assert resumed["alpha"] == res["alpha"] and resumed["weights"] == res["weights"]


class EdgeProbe(nn.Module):
    """Only sep_conv_3x3 on normal edge 3<-2 carries the signal (a fixed linear probe)."""

    def __init__(self, probe):
        super().__init__()
        self.probe = probe
        self.e = CELL_EDGES.index((3, 2))

    def forward(self, x, mix):
        mix = mix if isinstance(mix, Mix) else Mix(mix)
        return mix.weights[self.e, 4] * self.probe(x.flatten(1))


def test_pt_topology_keeps_the_edge_that_matters(tmp_path):
    cfg = _tiny(tmp_path)
    s = Search(cfg)
    bundle, w_stream, a_stream = s.streams()
    st = s.build_state(bundle)
    torch.manual_seed(0)
    probe = nn.Linear(64, 10)
    opt = torch.optim.Adam(probe.parameters(), 0.05)
    train = bundle.stream(w_stream.indices, 256, augment=False)
    for _ in range(30):
        for x, y in train.epoch(None, shuffle=False):
            opt.zero_grad()
            nn.functional.cross_entropy(probe(x.flatten(1)), y).backward()
            opt.step()
    st.model = EdgeProbe(probe)
    val = bundle.stream(a_stream.indices, 512, augment=False)
    decisions, _ = pt_project(s, st, val, w_stream, a_stream,
                              build_config("select", sets=["method=pt", "pt_tune_epochs=0"]))
    geno = s.space.select_magnitude(s.expected(st))
    assert ("sep_conv_3x3", 2) in geno.normal[2:4]  # node 3 kept its input from node 2, with sep_conv_3x3
    topo = [d for d in decisions if "kept" in d]
    assert len(topo) == 6  # nodes with more than 2 inputs: 3 per cell
    assert all(len(d["kept"]) == 2 for d in topo)
    for c in range(2):
        genes = (geno.normal, geno.reduce)[c]
        assert len(genes) == 8
    # PT never keeps the zero op on the DARTS space: its cells are valid genotypes
    assert all(d["chosen"] != "none" and "none" not in d["acc_without"] for d in decisions if "chosen" in d)
    assert all(op != "none" for op, _ in geno.normal + geno.reduce)


def test_retrain_darts_network_with_auxiliary_head_drop_path_and_cutout(tmp_path):
    cfg = build_config("retrain", overrides=dict(
        space="darts", genotype=DARTS_V2, dataset="digits", cache_dir=str(tmp_path / "cache"), resolution=32,
        channels=4, cells=3, epochs=1, subset=10, batch_size=32, device="cpu", out=str(tmp_path / "rt"),
        progress=False, cutout=8))
    res = retrain(cfg)
    assert res["config"]["auxiliary_weight"] == 0.4 and res["config"]["drop_path"] == 0.2
    net = get_space("darts").build_network(parse_genotype(DARTS_V2), 4, 3, 10, 1)
    assert res["params"] == count_params(net)  # auxiliary head excluded
    assert 0.0 <= res["test_acc"] <= 1.0


def test_the_auxiliary_head_on_too_small_images_is_refused_in_one_line(tmp_path):
    cfg = build_config("retrain", overrides=dict(
        space="s2", genotype=DARTS_V2.replace("max_pool_3x3", "skip_connect").replace("dil_conv_3x3", "sep_conv_3x3"),
        dataset="digits", cache_dir=str(tmp_path / "cache"), resolution=16, channels=4, cells=3, epochs=1,
        subset=10, device="cpu", out=str(tmp_path / "rt"), progress=False))
    with pytest.raises(NasError, match=r"key 'auxiliary_weight' is 0.4, .* these are 16x16 \(set auxiliary_weight=0\)"):
        retrain(cfg)
    assert not (tmp_path / "rt" / "result.json").exists()


def test_cutout_zeroes_one_square_per_image():
    from nas.data import BatchStream
    from nas.data.stream import StreamSettings

    x = torch.full((4, 1, 12, 12), 200, dtype=torch.uint8)
    s = BatchStream(x, torch.zeros(4, dtype=torch.long), torch.arange(4),
                    StreamSettings([0.0], [1.0], batch_size=4, augment=True, padding=0, flip=False, cutout=4))
    xb, _ = s.batch(torch.arange(4), torch.Generator().manual_seed(0))
    zeros = (xb == 0).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 16)).all()


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    from nas.data import read_svhn

    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                  "y": np.array([[10], [1], [2], [3], [4], [5], [9]][:n], dtype=np.uint8)})
    raw = read_svhn(tmp_path)
    assert raw.train_x.shape == (7, 3, 32, 32) and raw.train_y.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert raw.test_y.tolist() == [0, 1, 2]
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(NasError, match="test_32x32.mat: not a readable .mat file"):
        read_svhn(tmp_path)


# The NASNet and AmoebaNet cells of the DARTS code's genotypes: 5 intermediate nodes, concatenations
# of some nodes only, and the ops sep_conv_7x7 and conv_7x1_1x7.
NASNET = ("Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
          "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
          "('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), "
          "('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), "
          "('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])")
AMOEBANET = ("Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), "
             "('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), "
             "('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), "
             "('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), "
             "('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('conv_7x1_1x7', 0), "
             "('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])")
DARTS_V1 = ("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
            "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")


@pytest.mark.parametrize("text,params", [
    # parameter counts of the DARTS code's NetworkCIFAR(36, 10, 20) for these genotypes, auxiliary
    # head excluded, as its count_parameters_in_MB counts them
    (NASNET, 3_830_950), (AMOEBANET, 3_145_078), (DARTS_V1, 3_169_414), (DARTS_V2, 3_349_342),
])
def test_the_darts_code_genotypes_build_with_its_parameter_counts(text, params):
    info = info_stage("darts", text)
    assert info["params"] == params
    geno = parse_genotype(text)
    assert parse_genotype(get_space("darts").format_genotype(geno)) == geno
    assert parse_genotype(json.dumps(geno.to_json())) == geno
    net = get_space("darts").build_network(geno, 4, 5, 10, 3, auxiliary=True)
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))  # the auxiliary head reads 8x8 features
    assert logits.shape == (2, 10) and aux.shape == (2, 10)


def test_a_five_node_genotype_is_not_a_point_of_the_search_space():
    with pytest.raises(NasError, match="5 intermediate nodes is not in space darts"):
        get_space("darts").genotype_weights(parse_genotype(NASNET))


def test_s_proxy_study_records_a_finished_and_a_stopped_search(tmp_path):
    """bench/s_proxy_study.py: the study row and skip-weight curves of an S2 search, read from its
    result.json or, for a search stopped early, from its checkpoint (the same numbers)."""
    import csv
    import json
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import s_proxy_study as study
    finally:
        sys.path.remove(str(REPO / "bench"))
    res = search(_tiny(tmp_path, space="s2", epochs=2, seed=3, hessian_every=2))
    run, out = tmp_path / "run", tmp_path / "study"
    row = study.record(run, "finished", "channels=4", 2, out)
    sp = get_space("s2")
    w = res["weights"]
    skip = [w[e][sp.edge_ops[e].index("skip_connect")] for e in range(14)]
    assert row["normal_skip_weight_final"] == f"{sum(skip) / 14:.4f}"
    assert row["op"] == "skip_connect"
    assert row["normal_ops"] == " ".join(op for op, _ in sp.parse_genotype(res["genotype"]).normal)
    assert row["epochs"] == 2 and row["seed"] == 3 and row["space"] == "s2"
    assert row["top_eigenvalue_final"] == f"{res['hessian']['top_eigenvalue'][-1]:.4f}"
    (run / "result.json").unlink()  # as a search stopped before its end leaves it
    again = study.record(run, "stopped", "channels=4", 5, out)
    assert {k: v for k, v in again.items() if k not in ("run", "planned_epochs")} == \
        {k: v for k, v in row.items() if k not in ("run", "planned_epochs")}
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["run"] for r in rows] == ["finished", "stopped"] and rows[1]["planned_epochs"] == "5"
    curves = json.loads((out / "skip_weights.json").read_text())
    assert curves["finished"]["epoch"] == [1, 2] and curves["finished"]["normal_skip_weight"][-1] == round(sum(skip) / 14, 4)
    assert study.plot(out).is_file()
    study.record(run, "finished", "channels=4", 2, out)  # recording a run again replaces its row
    assert [r["run"] for r in csv.DictReader((out / "runs.csv").open())] == ["stopped", "finished"]
    with pytest.raises(NasError, match="neither result.json nor checkpoint.pt"):
        study.record(tmp_path / "nothing", "x", "", 1, out)


def test_space_capabilities_are_fields_not_guesses():
    from nas.spaces import get_space

    nb, s3 = get_space("nb201"), get_space("s3")
    assert nb.auxiliary_min_side == 0 and s3.auxiliary_min_side == 32
    assert nb.benchmark == "nb201" and s3.benchmark is None
    geno = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    assert nb.counted_ops(nb.parse_genotype(geno)).count("skip_connect") == 3
    cell = ("Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 1), "
            "('sep_conv_3x3', 0), ('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 1)], normal_concat=[2, 3, 4, 5], "
            "reduce=" + "[" + ", ".join(["('skip_connect', 0), ('skip_connect', 1)"] * 4) + "], reduce_concat=[2, 3, 4, 5])")
    assert s3.counted_ops(s3.parse_genotype(cell)).count("skip_connect") == 6  # the normal cell only
