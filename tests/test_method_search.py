"""Every method through the one search loop: determinism, resume, and method-specific outputs."""

import json

import pytest
import torch

from nas.config import build_config
from nas.methods import METHOD_NAMES
from nas.runs.files import torch_load
from nas.search import search

EXTRA = {"rsps": {"rsps_candidates": 4}, "random": {"random_samples": 2, "random_epochs": 1},
         "pc-darts": {"channels": 8}, "naswot": {"naswot_samples": 4, "naswot_batch": 16}}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_same_seed_same_result_for_every_method(tiny_search, tmp_path, method):
    kw = dict(method=method, **EXTRA.get(method, {}))
    a = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "a"), **kw)))
    b = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "b"), **kw)))
    assert a["genotype"] == b["genotype"] and a["alpha"] == b["alpha"] and a["weights"] == b["weights"]
    def untimed(history):
        return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]

    assert untimed(a["history"]) == untimed(b["history"])  # losses per epoch, or the candidates' scores


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method,extra", [
    ("gdas", {}),
    ("drnas", {"progressive": True, "channels": 8, "epochs": 4}),
    ("sdarts-adv", {}),
    ("random", {"random_samples": 3, "random_epochs": 1}),
])
def test_resume_equivalence_for_stochastic_methods(tiny_search, tmp_path, method, extra):
    kw = dict(method=method, epochs=extra.pop("epochs", 3), **extra)
    full = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "full"), **kw)))
    cfg = build_config("search", overrides=tiny_search(out=str(tmp_path / "cut"), **kw))
    if method == "random":
        import nas.baselines as bl

        original = bl.train_epoch
        calls = {"n": 0}

        def failing(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Stop
            return original(*a, **k)

        bl.train_epoch = failing
        try:
            with pytest.raises(_Stop):
                search(cfg)
        finally:
            bl.train_epoch = original
    else:
        def stop(state):
            if state.epoch == 2:
                raise _Stop
        with pytest.raises(_Stop):
            search(cfg, callback=stop)
    resumed = search(cfg, resume=True)
    assert resumed["genotype"] == full["genotype"]
    assert resumed["weights"] == full["weights"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_drnas_progressive_prunes_and_widens(tiny_search, tmp_path):
    res = search(build_config("search", overrides=tiny_search(method="drnas", progressive=True, channels=8,
                                                              epochs=4, arch_warmup=1)))
    h = res["history"]
    assert [r["stage"] for r in h] == [1, 1, 2, 2]
    assert [r["alpha_trained"] for r in h] == [False, True, False, True]
    mask = torch.tensor(res["mask"])
    assert mask.sum(-1).tolist() == [3] * 6
    w = torch.tensor(res["weights"])
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    # stage-2 convolutions pass C/2 channels instead of C/4
    ck = torch_load(tmp_path / "run" / "checkpoint.pt")
    conv = [v for k, v in ck["model"].items() if k.endswith("convs.nor_conv_3x3.0.weight")][0]
    assert conv.shape[1] == 8 // 2


def test_rsps_trains_no_alpha_and_ranks_candidates(tiny_search, tmp_path):
    res = search(build_config("search", overrides=tiny_search(method="rsps", rsps_candidates=6)))
    assert res["selection"] == "rsps"
    ranked = res["rsps_candidates"]
    assert len(ranked) == 6 and ranked[0]["genotype"] == res["genotype"]
    assert [r["val_acc"] for r in ranked] == sorted((r["val_acc"] for r in ranked), reverse=True)
    assert torch.tensor(res["alpha"]).abs().max() < 0.01  # still at its 1e-3 initialisation


def test_random_baseline_keeps_the_best_candidate(tiny_search, tmp_path):
    res = search(build_config("search", overrides=tiny_search(method="random", random_samples=3, random_epochs=1)))
    cands = res["history"]
    assert len(cands) == 3
    assert res["genotype"] == max(cands, key=lambda c: c["val_acc"])["genotype"]
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    assert data["selection"] == "random"


@pytest.mark.parametrize("kw", [
    {"method": "drnas", "perturb": "adv", "adv_steps": 2},
    {"method": "gdas", "partial_channels": 4, "channels": 8},
    {"method": "snas", "perturb": "rs"},
    {"method": "sdarts-rs", "partial_channels": 2, "edge_norm": True},
    {"method": "drnas", "partial_channels": 2, "drnas_reg": "kl"},
])
def test_combined_seams_search_end_to_end(tiny_search, kw):
    res = search(build_config("search", overrides=tiny_search(**kw)))
    info = res["method_info"]
    assert info["perturbation"] == kw.get("perturb", info["perturbation"])
    assert info["partial_channels"] == kw.get("partial_channels", 1)
    torch.testing.assert_close(torch.tensor(res["weights"]).sum(-1), torch.ones(6))


def test_method_history_records_schedules(tiny_search, tmp_path):
    res = search(build_config("search", overrides=tiny_search(method="gdas", epochs=3, out=str(tmp_path / "gdas"))))
    taus = [h["tau"] for h in res["history"]]
    assert taus[0] == 10.0 and abs(taus[-1] - 0.1) < 1e-9
    res = search(build_config("search", overrides=tiny_search(method="sdarts-rs", epochs=2, out=str(tmp_path / "rs"))))
    eps = [h["perturb_epsilon"] for h in res["history"]]
    assert eps[0] == pytest.approx(0.03) and eps[1] > eps[0]
    res = search(build_config("search", overrides=tiny_search(method="pc-darts", channels=8, epochs=1,
                                                              out=str(tmp_path / "pc"))))
    assert len(res["edge_scale"]) == 6
