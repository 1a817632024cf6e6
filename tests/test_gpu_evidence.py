"""The GPU evidence script (bench/gpu_evidence.py): its tiny mode runs every stage on the CPU within a
budget, the deadline rule holds, and the report has its format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

sys.path.append(str(REPO / "bench"))  # after the installed packages (bench/ names shadow none)
import gpu_evidence as ev  # noqa: E402

SCRIPT = str(REPO / "bench" / "gpu_evidence.py")


def _calibration_file(tmp_path):
    doc = {"retrain": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "resolution": 8, "channels": 4,
                       "cells": 3, "epochs": 1, "subset": 4, "batch_size": 32, "eval_batch_size": 256,
                       "auxiliary_weight": 0.0},
           "calibration": {"spaces": ["s4"], "seeds": [1, 2], "candidates": [{"name": "tiny"}]}}
    p = tmp_path / "cal.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.slow
def test_the_tiny_mode_runs_every_stage_within_its_budget_and_reports_it(tmp_path):
    cal, out = _calibration_file(tmp_path), tmp_path / "report"
    # a budget that the tiny stages fit in on a loaded machine too (180 s left the concurrent stage's
    # 20 % share, 36 s, too short once under the whole suite): they end when their work is done
    cmd = [sys.executable, SCRIPT, "--tiny", "--budget", "360", "--out", str(out), "--device", "cpu",
           "--calibration-protocol", str(cal), "--calibration-candidates", "tiny", "--calibration-workers", "1",
           "--calibration-estimate", "5", "--calibration-report", str(tmp_path / "cal-report")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (md,) = out.glob("gpu-evidence-*-tiny.md")
    report = json.loads(md.with_suffix(".json").read_text())
    assert md.read_text() == ev.render(report)  # the Markdown is the JSON's numbers
    assert report["format"] == ev.FORMAT and report["plan"] == "tiny" and report["cuda"] == "none"
    assert report["torch"] and len(report["commit"].split()[0]) == 12
    assert list(report["stages"]) == list(ev.STAGES)
    stages = report["stages"]
    assert all(s["status"] == "done" for s in stages.values()), {k: s["notes"] for k, s in stages.items()}
    # 1: the reference first, then the project's settings, each beside its discrete network
    sup = stages["supernet"]["rows"]
    assert [(r["impl"], r["setting"]) for r in sup][:2] == [("xautodl", "fp32"), ("project", "fp32")]
    assert all(r["step_ms"] > 0 for r in sup) and all(r["discrete_ms"] > 0 for r in sup[1:])
    # 2: the paper-protocol variants, in order; those not started are named in a note
    names = [r["variant"] for r in stages["searches"]["rows"]]
    assert names and names == [n for n, _ in ev.VARIANTS][:len(names)]
    assert all(any(n in note for note in stages["searches"]["notes"]) for n, _ in ev.VARIANTS if n not in names)
    for r in stages["searches"]["rows"]:
        assert 0 < r["timed_steps"] <= r["steps_per_epoch"]
        assert r["s_per_epoch"] == pytest.approx(r["step_ms"] * r["steps_per_epoch"] / 1000)
        assert r["gpu_h_50_epochs"] == pytest.approx(r["s_per_epoch"] * 50 / 3600)
    assert stages["searches"]["rows"][0]["paper_s_50_epochs"] == 10890
    # 3: one run, then more side by side; no MPS on a CPU
    conc = stages["concurrent"]["rows"]
    assert conc[0]["runs"] == 1 and not conc[0]["mps"] and all(r["steps_per_s"] > 0 for r in conc)
    assert "CUDA MPS: not available on this device" in stages["concurrent"]["notes"]
    # 4: the calibration share wrote its own report
    (row,) = stages["calibration"]["rows"]
    assert row["exit"] in (0, 1) and (tmp_path / "cal-report" / "runs.csv").is_file(), row
    text = md.read_text()
    for title in ev.STAGE_TITLES.values():
        assert f"## {title}\n\nStatus: **done**" in text


@pytest.mark.slow
def test_no_stage_starts_that_cannot_end_before_the_budget(tmp_path):
    """A budget too small for any measurement: every stage says so, the report is still written,
    and the script exits non-zero because nothing was measured."""
    cmd = [sys.executable, SCRIPT, "--tiny", "--budget", "1", "--out", str(tmp_path), "--device", "cpu",
           "--stages", "supernet,searches,concurrent"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    for name, stage in report["stages"].items():
        assert stage["rows"] == [] and stage["status"] in ("skipped", "done", "stopped"), name
        assert any("not started" in n or "deadline" in n for n in stage["notes"]), (name, stage["notes"])


def _report(**stages):
    return {"format": 1, "plan": "gpu", "device": "NVIDIA Test 80GB", "commit": "0123456789ab", "torch": "2.11.0",
            "cuda": "13.0", "python": "3.12.3", "budget_s": 540.0, "setup_s": 42.5, "started": "2026-12-07 09:00 UTC",
            "stages": {k: {"status": "done", "seconds": 10.0, "rows": v, "notes": []} for k, v in stages.items()}}


def test_the_report_format_gives_each_ratio_against_its_baseline():
    sup = [{"impl": "xautodl", "setting": "fp32", "step_ms": 40.0, "peak_mb": 1000.0, "warmup_s": 1.0},
           {"impl": "project", "setting": "fp32", "step_ms": 20.0, "peak_mb": 500.0, "warmup_s": 1.0,
            "discrete_ms": 5.0},
           {"impl": "project", "setting": "bf16+cudagraphs", "step_ms": 8.0, "peak_mb": 300.0, "warmup_s": 30.0}]
    search = [{"variant": "darts-1st", "space": "nb201", "channels": 16, "cells": 5, "batch": 64, "timed_steps": 40,
               "steps_per_epoch": 391, "step_ms": 50.0, "s_per_epoch": 19.55, "gpu_h_50_epochs": 0.2715,
               "paper_s_50_epochs": 10890, "peak_mb": 2048.0}]
    conc = [{"mps": False, "runs": 1, "steps_per_s": 10.0, "per_run_steps_per_s": 10.0},
            {"mps": True, "runs": 4, "steps_per_s": 32.0, "per_run_steps_per_s": 8.0}]
    cal = [{"candidates": "i50k-e20-plain", "spaces": "s1", "report": "data/results/x", "exit": 1, "minutes": 8.25}]
    text = ev.render(_report(supernet=sup, searches=search, concurrent=conc, calibration=cal))
    assert text.startswith("# GPU evidence: NVIDIA Test 80GB\n\nCommit 0123456789ab, torch 2.11.0, CUDA 13.0")
    assert "set-up 42.5 s (timed by bench/gpu.sh)" in text
    assert "| xautodl | fp32 | 40.0 | 1.00 | - | - | - | 1000 | 1.0 |" in text
    assert "| project | fp32 | 20.0 | 0.50 | 1.00 | 5.0 | 4.00 | 500 | 1.0 |" in text
    assert "| project | bf16+cudagraphs | 8.0 | 0.20 | 0.40 | - | - | 300 | 30.0 |" in text
    assert "| darts-1st | nb201 | 16 | 5 | 64 | 40 / 391 | 50.0 | 19.6 | 0.27 | 3.02 | 2048 |" in text
    assert "| 4 | yes | 32.00 | 3.20 | 8.00 |" in text
    assert "| i50k-e20-plain | s1 | `data/results/x` | 1 | 8.2 |" in text


def test_a_stage_file_that_is_not_rows_is_ignored_with_a_note(tmp_path):
    p = tmp_path / "stage.json"
    for junk in ("[1, 2]", '{"rows": [1], "notes": []}', '{"rows": [], "notes": [3]}'):
        p.write_text(junk)
        assert ev.read_partial(p) == {"rows": [], "notes": ["stage.json: not a stage's rows; ignored"]}
    p.write_bytes(b"\xff\xfe")
    assert ev.read_partial(p) == {"rows": [], "notes": []}
    p.write_text('{"rows": [{"a": 1}], "notes": ["n"]}')
    assert ev.read_partial(p) == {"rows": [{"a": 1}], "notes": ["n"]}


def test_the_clock_starts_only_what_its_guess_says_will_end_in_time():
    import time

    clock = ev.Clock(time.time() + 3.0, ev.TINY)
    assert clock.fits("eager") and not clock.fits("compiled")  # guesses 2 s and 30 s
    with clock.timed("compiled"):
        time.sleep(0.05)
    assert 0.05 <= clock.guess["compiled"] < 1.0 and clock.fits("compiled")  # what it measured, from now on
    assert not ev.Clock(time.time() - 1, ev.TINY).fits("eager")


BAD_ARGS = [
    (["--stages", "supernet,bogus"], "--stages: unknown stage 'bogus'"),
    (["--budget", "0"], "--budget: expected seconds in (0, 86400], got 0.0"),
    (["--budget", "nan"], "--budget: expected seconds in (0, 86400], got nan"),
]
if not __import__("torch").cuda.is_available():
    BAD_ARGS.append((["--device", "cuda"], "--device cuda: torch sees no CUDA device"))


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS)
def test_bad_arguments_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ev.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1]


def test_the_children_get_the_settings_without_the_parent_only_flags():
    assert ev._child_argv(["--tiny", "--device", "cpu", "--cache=/x", "--run-stage", "supernet", "--budget", "9"]) == [
        "--tiny", "--budget", "9"]
