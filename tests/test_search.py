import json

import pytest
import torch
from conftest import killed_then_resumed

from nas.config import build_config
from nas.rundir import read_search_result
from nas.search import CHECKPOINT, search
from nas.spaces import nb201
from nas.utils import NasError


def test_tiny_search_end_to_end_writes_result(tiny_search, tmp_path):
    cfg = build_config("search", overrides=tiny_search(epochs=3))
    res = search(cfg)
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    assert data["genotype"] == res["genotype"]
    # the seconds are beside the result (timings.json), merged back by the package's readers
    assert "seconds" not in data and all("seconds" not in h for h in data["history"])
    assert read_search_result(tmp_path / "run")["seconds"] == res["seconds"] > 0
    data = read_search_result(tmp_path / "run")
    nb201.parse_genotype(data["genotype"])  # a valid NB201 genotype
    assert (data["space"], data["method"], data["order"]) == ("nb201", "darts", 1)
    assert len(data["history"]) == 3
    for h in data["history"]:
        assert set(h) >= {"train_loss", "train_acc", "val_loss", "val_acc", "alpha", "weights", "seconds",
                          "genotype", "edge_entropy", "skip_weight_mean"}
        assert torch.tensor(h["alpha"]).shape == (6, 5)
        torch.testing.assert_close(torch.tensor(h["weights"]).sum(-1), torch.ones(6))
    # α moved away from its 1e-3 initialisation
    assert torch.tensor(data["alpha"]).abs().max() > 1e-3
    assert (tmp_path / "run" / CHECKPOINT).is_file()


def test_search_learns_on_digits(tiny_search):
    cfg = build_config("search", overrides=tiny_search(epochs=4, channels=8, steps_per_epoch=0))
    res = search(cfg)
    first, last = res["history"][0], res["history"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.parametrize("order", [1, 2])
def test_same_seed_same_alpha_and_genotype(tiny_search, tmp_path, order):
    a = search(build_config("search", overrides=tiny_search(order=order, out=str(tmp_path / "a"))))
    b = search(build_config("search", overrides=tiny_search(order=order, out=str(tmp_path / "b"))))
    c = search(build_config("search", overrides=tiny_search(order=order, seed=1, out=str(tmp_path / "c"))))
    assert a["alpha"] == b["alpha"] and a["genotype"] == b["genotype"]
    assert a["alpha"] != c["alpha"]


def test_second_order_differs_from_first_order(tiny_search, tmp_path):
    a = search(build_config("search", overrides=tiny_search(order=1, out=str(tmp_path / "a"))))
    b = search(build_config("search", overrides=tiny_search(order=2, out=str(tmp_path / "b"))))
    assert a["alpha"] != b["alpha"]


@pytest.mark.parametrize("order", [1, 2])
def test_resume_after_interruption_gives_the_same_final_alpha(tiny_search, tmp_path, order):
    full = search(build_config("search", overrides=tiny_search(epochs=4, order=order, out=str(tmp_path / "full"))))

    cfg = build_config("search", overrides=tiny_search(epochs=4, order=order, out=str(tmp_path / "cut")))

    def no_result_yet(c, **kw):
        if kw.get("resume"):
            assert not (tmp_path / "cut" / "result.json").exists()
        return search(c, **kw)

    resumed = killed_then_resumed(no_result_yet, cfg, at=2)
    assert resumed["alpha"] == full["alpha"]
    assert resumed["genotype"] == full["genotype"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_resume_with_a_changed_config_is_refused(tiny_search, tmp_path):
    search(build_config("search", overrides=tiny_search(epochs=1)))
    cfg = build_config("search", overrides=tiny_search(epochs=1, w_lr=0.5))
    with pytest.raises(NasError, match="cannot resume, config key 'w_lr' was 0.025, now 0.5"):
        search(cfg, resume=True)


def test_unknown_method_is_named(tiny_search):
    with pytest.raises(NasError, match="method: unknown 'dartz'"):
        search(build_config("search", overrides=tiny_search(method="dartz")))


def test_subset_and_resolution_options(tiny_search):
    res = search(build_config("search", overrides=tiny_search(epochs=1, subset=20, resolution=6)))
    assert res["dataset"]["resolution"] == 6
