"""Selection: magnitude vs perturbation-based (PT), and the α-vs-strength comparison."""

import json

import pytest
import torch
from torch import nn

from nas.config import build_config
from nas.mix import Mix
from nas.search import Search, search
from nas.select import op_strength, pt_project, select, without_op
from nas.utils import NasError


class ProbeNet(nn.Module):
    """A toy 'supernet' on the NB201 edges: only ``nor_conv_3x3`` on edge 0 carries the signal
    (a fixed linear classifier of the image); every other op contributes nothing."""

    def __init__(self, probe: nn.Linear):
        super().__init__()
        self.probe = probe

    def forward(self, x, mix):
        mix = mix if isinstance(mix, Mix) else Mix(mix)
        return mix.weights[0, 3] * self.probe(x.flatten(1))


def _fit_probe(bundle, idx):
    torch.manual_seed(0)
    probe = nn.Linear(64, 10)
    opt = torch.optim.Adam(probe.parameters(), 0.05)
    stream = bundle.stream(idx, 256, augment=False)
    for _ in range(30):
        for x, y in stream.epoch(None, shuffle=False):
            opt.zero_grad()
            nn.functional.cross_entropy(probe(x.flatten(1)), y).backward()
            opt.step()
    return probe


def test_pt_keeps_the_op_that_matters_where_magnitude_does_not(tiny_search):
    cfg = build_config("search", overrides=tiny_search())
    s = Search(cfg)
    bundle, w_stream, a_stream = s.streams()
    st = s.build_state(bundle)
    st.model = ProbeNet(_fit_probe(bundle, w_stream.indices))
    with torch.no_grad():
        st.arch.alpha.zero_()
        st.arch.alpha[0, 1] = 3.0  # α says skip_connect dominates edge 0
    val = bundle.stream(a_stream.indices, 512, augment=False)
    assert s.space.select_magnitude(s.expected(st))[0] == "skip_connect"
    sel_cfg = build_config("select", sets=["method=pt", "pt_tune_epochs=0"])
    decisions, _ = pt_project(s, st, val, w_stream, a_stream, sel_cfg)
    edge0 = next(d for d in decisions if d["edge"] == 0)
    assert edge0["chosen"] == "nor_conv_3x3"
    assert edge0["acc_without"]["nor_conv_3x3"] < 0.3 < edge0["base_acc"]
    assert s.space.select_magnitude(s.expected(st))[0] == "nor_conv_3x3"


def test_removing_an_op_masks_it_or_renormalises_the_edge():
    w = torch.full((6, 5), 0.2)
    m = without_op(Mix(w), 2, 4)  # the PT authors' removal: the weight times 0, nothing else
    assert m.weights[2, 4] == 0 and torch.equal(m.weights[2, :4], w[2, :4])
    r = without_op(Mix(w), 2, 4, renormalise=True)
    assert r.weights[2, 4] == 0 and torch.allclose(r.weights[2, :4], torch.full((4,), 0.25))
    assert torch.equal(m.weights[0], w[0]) and torch.equal(r.weights[0], w[0])


def test_selection_configs_without_the_pt_keys_mean_the_first_pt():
    """A selection cached before pt_removal / pt_bn / pt_tune_alpha existed was made with
    renormalisation, running statistics and w-only tuning: it matches a config that pins those,
    and not the new defaults."""
    from nas.config import to_dict
    from nas.select import PT_LEGACY, same_selection

    now = to_dict(build_config("select", sets=["method=pt"]))
    old = {k: v for k, v in now.items() if k not in PT_LEGACY}
    assert not same_selection(old, now)
    assert same_selection(old, {**now, **PT_LEGACY})
    assert not same_selection(old, {**now, **PT_LEGACY, "pt_tune_epochs": 3})


@pytest.fixture
def finished_run(tiny_search, tmp_path):
    search(build_config("search", overrides=tiny_search(epochs=2)))
    return tmp_path / "run"


def test_pt_selection_is_deterministic_and_writes_its_decisions(finished_run, tmp_path):
    sets = ["method=pt", "pt_tune_epochs=1", "pt_batches=2", f"run={finished_run}", "device=cpu"]
    a = select(build_config("select", sets=[*sets, f"out={tmp_path / 'a'}"]))
    b = select(build_config("select", sets=[*sets, f"out={tmp_path / 'b'}"]))
    assert a["genotype"] == b["genotype"] and a["decisions"] == b["decisions"]
    assert sorted(a["edge_order"]) == list(range(6)) and len(a["decisions"]) == 6
    for d in a["decisions"]:
        assert d["chosen"] == min(d["acc_without"], key=lambda op: (d["acc_without"][op], list(d["acc_without"]).index(op)))
    saved = json.loads((tmp_path / "a" / "selection.json").read_text())
    assert saved["genotype"] == a["genotype"] and saved["selection"] == "pt"
    c = select(build_config("select", sets=[*sets[:-1], "seed=5", "device=cpu"]))
    assert c["edge_order"] != a["edge_order"]


def test_fix_alpha_supernet_keeps_uniform_weights(tiny_search):
    res = search(build_config("search", overrides=tiny_search(fix_alpha=True)))
    assert torch.tensor(res["alpha"]).abs().max() == 0
    torch.testing.assert_close(torch.tensor(res["weights"]), torch.full((6, 5), 0.2))


def test_strength_table_plot_and_rank_correlation(finished_run, tmp_path):
    cfg = build_config("select", sets=[f"run={finished_run}", "pt_batches=2", "device=cpu"])
    r = op_strength(finished_run, cfg, tmp_path / "st")
    assert len(r["rows"]) == 30 and -1 <= r["spearman"] <= 1
    assert (tmp_path / "st" / "strength.csv").read_text().startswith("edge,op,alpha,weight,acc_without,drop")
    assert (tmp_path / "st" / "strength.png").read_bytes()[:4] == b"\x89PNG"
    for row in r["rows"]:
        assert row["drop"] == pytest.approx(r["base_acc"] - row["acc_without"])


def test_magnitude_selection_is_refused_for_runs_without_alpha(tiny_search, tmp_path):
    search(build_config("search", overrides=tiny_search(method="rsps", rsps_candidates=2)))
    with pytest.raises(NasError, match="which trains no α"):
        select(build_config("select", sets=[f"run={tmp_path / 'run'}"]))
    with pytest.raises(NasError, match="search result not found"):
        select(build_config("select", sets=[f"run={tmp_path / 'nothing'}"]))


def test_selection_at_a_kept_epoch_reads_that_epochs_supernet(tiny_search, tmp_path):
    """keep_every keeps each k-th epoch's checkpoint; a selection at that epoch starts from it."""
    from nas.runs.files import torch_load

    res = search(build_config("search", overrides=tiny_search(epochs=3, keep_every=2)))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch-2.pt"]
    kept = torch_load(run / "epochs" / "epoch-2.pt")
    assert kept["epoch"] == 2 and len(kept["history"]) == 2
    # magnitude at epoch 2: the genotype α selected at the end of epoch 2, not the final one
    mag = select(build_config("select", sets=[f"run={run}", "epoch=2"]))
    assert mag["genotype"] == res["history"][1]["genotype"] and mag["epoch"] == 2
    # PT at epoch 2 starts from that supernet: its magnitude reading is epoch 2's
    sets = ["method=pt", "pt_tune_epochs=0", "pt_batches=1", f"run={run}", "device=cpu"]
    pt = select(build_config("select", sets=[*sets, "epoch=2"]))
    assert pt["epoch"] == 2 and pt["magnitude_genotype"] == res["history"][1]["genotype"]
    assert select(build_config("select", sets=sets))["epoch"] == 3
    with pytest.raises(NasError, match=r"epoch-1\.pt: no supernet kept at epoch 1 \(kept: 2; search with keep_every"):
        select(build_config("select", sets=[*sets, "epoch=1"]))
    with pytest.raises(NasError, match="the search has no epoch 7"):
        select(build_config("select", sets=[f"run={run}", "epoch=7"]))


def test_masking_makes_removing_none_a_no_op_and_renormalising_does_not(finished_run):
    """Under the authors' mask, taking ``none`` (which outputs zeros) off an edge changes nothing,
    so its accuracy drop is exactly 0; renormalising scales the edge's other ops up instead."""
    rows = {}
    for removal in ("mask", "renormalise"):
        cfg = build_config("select", sets=[f"run={finished_run}", "pt_batches=2", "device=cpu", f"pt_removal={removal}"])
        rows[removal] = [r for r in op_strength(finished_run, cfg)["rows"] if r["op"] == "none"]
    assert len(rows["mask"]) == 6 and all(r["drop"] == 0.0 for r in rows["mask"])
    assert any(r["drop"] != 0.0 for r in rows["renormalise"])


def test_batch_statistics_measurement_leaves_the_running_ones_alone(finished_run):
    from nas.select import load_supernet

    s, st, _, _, val = load_supernet(finished_run, "cpu")
    norms = [m for m in st.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    before = {k: v.clone() for k, v in st.model.state_dict().items() if "running" in k or "num_batches" in k}
    batch = s.measurement.evaluate(st, val, None, 2, bn="batch")
    after = {k: v for k, v in st.model.state_dict().items() if k in before}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert st.model.training and all(m.track_running_stats for m in norms)
    # the same accuracy as the model in training mode (batch statistics) computes by hand
    import copy
    twin = copy.deepcopy(st.model).train()
    correct = n = 0
    with torch.no_grad():
        for b, (x, y) in enumerate(val.epoch(None, shuffle=False)):
            if b >= 2:
                break
            correct += int((twin(x, s.expected_mix(st)).argmax(1) == y).sum())
            n += len(y)
    assert batch == pytest.approx(correct / n)
    with pytest.raises(NasError, match="bn must be 'running' or 'batch', not 'nope'"):
        s.measurement.evaluate(st, val, None, 1, bn="nope")


@pytest.mark.parametrize("fix_alpha", [False, True])
def test_pt_tuning_takes_alpha_steps_unless_asked_not_to_or_alpha_is_fixed(tiny_search, tmp_path, fix_alpha):
    from nas.runs.files import torch_load

    search(build_config("search", overrides=tiny_search(epochs=1, fix_alpha=fix_alpha)))
    run = tmp_path / "run"
    alpha0 = torch_load(run / "checkpoint.pt")["arch"]["alpha"]
    moved = {}
    for tune_alpha in (True, False):
        out = tmp_path / f"pt-{tune_alpha}"
        sel = select(build_config("select", sets=["method=pt", "pt_tune_epochs=1", "pt_batches=1", f"run={run}",
                                                  "device=cpu", f"out={out}", f"pt_tune_alpha={tune_alpha}"]))
        assert sel["tune_alpha"] is (tune_alpha and not fix_alpha)
        alpha = torch_load(out / "pt-checkpoint.pt")["arch"]["alpha"]
        moved[tune_alpha] = not torch.equal(alpha, alpha0)
    assert moved == {True: not fix_alpha, False: False}


def test_a_pt_checkpoint_from_before_the_pt_keys_resumes_as_the_first_variant(finished_run, tmp_path):
    from nas.runs.files import torch_load, torch_save
    from nas.select import PT_CHECKPOINT, PT_LEGACY

    base = dict(method="pt", run=str(finished_run), device="cpu", progress=False, pt_tune_epochs=1, pt_batches=1,
                out=str(tmp_path / "pt"))
    legacy = build_config("select", overrides={**base, **PT_LEGACY})

    def stop(k):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select(legacy, on_step=stop)
    path = tmp_path / "pt" / PT_CHECKPOINT
    ck = torch_load(path)
    ck["config"] = {k: v for k, v in ck["config"].items() if k not in PT_LEGACY}  # as written before the keys
    torch_save(path, ck)
    with pytest.raises(NasError, match="pt-checkpoint.pt: cannot resume, config key 'pt_bn' was 'running', now 'batch'"):
        select(build_config("select", overrides=base), resume=True)
    done = select(legacy, resume=True)
    assert len(done["decisions"]) == 6 and done["removal"] == "renormalise" and done["tune_alpha"] is False
