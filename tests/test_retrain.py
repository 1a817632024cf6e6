import json

import pytest

from nas.config import build_config
from nas.train import retrain
from nas.utils import NasError

GENO = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def _cfg(tmp_path, **kw):
    base = dict(dataset="digits", cache_dir=str(tmp_path / "cache"), genotype=GENO, epochs=4, channels=4, cells=1,
                batch_size=64, lr=0.05, device="cpu", out=str(tmp_path / "rt"), progress=False)
    base.update(kw)
    return build_config("retrain", overrides=base)


def test_retrain_learns_and_writes_checkpoints(tmp_path):
    res = retrain(_cfg(tmp_path))
    assert res["test_acc"] > 0.6  # digits, 4 epochs of a tiny network; chance is 0.1
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    assert (tmp_path / "rt" / "model.pt").is_file() and (tmp_path / "rt" / "checkpoint.pt").is_file()
    data = json.loads((tmp_path / "rt" / "result.json").read_text())
    assert data["params"] == res["params"] and data["genotype"] == GENO


def test_retrain_resume_matches_uninterrupted(tmp_path):
    full = retrain(_cfg(tmp_path, epochs=3, out=str(tmp_path / "a")))

    class Stop(Exception):
        pass

    def stop(epoch, rec):
        if epoch == 2:
            raise Stop

    cfg = _cfg(tmp_path, epochs=3, out=str(tmp_path / "b"))
    with pytest.raises(Stop):
        retrain(cfg, callback=stop)
    res = retrain(cfg, resume=True)
    assert res["test_acc"] == full["test_acc"]
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in full["history"]]


def test_retrain_needs_a_valid_genotype(tmp_path):
    with pytest.raises(NasError, match="'genotype' is required"):
        retrain(_cfg(tmp_path, genotype=""))
    with pytest.raises(NasError, match="unknown op 'sep_conv_3x3'"):
        retrain(_cfg(tmp_path, genotype=GENO.replace("nor_conv_1x1", "sep_conv_3x3")))
