"""Seeded fuzz of the inputs that used to end in a traceback, a hang or nonsense: deep nesting and
YAML tags in `--set`, path components over 255 bytes, special files as data, the size flags of
`nas info`, and settings that cannot mean anything.  Each is refused with one line (exit code 2)
before any work, or accepted with a sane value."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from nas import config as config_mod
from nas.cli import main
from nas.utils import NasError

G = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(autouse=True)
def _no_tracking_and_a_deadline(monkeypatch):
    monkeypatch.setenv("NAS_MLFLOW", "0")
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("hang")))
    yield
    signal.alarm(0)


def _refused(argv: list[str], capsys) -> str:
    """Run `nas ARGV`; it must exit 2 with one line on stderr, which is returned."""
    signal.alarm(30)
    rc = main(argv)
    signal.alarm(0)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(f"nas {argv[0]}: error: "), (argv, rc, err)
    assert "Traceback" not in err
    return err


def test_set_values_are_read_as_config_files_are(capsys):
    rng = random.Random(20261202)
    refused = accepted = 0
    tags = ["!!int", "!!float", "!!bool", "!!str", "!!binary", "!!timestamp", "!!null", "!!python/object:os.system",
            "!!set", "!!omap", "!!map", "!!seq"]
    texts = ["3.5", "x", "", "1", "-0", "2026-13-45", "[1, 2]", "{a: 1}", "!!", "0x1F", "1e400", "AAAA", "1:30"]
    for _ in range(150):
        kind = rng.random()
        if kind < 0.3:
            depth = rng.choice([60, 300, 1500, 3000])
            value = rng.choice("[{") * depth
        elif kind < 0.7:
            value = f"{rng.choice(tags)} {rng.choice(texts)}"
        elif kind < 0.85:
            value = f"{rng.randint(0, 99)}:{rng.randint(0, 59)}" + ("" if rng.random() < 0.5 else ".5")
        else:
            value = rng.choice(texts) + "\n" + rng.choice(texts)
        key = rng.choice(["method", "w_lr", "epochs", "hessian_every", "seed", "flip"])
        try:
            cfg = config_mod.build_config("search", sets=[f"{key}={value}"])
        except NasError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
            refused += 1
            continue
        accepted += 1
        assert getattr(cfg, key) is not None or key == "flip"
    assert refused > 120, (refused, accepted)
    # base-60 numbers stay text (YAML 1.1 would read 1:30 as 90); 1e-3 is a number (YAML 1.2)
    with pytest.raises(NasError, match=r"key 'hessian_every' expects int, got '1:30'"):
        config_mod.build_config("search", sets=["hessian_every=1:30"])
    assert config_mod.build_config("search", sets=["w_lr=1e-3"]).w_lr == 0.001


def test_path_components_over_255_bytes_are_one_line(tmp_path, capsys):
    long = str(tmp_path / ("a" * 300))
    cases = [
        ["search", "--out", long, "--epochs", "1"],
        ["search", "--config", long + ".yaml"],
        ["prepare", "--dataset", "cifar10", "--data", long],
        ["prepare", "--set", f"cache_dir={long}"],
        ["retrain", "--selection", long, "--epochs", "1"],
        ["select", "--run", long],
        ["lookup", "--genotype", G, "--table", long],
        ["grid", "--protocol", long + ".yaml"],
        ["info", "--genotype", G, "--config", long] if False else ["evaluate", "--search", long, "--selection", long,
                                                                     "--retrain", long, "--out", long],
    ]
    for argv in cases:
        err = _refused(argv, capsys)
        assert "Traceback" not in err


def test_special_files_are_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for data in ("/dev/zero", str(fifo)):
        for argv in (["prepare", "--dataset", "cifar10", "--data", data],
                     ["prepare", "--dataset", "imagefolder", "--data", data],
                     ["search", "--dataset", "prepared", "--data", data, "--epochs", "1", "--out", str(tmp_path / "s")]):
            assert "not a regular file or folder" in _refused(argv, capsys)


def test_info_sizes_are_bounded_and_never_allocate(capsys):
    rng = random.Random(7)
    for _ in range(25):
        flag = rng.choice(["--channels", "--cells", "--num-classes", "--in-channels", "--resolution"])
        value = rng.choice([-(2**31), -1, 0, 1, 2, 3, 7, 16, 64, 100_000, 10**9])
        signal.alarm(120)  # a guard against a hang, not a timing
        rc = main(["info", "--genotype", G, flag, str(value)])
        signal.alarm(0)
        captured = capsys.readouterr()
        if rc == 0:  # a sane count, computed on shapes only
            assert 1 <= value <= 100_000 and "params:" in captured.out
        else:
            assert rc == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
            assert value < 1 or value > 1000 or flag == "--resolution", (flag, value, captured.err)


def _refusal(sets: list[str]) -> str:
    """The message of the error a search config built from ``sets`` is refused with."""
    with pytest.raises(NasError) as exc:
        config_mod.build_config("search", sets=sets)
    return str(exc.value)


@pytest.mark.parametrize("sets,message", [
    (["space=s2", "method=drnas", "progressive=true", "progressive_keep=3"], "'progressive_keep' must be <= the 2 candidate ops of an edge"),
    (["arch_warmup=5", "epochs=5"], "'arch_warmup' must be < epochs (5)"),
    (["keep_every=9", "epochs=5"], "'keep_every' must be <= epochs (5)"),
    (["tau_min=5", "tau_max=1"], "'tau_min' must be <= tau_max"),
])
def test_settings_that_cannot_mean_anything_are_refused(sets, message):
    assert message in _refusal(sets)


def test_select_and_retrain_say_what_is_in_the_folder(tmp_path, tiny_search, capsys):
    from nas.search import search

    cfg = config_mod.build_config("search", overrides=tiny_search(epochs=1))
    search(cfg)
    capsys.readouterr()  # the search's own epoch lines
    run = cfg.out
    err = _refused(["retrain", "--genotype", G, "--epochs", "1", "--out", run], capsys)
    assert f"{run}: holds a search run" in err and "not a retrain" in err
    err = _refused(["select", "--method", "pt", "--run", run, "--out", run], capsys)
    assert err.endswith(f"select: out {run} holds a search run (result.json); give the pt selection a folder of its "
                        "own (or pass --force to write there all the same)"), err
    # nor into a retrain's folder, whatever the method: nothing is written there
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "result.json").write_text(json.dumps({"genotype": G, "test_acc": 0.5, "test_loss": 1.0, "config": {}}))
    for method in ("magnitude", "pt"):
        err = _refused(["select", "--method", method, "--run", run, "--out", str(rt)], capsys)
        assert err.endswith(f"select: out {rt} holds a retrain run (result.json); give the {method} selection a "
                            "folder of its own (or pass --force to write there all the same)"), err
    assert sorted(p.name for p in rt.iterdir()) == ["result.json"]
    # a selection of another method is not replaced without --force; an evaluation never writes into a run
    sel = tmp_path / "sel"
    sel.mkdir()
    (sel / "selection.json").write_text(json.dumps({"space": "nb201", "selection": "pt", "genotype": G}))
    before = (sel / "selection.json").read_bytes()
    err = _refused(["select", "--run", run, "--out", str(sel)], capsys)
    assert err.endswith(f"{sel}/selection.json: holds a pt selection, not a magnitude one; choose another "
                        f"folder or pass --force to replace it") and (sel / "selection.json").read_bytes() == before
    for target in (run, str(sel)):
        err = _refused(["evaluate", "--search", run, "--selection", str(sel), "--retrain", run, "--out", target],
                       capsys)
        kind = "search" if target == run else "selection"
        assert err.endswith(f"{target}: holds a {kind} run, not an evaluation; choose another folder"), err
    assert not (Path(run) / "metrics.json").exists() and not (sel / "metrics.json").exists()
    nw = config_mod.build_config("search", overrides={**tiny_search(epochs=1), "method": "naswot",
                                                      "naswot_samples": 3, "out": str(tmp_path / "nw")})
    search(nw)
    capsys.readouterr()
    err = _refused(["select", "--method", "pt", "--run", nw.out, "--out", str(tmp_path / "nw-pt")], capsys)
    assert "a naswot run trains no supernet" in err


def test_a_command_refused_before_work_leaves_no_tracking_run(tmp_path, tiny_search, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NAS_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "result.json").write_text('{"test_acc": 0.5}')  # a retrain's result
    for argv in (["search", "--dataset", "cifar10", "--data", str(tmp_path / "missing.tar.gz"), "--out",
                  str(tmp_path / "s")],
                 ["search", "--epochs", "1", "--out", str(busy)],
                 ["retrain", "--genotype", G, "--dataset", "cifar10", "--out", str(tmp_path / "r")],
                 ["search", "--epochs", "1", "--device", "bogus", "--out", str(tmp_path / "d")],
                 ["retrain", "--genotype", "|bad|", "--out", str(tmp_path / "g")],
                 ["select", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "sel")]):
        _refused(argv, capsys)
    client = MlflowClient(tracking_uri=db)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs == []
    assert not any((tmp_path / name).exists() for name in ("s", "r", "d", "g", "sel"))  # no folder either


@pytest.mark.parametrize("sets,message", [
    (["method=darts", "drnas_lambda=0.1"], "--set drnas_lambda=0.1: key 'drnas_lambda' belongs to drnas; method 'darts'"),
    (["method=gdas", "rs_sigma=0.1"], "key 'rs_sigma' belongs to sdarts-rs; method 'gdas'"),
    (["method=darts", "tau_max=5"], "key 'tau_max' belongs to snas and gdas; method 'darts' does not read it"),
    (["method=sdarts-rs", "adv_steps=3"], "key 'adv_steps' belongs to sdarts-adv; method 'sdarts-rs'"),
])
def test_a_setting_the_method_never_reads_is_refused(sets, message):
    text = _refusal(sets)
    assert message in text and "\n" not in text


def test_a_method_reads_its_own_and_its_seams_settings_and_files_may_declare_all(tmp_path):
    build = lambda *sets: config_mod.build_config("search", sets=list(sets))  # noqa: E731
    assert build("method=drnas", "drnas_lambda=0.1").drnas_lambda == 0.1
    assert build("method=darts", "perturb=rs", "rs_sigma=0.1").rs_sigma == 0.1  # the seam reads it
    assert build("method=sdarts-adv", "eps_start=0.01").eps_start == 0.01
    assert build("method=gdas", "partial_channels=4").partial_channels == 4  # a shared seam
    # a protocol's search section declares every method's strengths for the methods of its grid
    p = tmp_path / "proto.yaml"
    p.write_text("search:\n  method: darts\n  drnas_lambda: 0.002\n  rs_sigma: 0.3\n")
    assert config_mod.build_config("search", p).drnas_lambda == 0.002
    assert config_mod.build_config("search", p, {"drnas_lambda": 0.01}).drnas_lambda == 0.01  # a saved config
    with pytest.raises(NasError, match="--set drnas_lambda=0.01: key 'drnas_lambda' belongs to drnas"):
        config_mod.build_config("search", p, sets=["drnas_lambda=0.01"])


@pytest.mark.parametrize("sets,message", [
    (["method=sdarts-adv", "eps_start=0.5", "adv_epsilon=0.3"], "'eps_start' must be <= adv_epsilon (0.3)"),
    (["method=darts", "perturb=rs", "rs_sigma=0.01"], "'eps_start' must be <= rs_sigma (0.01)"),
    (["method=sdarts-rs", "epochs=1"], "'epochs' must be >= 2 with perturbation rs"),
    (["method=random", "hessian_every=2"], "key 'hessian_every' belongs to the supernet methods (darts, snas"),
    (["method=naswot", "keep_every=2"], "method 'naswot' does not read it"),
    (["rsps_candidates=100000"], "'rsps_candidates' must be in [1, 20000]"),
])
def test_more_settings_that_cannot_mean_anything_are_refused(sets, message):
    text = _refusal(sets)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("sets,message", [
    (["subset=500"], "key 'subset' asks for 500 images per class, but class"),
    (["subset=10", "batch_size=64"], "key 'batch_size' is 64, more than the 50 images of the smaller of the w and α"),
    (["resolution=8", "crop_padding=8"], "key 'crop_padding' is 8, but the images are 8x8"),
])
def test_settings_checked_against_the_data_are_refused_before_training(tmp_path, sets, message):
    from nas.search import search

    cfg = config_mod.build_config("search", overrides={"dataset": "digits", "cache_dir": str(tmp_path / "c"),
                                                       "out": str(tmp_path / "o"), "epochs": 1}, sets=sets)
    with pytest.raises(NasError) as exc:
        search(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "o" / "result.json").exists()


def test_a_holdout_that_leaves_less_than_a_batch_is_refused(tmp_path):
    from nas.train import retrain

    cfg = config_mod.build_config("retrain", overrides={
        "dataset": "digits", "cache_dir": str(tmp_path / "c"), "out": str(tmp_path / "o"), "epochs": 1, "subset": 10,
        "holdout": 0.999, "batch_size": 16, "channels": 4, "cells": 1,
        "genotype": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"})
    with pytest.raises(NasError, match=r"key 'batch_size' is 16, more than the 0 images of the training split \(0 "
                                       r"images after holding out 0.999 for validation\)"):
        retrain(cfg)
