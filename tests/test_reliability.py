"""Nothing is lost on a forgotten flag, a bad setting, a full disk or a second worker; no bad input
is accepted silently; no small input makes the process allocate without bound."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line, scfg

from nas.cli import main
from nas.config import build_config
from nas.runs.files import torch_load, torch_save
from nas.search import search
from nas.select import PT_CHECKPOINT, select
from nas.train import retrain
from nas.utils import NasError, atomic_write

REPO = Path(__file__).resolve().parent.parent
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"






# ------------------------------------------------------------------------------------------ 1. lost work
def test_a_forgotten_resume_is_refused_and_force_starts_over(tiny_search, tmp_path, capsys):
    cfg = scfg(tiny_search, epochs=2)
    first = search(cfg)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(NasError, match="already holds a search run") as exc:
        search(cfg)
    assert "--resume" in str(exc.value) and "--force" in str(exc.value)
    one_line(exc.value)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before  # untouched
    # the CLI says the same and exits 2
    argv = ["search", "--dataset", "digits", "--out", str(tmp_path / "run"), "--epochs", "2", "--no-progress",
            "--device", "cpu", *sum((["--set", f"{k}={v}"] for k, v in tiny_search().items()
                                    if k in ("cache_dir", "channels", "cells", "batch_size", "steps_per_epoch")), [])]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # --force removes the old result at once: an interrupted forced run leaves no stale result.json
    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, force=True, callback=stop)
    assert not (tmp_path / "run" / "result.json").exists()
    assert torch_load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    again = search(cfg, resume=True)
    assert again["alpha"] == first["alpha"]


def test_retrain_refuses_a_folder_holding_a_retrain(tmp_path):
    cfg = build_config("retrain", overrides=dict(dataset="digits", genotype=NB201_BEST, epochs=1, channels=4,
                                                 cells=1, out=str(tmp_path / "rt"), device="cpu", progress=False,
                                                 cache_dir=str(tmp_path / "cache")))
    retrain(cfg)
    with pytest.raises(NasError, match="already holds a retrain run.*--resume.*--force"):
        retrain(cfg)
    assert retrain(cfg, force=True)["epochs"] == 1
    # model.pt stays in the plain torch format (other tools load it)
    assert isinstance(torch.load(tmp_path / "rt" / "model.pt", weights_only=True), dict)


BAD_SETTINGS = [
    ("search", "w_lr=.nan", "'w_lr' expects a finite number"),
    ("search", "a_lr=.inf", "'a_lr' expects a finite number"),
    ("search", "w_lr=-0.1", "'w_lr' must be in"),
    ("search", "a_beta1=1.0", "'a_beta1' must be in"),
    ("search", "w_momentum=-0.5", "'w_momentum' must be in"),
    ("search", "grad_clip=-1", "'grad_clip' must be >= 0"),
    ("search", "es_start=-1", "'es_start' must be in"),
    ("search", "hessian_topk=31", "'hessian_topk' must be <= the 30 entries"),
    ("search", f"seed={2**63}", "'seed' must be in"),
    ("search", "crop_padding=100000", "'crop_padding' must be in"),
    ("search", "resolution=100000", "'resolution' must be in"),
    ("search", "out=", "'out' must name a folder"),
    ("search", "checkpoint_every=0", "'checkpoint_every' must be in"),
    ("search", "perturb=sideways", "'perturb' must be one of"),
    ("search", "dataset=mnist", "'dataset' must be one of"),
    ("search", "method=dartz", "method: unknown 'dartz'"),
    ("retrain", "eval_batch_size=0", "'eval_batch_size' must be in"),
    ("retrain", "checkpoint_every=0", "'checkpoint_every' must be in"),
    ("retrain", "lr=-1", "'lr' must be in"),
    ("retrain", "drop_path=1.5", "'drop_path' must be in"),
    ("select", "pt_lr_factor=0", "'pt_lr_factor' must be in"),
]


@pytest.mark.parametrize("kind,item,msg", BAD_SETTINGS)
def test_every_setting_is_range_checked_at_parse_time(kind, item, msg):
    with pytest.raises(NasError, match=msg) as exc:
        build_config(kind, sets=[item])
    one_line(exc.value)


def test_keys_that_may_change_on_resume(tmp_path):
    kw = dict(dataset="digits", genotype=NB201_BEST, epochs=2, channels=4, cells=1, out=str(tmp_path / "rt"),
              device="cpu", progress=False, cache_dir=str(tmp_path / "cache"))
    full = retrain(build_config("retrain", overrides={**kw, "out": str(tmp_path / "full")}))

    def stop(epoch, rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain(build_config("retrain", overrides=kw), callback=stop)
    res = retrain(build_config("retrain", overrides={**kw, "eval_batch_size": 7, "checkpoint_every": 3}), resume=True)
    assert res["test_acc"] == full["test_acc"]


def test_a_resolution_that_would_not_fit_in_memory_is_refused(monkeypatch):
    import nas.data
    import nas.data.stream

    monkeypatch.setattr(nas.data.stream, "available_memory", lambda: 8 << 30)
    manifest = {"counts": {"train": 50_000, "test": 10_000}, "channels": 3}
    nas.data.check_memory(manifest, 32, 4, 64, "cifar10.pt")  # the usual case passes
    with pytest.raises(NasError, match=r"cifar10.pt: resolution 1024 with crop padding 4 needs about 178.1 GiB "
                                       r"for 60000 images, more than the 8.0 GiB available") as exc:
        nas.data.check_memory(manifest, 1024, 4, 64, "cifar10.pt")
    one_line(exc.value)
    with pytest.raises(NasError, match="crop padding 128 needs"):
        nas.data.check_memory(manifest, 1024, 128, 65536, "cifar10.pt")


def test_duplicate_yaml_keys_are_refused(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("search:\n  epochs: 1\n  seed: 0\n  epochs: 500\n")
    with pytest.raises(NasError, match=r"dup.yaml: not valid YAML \(key 'epochs' given twice \(lines 2 and 4\)"):
        build_config("search", f)


# ------------------------------------------------------------------------------------------ 3. PT
def test_pt_checks_its_output_before_working_and_resumes_per_edge(tiny_search, tmp_path):
    search(scfg(tiny_search, epochs=2))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        cfg = build_config("select", overrides=dict(method="pt", run=str(tmp_path / "run"), out=str(out),
                                                    device="cpu", progress=False, pt_tune_epochs=1))
        with pytest.raises(NasError, match="a file, expected a folder") as exc:
            select(cfg)
        one_line(exc.value)

    base = dict(method="pt", run=str(tmp_path / "run"), device="cpu", progress=False, pt_tune_epochs=1)
    full = select(build_config("select", overrides={**base, "out": str(tmp_path / "pt-full")}))
    cfg = build_config("select", overrides={**base, "out": str(tmp_path / "pt")})

    def stop_after_three(k):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select(cfg, on_step=stop_after_three)
    ck = torch_load(tmp_path / "pt" / PT_CHECKPOINT)
    assert len(ck["decisions"]) == 3 and not (tmp_path / "pt" / "selection.json").exists()
    with pytest.raises(NasError, match="already holds a selection run.*--resume"):
        select(cfg)
    resumed = select(cfg, resume=True)
    assert resumed["genotype"] == full["genotype"]
    assert resumed["decisions"] == full["decisions"]
    assert resumed["final_val_acc"] == full["final_val_acc"]
    # untuned, the supernet stays the search's: the checkpoint holds the decisions, not the weights,
    # and resumes to the same selection
    untuned = {**base, "pt_tune_epochs": 0}
    full0 = select(build_config("select", overrides={**untuned, "out": str(tmp_path / "pt0-full")}))
    cfg0 = build_config("select", overrides={**untuned, "out": str(tmp_path / "pt0")})
    with pytest.raises(KeyboardInterrupt):
        select(cfg0, on_step=stop_after_three)
    ck0 = torch_load(tmp_path / "pt0" / PT_CHECKPOINT)
    assert "model" not in ck0 and ck0["tune_epoch"] == 0 and len(ck0["decisions"]) == 3
    for damage in ({"decisions": "x"}, {"tune_epoch": 2}, {"tune_epoch": -1}):  # read back, validated
        torch_save(tmp_path / "pt0" / PT_CHECKPOINT, {**ck0, **damage})
        with pytest.raises(NasError, match="pt-checkpoint.pt: ") as exc:
            select(cfg0, resume=True)
        one_line(exc.value)
    torch_save(tmp_path / "pt0" / PT_CHECKPOINT, ck0)
    assert select(cfg0, resume=True)["decisions"] == full0["decisions"]
    # a changed PT setting is not resumed
    changed = build_config("select", overrides={**base, "out": str(tmp_path / "pt"), "pt_tune_epochs": 2})
    with pytest.raises(NasError, match="cannot resume, config key 'pt_tune_epochs' was 1, now 2"):
        select(changed, resume=True)


# ------------------------------------------------------------------------------------------ 4. output faults
def test_output_path_faults_are_one_line_and_leave_no_temporaries(tiny_search, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "is a file, expected a folder"), (f / "run", "lies under .* which is a file")):
        with pytest.raises(NasError, match=msg) as exc:
            search(scfg(tiny_search, out=str(out)))
        one_line(exc.value)

    for code, text in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")):
        def failing_write(p, code=code):
            with open(p, "wb") as fh:
                fh.write(b"partial")
            raise OSError(code, os.strerror(code))

        with pytest.raises(NasError, match=f"cannot write \\({text}\\)") as exc:
            atomic_write(tmp_path / "out" / "checkpoint.pt", failing_write)
        one_line(exc.value)
        assert list((tmp_path / "out").iterdir()) == []

    # a full disk in the middle of a search: one line, no temp file, the previous checkpoint intact
    cfg = scfg(tiny_search, epochs=3)
    calls = {"n": 0}
    real_replace = os.replace

    def replace_once_then_full(a, b):
        calls["n"] += str(b).endswith("checkpoint.pt")
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace_once_then_full)
    with pytest.raises(NasError, match="checkpoint.pt: cannot write \\(No space left on device\\)"):
        search(cfg)
    monkeypatch.setattr(os, "replace", real_replace)
    run = Path(cfg.out)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.pt", "timings.json"]
    assert torch_load(run / "checkpoint.pt")["epoch"] == 1

    # temporaries of a killed write are removed when the folder is next claimed
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    search(cfg, resume=True)
    assert not list(run.glob(".*.tmp"))


def test_a_folder_claimed_by_another_process_is_refused(tiny_search, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NasError, match="another process is writing this search folder") as exc:
            search(scfg(tiny_search))
        one_line(exc.value)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------------------ 5-7. wrong results
def test_a_flipped_bit_in_a_checkpoint_is_found(tiny_search, tmp_path):
    cfg = scfg(tiny_search, epochs=2)

    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, callback=stop)
    path = Path(cfg.out) / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(NasError, match="checkpoint.pt: checksum mismatch") as exc:
        search(cfg, resume=True)
    one_line(exc.value)


def test_resuming_on_other_data_is_refused(tiny_search, tmp_path):
    from conftest import make_image_folder

    a = make_image_folder(tmp_path / "a", per_class=(8, 3), size=8, seed=0)
    b = make_image_folder(tmp_path / "b", per_class=(8, 3), size=8, seed=1)
    cfg = scfg(tiny_search, dataset="imagefolder", data=str(a), epochs=2, batch_size=4)

    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, callback=stop)
    other = scfg(tiny_search, dataset="imagefolder", data=str(b), epochs=2, batch_size=4)
    with pytest.raises(NasError, match="cannot resume, the data changed") as exc:
        search(other, resume=True)
    one_line(exc.value)
    assert search(cfg, resume=True)["dataset"]["train_images"] == 24


@pytest.mark.parametrize("weights", [[[math.nan] * 5] * 6, [[0.2] * 5] * 5, [["a"] * 5] * 6, [[0.9, 0.9, 0, 0, 0]] * 6])
def test_select_refuses_a_result_with_bad_weights(tiny_search, tmp_path, weights):
    search(scfg(tiny_search, epochs=1))
    path = tmp_path / "run" / "result.json"
    res = json.loads(path.read_text())
    res["weights"] = weights
    path.write_text(json.dumps(res))  # json writes NaN as the non-standard NaN token
    with pytest.raises(NasError, match="result.json: 'weights'") as exc:
        select(build_config("select", overrides=dict(run=str(tmp_path / "run"))))
    one_line(exc.value)


def test_select_refuses_nan_in_the_history(tiny_search, tmp_path):
    search(scfg(tiny_search, epochs=1))
    path = tmp_path / "run" / "result.json"
    res = json.loads(path.read_text())
    res["history"][0]["weights"][2][1] = math.nan
    path.write_text(json.dumps(res))
    with pytest.raises(NasError, match="history: column 'weight_(sum_error|min)'"):
        select(build_config("select", overrides=dict(run=str(tmp_path / "run"))))
