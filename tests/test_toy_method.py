"""A method of one's own: one module with its settings and one registry line, run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TOY = '''"""A toy method: DARTS whose softmax is taken at a temperature of its own."""

from pydantic import Field

from nas.methods import register
from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax
from nas.settings import Settings


class ToySettings(Settings):
    toy_temperature: float = Field(2.0, gt=0.0, le=100.0, description="toy: the temperature α is divided by")


class Tempered(Softmax):
    name = "toy-softmax"

    def __init__(self, temperature):
        self.temperature = temperature

    def expected(self, alpha, mask=None):
        return super().expected(alpha / self.temperature, mask)


def build(cfg, seams):
    return Method(name="toy", mixing=Tempered(cfg.toy_temperature), **seams)


register(MethodSpec(name="toy", build=build, settings=ToySettings))
'''


@pytest.fixture
def nas_with_toy(tmp_path):
    (tmp_path / "toy.py").write_text(TOY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "NAS_MLFLOW": "0"}

    def run(*args: str) -> subprocess.CompletedProcess:
        code = "import sys, toy\nfrom nas.cli import main\nsys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
    return run


@pytest.mark.slow
def test_a_toy_method_brings_its_settings_help_and_runs(nas_with_toy, tmp_path):
    keys = nas_with_toy("search", "--list-keys")
    assert keys.returncode == 0, keys.stderr
    line = next(ln for ln in keys.stdout.splitlines() if "toy_temperature" in ln)
    assert "2.0" in line and "toy: the temperature α is divided by" in line
    out = tmp_path / "run"
    ok = nas_with_toy("search", "--method", "toy", "--set", "toy_temperature=4", "--epochs", "1", "--set", "cells=1",
                      "--set", "channels=4", "--set", "steps_per_epoch=2", "--set", "batch_size=16", "--device", "cpu",
                      "--set", f"cache_dir={tmp_path / 'prep'}", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["method"] == "toy" and res["config"]["toy_temperature"] == 4.0
    # the mixing is the toy's: softmax(α / 4)
    import torch

    alpha = torch.tensor(res["alpha"])
    assert torch.allclose(torch.tensor(res["weights"]), torch.softmax(alpha / 4.0, -1), atol=1e-6)
    # its settings are checked like any other, and belong to it
    bad = nas_with_toy("search", "--method", "toy", "--set", "toy_temperature=0", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "toy_temperature" in bad.stderr.strip().splitlines()[-1]
    other = nas_with_toy("search", "--method", "darts", "--set", "toy_temperature=3", "--out", str(tmp_path / "y"))
    assert other.returncode != 0 and "key 'toy_temperature' belongs to toy" in other.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
