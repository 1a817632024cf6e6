"""The ``nas`` command as a user runs it: exit codes, one-line errors, every stage's output.

A few calls run ``python -m nas.cli`` in a subprocess, as a shell does; the stages run through the
same entry point (``nas.cli.main``) in the test's process, which spares each call the seconds of
importing torch and its optimiser (the DVC tests run every stage as a subprocess)."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import make_cifar_archive

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def nas(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: ``nas ARGS`` through ``nas.cli.main`` in this process, with what it printed."""
    from nas.cli import main

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)
    return run


def test_info_json():
    r = nas("info", "--space", "nb201", "--genotype", BEST, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == 1_073_466 and info["flops"] > 0


def test_lookup_json_and_text(cli):
    r = cli("lookup", "--genotype", BEST, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert round(out["test_accuracy"], 2) == 94.37 and out["rank"] == 1
    r = cli("lookup", "--genotype", BEST, "--dataset", "cifar100")
    assert "cifar100 test accuracy: 73.22" in r.stdout and "oracle 73.51" in r.stdout


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    r = nas("lookup", "--genotype", "|bogus~0|+|x|")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr
    r = nas("search", "--set", "epoch=3", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown key 'epoch'" in r.stderr and r.stderr.strip().count("\n") == 0
    r = nas("search", "--dataset", "cifar10", "--data", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "missing.tar.gz: not found" in r.stderr


def test_search_select_and_prepare_through_the_cli(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("search", "--epochs", "1", "--out", str(out), "--device", "cpu", "--no-progress", "--json",
            "--hessian-every", "1",
            "--set", "channels=4", "--set", "cells=1", "--set", "steps_per_epoch=3",
            "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["nb201"]["genotype"] == summary["genotype"]
    assert f"[{tmp_path.name}/run] epoch 1/1" in r.stderr  # plain lines name their run (shared logs)
    assert "hessian_eig" in json.loads((out / "result.json").read_text())["history"][0]
    r = cli("select", "--run", str(out), "--method", "magnitude", "--out", str(tmp_path / "sel"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["genotype"] == summary["genotype"]
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["genotype"] == summary["genotype"]

    make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=4)
    r = cli("prepare", "--dataset", "cifar10", "--data", str(tmp_path / "cifar-10-python.tar.gz"),
            "--cache-dir", str(tmp_path / "cache"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"] == {"train": 20, "test": 4}


def test_pt_select_strength_and_darts_info_through_the_cli(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("search", "--epochs", "1", "--out", str(out), "--device", "cpu", "--no-progress",
            "--set", "channels=4", "--set", "cells=1", "--set", "steps_per_epoch=2", "--set", "eval_batch_size=64",
            "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    r = cli("select", "--method", "pt", "--run", str(out), "--out", str(tmp_path / "pt"), "--device", "cpu",
            "--set", "pt_tune_epochs=0", "--set", "pt_batches=1", "--json")
    assert r.returncode == 0, r.stderr
    sel = json.loads(r.stdout)
    assert sel["selection"] == "pt" and len(sel["decisions"]) == 6 and "nb201" in sel
    assert "PT edge 6/6" in r.stderr
    r = cli("strength", "--run", str(out), "--out", str(tmp_path / "st"), "--device", "cpu", "--set", "pt_batches=1")
    assert r.returncode == 0, r.stderr
    assert "Spearman" in r.stdout and (tmp_path / "st" / "strength.png").is_file()
    darts_v2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
                "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
                "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
                "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
                "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    r = cli("info", "--space", "darts", "--genotype", darts_v2, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] == 3_349_342


def test_pipeline_stages_from_the_command_line(cli, tmp_path, tiny_params):
    """select -> retrain --selection -> evaluate, as the DVC stages run them."""
    params = str(tiny_params())
    r = cli("search", "--config", params, "--out", str(tmp_path / "s"), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("select", "--config", params, "--run", str(tmp_path / "s"), "--out", str(tmp_path / "sel"))
    assert r.returncode == 0, r.stderr
    geno = json.loads((tmp_path / "sel" / "selection.json").read_text())["genotype"]
    r = cli("retrain", "--config", params, "--selection", str(tmp_path / "sel"), "--out", str(tmp_path / "rt"),
            "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["genotype"] == geno
    r = cli("evaluate", "--search", str(tmp_path / "s"), "--selection", str(tmp_path / "sel"), "--retrain",
            str(tmp_path / "rt"), "--out", str(tmp_path / "ev"), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["genotype"] == geno and m["params"] > 0 and "nb201" in m
    assert (tmp_path / "ev" / "plots" / "alpha.csv").is_file()
    # a retrain of another genotype is refused by evaluate
    r = cli("retrain", "--config", params, "--genotype", BEST, "--out", str(tmp_path / "rt2"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\[{tmp_path.name}/rt2\] epoch 1/\d+  train loss \d\.\d{{3}} acc \d+\.\d%.*  \d+\.\ds$",
                     r.stderr, re.M), r.stderr  # the run, the epoch, its loss and accuracy (%), its seconds
    r = cli("evaluate", "--search", str(tmp_path / "s"), "--selection", str(tmp_path / "sel"), "--retrain",
            str(tmp_path / "rt2"), "--out", str(tmp_path / "ev2"))
    assert r.returncode == 2 and "is not the selected" in r.stderr
    r = cli("retrain", "--selection", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "nope.json: not found" in r.stderr


def test_method_help_lists_exactly_the_registry():
    from nas import config as config_mod
    from nas.cli import METHOD_HELP
    from nas.methods import REGISTRY

    assert METHOD_HELP.split(", ") == list(REGISTRY)
    described = config_mod.SearchConfig.model_fields["method"].description
    assert described.split(" | ") == list(REGISTRY)


def test_every_option_of_every_command_line_says_what_it_does():
    import argparse

    from nas.reference import parsers

    found = parsers()
    assert {"nas", "nas search", "nas cluster", "python -m flows.pipeline", "python -m flows.sweep",
            "python -m flows.benchmark"} <= set(found)
    silent = [f"{name} {(a.option_strings or [a.dest])[0]}" for name, p in found.items() for a in p._actions
              if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert silent == []
