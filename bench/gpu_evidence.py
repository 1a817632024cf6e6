"""GPU evidence in one call: the measurements a GPU machine is lent for, in stages, within a budget.

    bash bench/gpu.sh --data PATH/cifar10.tar.gz                  # set-up (timed), then this script
    python bench/gpu_evidence.py --data PATH/cifar10.tar.gz --budget 540
    python bench/gpu_evidence.py --tiny --budget 60 --out /tmp/ev # the same code on a CPU, in seconds

The stages, in order of value:

1. ``supernet``: the NAS-Bench-201 search step (one α step, one w step) of the project's supernet
   against the NAS-Bench-201 authors' (xautodl's ``TinyNetworkDarts``) at the reference size (C=16,
   N=5, batch 64, 32x32), in fp32 and bf16, eager, compiled and as CUDA graphs (torch.compile's
   ``reduce-overhead``), with the discrete network's step beside it and the peak memory;
2. ``searches``: seconds per epoch and peak memory of paper-protocol searches
   (``params/paper.yaml``: the full CIFAR-10, C=16, N=5, batch 64) for DARTS first and second order,
   GDAS, DrNAS and PC-DARTS, and of a DARTS-space search (C=16, 8 cells, batch 64), each timed over
   as many steps of its first epoch as its time slice allows; 50 epochs extrapolated in GPU-hours
   beside the NAS-Bench-201 paper's search times;
3. ``concurrent``: throughput of 1, 4 and 8 proxy searches side by side on one GPU, with and
   without CUDA MPS;
4. ``calibration``: with the time left, a share of the S1-S4 calibration (``nas calibrate
   --candidates ... --spaces ...``), written as the calibration's own report.

The script starts no stage and no measurement within a stage that it cannot finish before the
budget runs out (each stage runs in a child process that is stopped at the deadline all the same),
and rewrites its report after every stage: ``gpu-evidence-<device>.md`` and ``.json`` under
``--out`` (default ``bench/results``), with the commit, torch, CUDA and the set-up time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.append(str(HERE))  # after the installed packages: bench/ module names never shadow them

FORMAT = 1
STAGES = ("supernet", "searches", "concurrent", "calibration")
# the most of the budget a stage may take (of what is left, the later stages get the rest)
SHARE = {"supernet": 0.37, "searches": 0.32, "concurrent": 0.2, "calibration": 1.0}
# The NAS-Bench-201 paper's search times (seconds, its results table; one GPU, 50 epochs)
PAPER_SEARCH_S = {"darts-1st": 10890, "darts-2nd": 29902, "gdas": 28926}
VARIANTS = (
    ("darts-1st", ("method=darts", "order=1")),
    ("darts-2nd", ("method=darts", "order=2")),
    ("gdas", ("method=gdas",)),
    ("drnas", ("method=drnas",)),
    ("pc-darts", ("method=pc-darts",)),
    ("darts-space-1st", ("space=darts", "cells=8", "method=darts", "order=1")),
)


@dataclass(frozen=True)
class Plan:
    """What each stage measures: the GPU plan, or the tiny one that runs the same code on a CPU."""

    name: str
    supernet: dict[str, int]
    settings: tuple[str, ...]
    steps: int  # steps per timed chunk
    repeats: int  # timed chunks
    search_sets: tuple[str, ...]  # on top of params/paper.yaml and each variant's settings
    search_slice_s: float  # time slice of one paper-protocol search
    proxy_sets: tuple[str, ...]  # on top of params/cpu-proxy-c16.yaml
    counts: tuple[int, ...]
    # first guesses of a measurement's seconds (replaced by what the same kind measured)
    guess_s: dict[str, float] = field(default_factory=dict)


GPU = Plan("gpu", dict(C=16, N=5, batch=64, size=32),
           ("fp32", "bf16", "fp32+cudagraphs", "bf16+cudagraphs", "fp32+compile", "bf16+compile"),
           steps=20, repeats=5, search_sets=("epochs=1",), search_slice_s=20.0,
           proxy_sets=("epochs=1",), counts=(1, 4, 8),
           guess_s={"eager": 15, "compiled": 90, "search": 45, "concurrent": 40})
TINY = Plan("tiny", dict(C=4, N=1, batch=8, size=8), ("fp32", "bf16"),
            steps=1, repeats=2, search_sets=("epochs=1", "dataset=digits", "subset=20", "resolution=8",
                                             "channels=4", "cells=1", "batch_size=16"),
            search_slice_s=1.0, proxy_sets=("epochs=1", "dataset=digits", "subset=20", "resolution=8",
                                            "channels=4", "cells=1", "batch_size=16"),
            counts=(1, 2), guess_s={"eager": 2, "compiled": 30, "search": 4, "concurrent": 6})


# ------------------------------------------------------------------------------------------ clock
class Clock:
    """The deadline, and the rule: start nothing that is not expected to end before it."""

    def __init__(self, deadline: float, plan: Plan):
        self.deadline = deadline
        self.guess = dict(plan.guess_s)

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, kind: str) -> bool:
        return self.guess[kind] <= self.left()

    @contextlib.contextmanager
    def timed(self, kind: str):
        t0 = time.time()
        yield
        self.guess[kind] = time.time() - t0  # the next of its kind is expected to take as long


class Partial:
    """A stage's rows and notes, written (temporary file, then rename) after every measurement."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"rows": [], "notes": []}

    def add(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self._write()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self._write()

    def _write(self) -> None:
        write_atomic(self.path, json.dumps(self.data))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_partial(path: Path) -> dict[str, Any]:
    """A child's rows, validated: a mapping of a list of mappings (rows) and a list of strings (notes)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"rows": [], "notes": []}
    ok = (isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("notes"), list)
          and all(isinstance(r, dict) for r in data["rows"]) and all(isinstance(n, str) for n in data["notes"]))
    return data if ok else {"rows": [], "notes": [f"{path.name}: not a stage's rows; ignored"]}


# --------------------------------------------------------------------------------------- devices
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> float:
    """Start a peak-memory measurement; returns the baseline (bytes)."""
    import torch
    from _common import reset_peak_rss

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return float(torch.cuda.memory_allocated())
    return float(reset_peak_rss() or 0)


def peak_mb(device: str, base: float) -> float:
    """Peak memory since ``reset_peak`` above its baseline, in MB (CUDA: allocated; CPU: resident)."""
    import torch
    from _common import vm

    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else vm("VmHWM")
    return max(0.0, (peak - base) / 2**20)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip()[:12] + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


# ----------------------------------------------------------------------------- stage 1: supernet
def measure_step(step, plan: Plan, device: str) -> tuple[float, float, float]:
    """(warm-up s, median ms per step, peak MB of two steps) of one step function."""
    from supernet import time_steps

    t0 = time.perf_counter()
    time_steps(step, 2, device)  # warm-up, and compilation where there is one
    warm = time.perf_counter() - t0
    times = [time_steps(step, plan.steps, device) for _ in range(plan.repeats)]
    base = reset_peak(device)
    time_steps(step, 2, device)
    return warm, 1000 * statistics.median(times), peak_mb(device, base)


def stage_supernet(args: argparse.Namespace, plan: Plan, clock: Clock, out: Partial) -> None:
    import supernet as sn

    units = [("xautodl", "fp32")] + [("project", s) for s in plan.settings]
    try:
        import xautodl  # noqa: F401
    except ImportError:
        units = units[1:]
        out.note("xautodl is not installed (pip install xautodl --no-deps): no reference rows")
    for impl, setting in units:
        if "cudagraphs" in setting and not args.device.startswith("cuda"):
            continue  # CUDA graphs need CUDA
        kind = "eager" if "+" not in setting else "compiled"
        if not clock.fits(kind):
            out.note(f"{impl} {setting}: not started, about {clock.guess[kind]:.0f} s needed, {clock.left():.0f} s left")
            continue
        with clock.timed(kind):
            warm, ms, mb = measure_step(sn.build(impl, plan.supernet, args.device, setting)[0], plan, args.device)
            row = {"impl": impl, "setting": setting, "step_ms": ms, "peak_mb": mb, "warmup_s": warm}
            if impl == "project" and "+" not in setting:  # compiled: the supernet's compilation only
                row["discrete_ms"] = measure_step(sn.build("discrete", plan.supernet, args.device, setting)[0],
                                                  plan, args.device)[1]
        out.add(row)


# ----------------------------------------------------------------------------- stage 2: searches
def search_config(args: argparse.Namespace, params: str, sets: list[str], work: Path):
    from nas.config import build_config

    return build_config("search", REPO / "params" / params,
                        {"data": args.data, "device": args.device, "out": str(work / "run"), "progress": False,
                         "cache_dir": str(args.cache)}, sets)


def time_search(cfg, chunk: int, slice_s: float, device: str) -> dict[str, Any]:
    """Steps of a search's first epoch, in chunks, until its time slice or the epoch is spent; the
    peak memory is the whole search's (CUDA: allocated, data and supernet included; CPU: resident)."""
    from nas.search import Search

    t0 = time.perf_counter()
    s = Search(cfg)
    bundle, w_stream, a_stream = s.streams()
    st = s.build_state(bundle)
    data_s = time.perf_counter() - t0
    per_epoch = s.steps_per_epoch(w_stream)
    chunk = max(1, min(chunk, per_epoch))
    s.run_epoch(st, w_stream, a_stream, min(3, per_epoch))  # warm-up
    sync(device)
    reset_peak(device)
    times, done, t_start = [], 0, time.perf_counter()
    while done + chunk <= per_epoch and (not times or time.perf_counter() - t_start < slice_s):
        t1 = time.perf_counter()
        s.run_epoch(st, w_stream, a_stream, chunk)
        sync(device)
        times.append((time.perf_counter() - t1) / chunk)
        done += chunk
    step_s = statistics.median(times)
    return {"steps_per_epoch": per_epoch, "timed_steps": done, "step_ms": 1000 * step_s,
            "s_per_epoch": step_s * per_epoch, "peak_mb": peak_mb(device, 0.0), "setup_s": data_s}


def stage_searches(args: argparse.Namespace, plan: Plan, clock: Clock, out: Partial) -> None:
    if plan is GPU and not args.data:
        out.note("no --data: the paper protocol needs the CIFAR-10 archive or folder")
        return
    for name, sets in VARIANTS:
        if not clock.fits("search"):
            out.note(f"{name}: not started, about {clock.guess['search']:.0f} s needed, {clock.left():.0f} s left")
            continue
        with clock.timed("search"), tempfile.TemporaryDirectory() as work:
            cfg = search_config(args, "paper.yaml", [*sets, *plan.search_sets], Path(work))
            row = {"variant": name, "space": cfg.space, "channels": cfg.channels, "cells": cfg.cells,
                   "batch": cfg.batch_size, **time_search(cfg, plan.steps, plan.search_slice_s, args.device)}
        row["gpu_h_50_epochs"] = row["s_per_epoch"] * 50 / 3600
        if name in PAPER_SEARCH_S:
            row["paper_s_50_epochs"] = PAPER_SEARCH_S[name]
        out.add(row)


# --------------------------------------------------------------------------- stage 3: concurrent
def proxy_worker(args: argparse.Namespace, plan: Plan) -> None:
    """One of several proxy searches side by side: set up, say so, wait for the go, time its steps.
    Each run has one CPU thread (launches and the data on the device need no more)."""
    import torch

    from nas.search import Search

    torch.set_num_threads(1)
    work = Path(args.proxy_worker)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = search_config(args, "cpu-proxy-c16.yaml", list(plan.proxy_sets), Path(tmp))
        s = Search(cfg)
        bundle, w_stream, a_stream = s.streams()
        st = s.build_state(bundle)
        steps = min(plan.steps * plan.repeats, s.steps_per_epoch(w_stream))
        s.run_epoch(st, w_stream, a_stream, min(3, steps))  # warm-up
        sync(args.device)
        (work / f"ready-{os.getpid()}").write_text("")
        while not (work / "go").exists():
            if time.time() > args.deadline:
                return
            time.sleep(0.02)
        t0 = time.time()
        s.run_epoch(st, w_stream, a_stream, steps)
        sync(args.device)
        write_atomic(work / f"done-{os.getpid()}.json", json.dumps({"start": t0, "end": time.time(), "steps": steps}))


def run_side_by_side(args: argparse.Namespace, n: int, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, __file__, *args.argv, "--proxy-worker", work, "--deadline", str(args.deadline)]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(n)]
        try:
            while len(list(Path(work).glob("ready-*"))) < n:
                if any(p.poll() not in (None, 0) for p in procs) or time.time() > args.deadline:
                    raise RuntimeError(f"{n} side by side: a run failed to start ({_first_error(procs)})")
                time.sleep(0.05)
            Path(work, "go").write_text("")
            for p in procs:
                p.wait(timeout=max(1.0, args.deadline - time.time()))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        done = [json.loads(f.read_text()) for f in Path(work).glob("done-*.json")]
    if len(done) != n:
        raise RuntimeError(f"{n} side by side: {n - len(done)} runs did not finish ({_first_error(procs)})")
    span = max(d["end"] for d in done) - min(d["start"] for d in done)
    return {"runs": n, "steps_per_s": sum(d["steps"] for d in done) / span,
            "per_run_steps_per_s": statistics.median(d["steps"] / (d["end"] - d["start"]) for d in done)}


def _first_error(procs: list[subprocess.Popen]) -> str:
    for p in procs:
        if p.poll() not in (None, 0) and p.stderr is not None:
            lines = p.stderr.read().strip().splitlines()
            return lines[-1][:200] if lines else f"exit {p.returncode}"
    return "no error printed"


@contextlib.contextmanager
def mps(on: bool, tmp: Path):
    """The environment of the runs: with a CUDA MPS daemon of its own when ``on``."""
    env = dict(os.environ)
    if not on:
        yield env
        return
    env.update(CUDA_MPS_PIPE_DIRECTORY=str(tmp / "pipe"), CUDA_MPS_LOG_DIRECTORY=str(tmp / "log"))
    for d in ("pipe", "log"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=30)
    try:
        yield env
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=30)


def stage_concurrent(args: argparse.Namespace, plan: Plan, clock: Clock, out: Partial) -> None:
    if plan is GPU and not args.data:
        out.note("no --data: the proxy searches need the CIFAR-10 archive or folder")
        return
    modes = [False]
    if args.device.startswith("cuda") and shutil.which("nvidia-cuda-mps-control"):
        modes.append(True)
    else:
        out.note("CUDA MPS: not available on this device")
    for on in modes:
        with tempfile.TemporaryDirectory() as tmp, mps(on, Path(tmp)) as env:
            for n in plan.counts:
                if not clock.fits("concurrent"):
                    out.note(f"{n} runs{' under MPS' if on else ''}: not started, {clock.left():.0f} s left")
                    continue
                with clock.timed("concurrent"):
                    row = {"mps": on, **run_side_by_side(args, n, env)}
                out.add(row)


# -------------------------------------------------------------------------- stage 4: calibration
def stage_calibration(args: argparse.Namespace, plan: Plan, clock: Clock, out: Partial) -> None:
    if not args.calibration_candidates:
        out.note("no --calibration-candidates: no calibration share to run")
        return
    if args.calibration_estimate > clock.left():
        out.note(f"not started: about {args.calibration_estimate:.0f} s needed, {clock.left():.0f} s left")
        return
    report = args.calibration_report or str(REPO / "data" / "results" / f"s-calibration-{slug(device_name(args.device))}")
    cmd = [sys.executable, "-m", "nas.cli", "calibrate", "--protocol", args.calibration_protocol, "--report", report,
           "--candidates", args.calibration_candidates, "--workers", str(args.calibration_workers), "--threads", "1",
           "--all", "--json"]
    for flag, value in (("--spaces", args.calibration_spaces), ("--data", args.data)):
        if value:
            cmd += [flag, value]
    with tempfile.TemporaryDirectory() as runs:
        t0 = time.time()
        proc = subprocess.run([*cmd, "--out", runs], cwd=REPO, capture_output=True, text=True,
                              timeout=max(1.0, clock.left()), env={**os.environ, "NAS_MLFLOW": "0"})
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    out.add({"candidates": args.calibration_candidates, "spaces": args.calibration_spaces or "all",
             "report": os.path.relpath(report, REPO), "exit": proc.returncode, "minutes": (time.time() - t0) / 60,
             "last_line": tail})


RUNNERS = {"supernet": stage_supernet, "searches": stage_searches, "concurrent": stage_concurrent,
           "calibration": stage_calibration}


# ----------------------------------------------------------------------------------- the parent
def run_stage(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One stage in a child process, stopped at the deadline; its rows survive the stop."""
    deadline = min(args.deadline, time.time() + SHARE[name] * args.budget)
    left = deadline - time.time()
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "stage.json"
        cmd = [sys.executable, __file__, *args.argv, "--run-stage", name, "--deadline", str(deadline),
               "--partial", str(partial)]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, left))
            status = "done" if proc.returncode == 0 else "failed"
            why = "" if proc.returncode == 0 else ((proc.stderr.strip().splitlines() or ["no error printed"])[-1])[:300]
        except subprocess.TimeoutExpired:
            status, why = "stopped", "stopped at the deadline"
        data = read_partial(partial)
    notes = data["notes"] + ([why] if why else [])
    return {"status": status, "seconds": round(time.time() - t0, 1), "rows": data["rows"], "notes": notes}


def header(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    import torch

    return {"format": FORMAT, "plan": plan.name, "device": device_name(args.device), "commit": commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "python": platform.python_version(), "budget_s": args.budget, "setup_s": args.setup_seconds,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stages": {}}


def report_paths(args: argparse.Namespace, report: dict[str, Any]) -> tuple[Path, Path]:
    stem = f"gpu-evidence-{slug(report['device'])}" + ("-tiny" if report["plan"] == "tiny" else "")
    return Path(args.out) / f"{stem}.md", Path(args.out) / f"{stem}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = TINY if args.tiny else GPU
    if args.proxy_worker:
        proxy_worker(args, plan)
        return 0
    if args.run_stage:
        RUNNERS[args.run_stage](args, plan, Clock(args.deadline, plan), Partial(Path(args.partial)))
        return 0
    args.deadline = time.time() + args.budget
    report = header(args, plan)
    md, js = report_paths(args, report)
    for name in args.stages:
        left = args.deadline - time.time()
        if left < args.min_stage_s:
            report["stages"][name] = {"status": "skipped", "seconds": 0.0, "rows": [],
                                      "notes": [f"not started: {left:.0f} s of the budget left"]}
        else:
            print(f"[gpu-evidence] {name}: {left:.0f} s of the budget left", flush=True)
            report["stages"][name] = run_stage(args, name)
        write_atomic(js, json.dumps(report, indent=1))
        write_atomic(md, render(report))
    print(f"[gpu-evidence] report: {md}", flush=True)
    return 0 if any(s["rows"] for s in report["stages"].values()) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together (default 540)")
    p.add_argument("--stages", type=lambda s: [x for x in s.split(",") if x], default=list(STAGES),
                   help=f"comma-separated, in this order of value: {', '.join(STAGES)}")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and the embedded digits: the same code in seconds")
    p.add_argument("--device", default=None, help="cuda (default where present) or cpu")
    p.add_argument("--data", help="the CIFAR-10 archive or folder (the paper searches and the calibration)")
    p.add_argument("--cache", default=None, help="where decoded data are kept (default: a temporary folder)")
    p.add_argument("--out", default=str(HERE / "results"), help="report folder (default bench/results)")
    p.add_argument("--setup-seconds", dest="setup_seconds", type=float, default=None,
                   help="the set-up's seconds, for the report (bench/gpu.sh passes it)")
    p.add_argument("--min-stage-s", dest="min_stage_s", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--calibration-protocol", dest="calibration_protocol", default="params/s-calibration.yaml",
                   help="calibration file of stage 4")
    p.add_argument("--calibration-candidates", dest="calibration_candidates",
                   help="stage 4: the candidates to run (nas calibrate --candidates); none = no stage 4")
    p.add_argument("--calibration-spaces", dest="calibration_spaces", help="stage 4: the spaces (nas calibrate --spaces)")
    p.add_argument("--calibration-workers", dest="calibration_workers", type=int, default=6,
                   help="stage 4: runs side by side (default 6)")
    p.add_argument("--calibration-estimate", dest="calibration_estimate", type=float, default=660.0,
                   help="stage 4: its expected seconds; it starts only if they are left (default 660)")
    p.add_argument("--calibration-report", dest="calibration_report",
                   help="stage 4: the report folder (default data/results/s-calibration-<device>)")
    for hidden in ("--run-stage", "--partial", "--proxy-worker"):
        p.add_argument(hidden, dest=hidden[2:].replace("-", "_"), help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return check_args(p, args, argv if argv is not None else sys.argv[1:])


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    import torch

    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"--stages: unknown stage {unknown[0]!r} (expected some of {', '.join(STAGES)})")
    if not 0 < args.budget <= 86400:
        p.error(f"--budget: expected seconds in (0, 86400], got {args.budget}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.cache is None:
        args.cache = os.environ.get("NAS_EVIDENCE_CACHE") or tempfile.mkdtemp(prefix="nas-evidence-")
        os.environ["NAS_EVIDENCE_CACHE"] = args.cache  # the children share the decoded data
    # the children get the same settings (without the parent-only flags)
    args.argv = _child_argv(argv) + ["--device", args.device, "--cache", args.cache]
    return args


def _child_argv(argv: list[str]) -> list[str]:
    keep, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        flag = item.split("=")[0]
        if flag in ("--run-stage", "--partial", "--proxy-worker", "--deadline", "--device", "--cache"):
            skip = "=" not in item
            continue
        keep.append(item)
    return keep


# ------------------------------------------------------------------------------------ the report
def _f(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and v == v else "-"


def render(report: dict[str, Any]) -> str:
    lines = [f"# GPU evidence: {report['device']}", "",
             f"Commit {report['commit']}, torch {report['torch']}, CUDA {report['cuda']}, Python {report['python']}; "
             f"plan `{report['plan']}`, budget {report['budget_s']:.0f} s, started {report['started']}; "
             f"set-up {_f(report['setup_s'])} s ({'timed by bench/gpu.sh' if report['setup_s'] is not None else 'not timed'}).",
             "", "Written by `bench/gpu_evidence.py` after every stage; `.json` beside it holds the same numbers.", ""]
    for name, stage in report["stages"].items():
        lines += [f"## {STAGE_TITLES[name]}", "", f"Status: **{stage['status']}** ({stage['seconds']:.0f} s).", ""]
        if stage["rows"]:
            lines += TABLES[name](stage["rows"]) + [""]
        lines += [f"- {n}" for n in stage["notes"]] + ([""] if stage["notes"] else [])
    return "\n".join(lines)


STAGE_TITLES = {"supernet": "1. Supernet step against xautodl",
                "searches": "2. Paper-protocol searches: seconds per epoch",
                "concurrent": "3. Small searches side by side on one device",
                "calibration": "4. Calibration share"}


def table_supernet(rows: list[dict[str, Any]]) -> list[str]:
    ref = next((r["step_ms"] for r in rows if r["impl"] == "xautodl"), None)
    fp32 = next((r["step_ms"] for r in rows if r["impl"] == "project" and r["setting"] == "fp32"), None)
    out = ["| implementation | setting | step (ms) | x xautodl | x fp32 | discrete (ms) | supernet/discrete "
           "| peak (MB) | warm-up (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        disc = r.get("discrete_ms")
        out.append(f"| {r['impl']} | {r['setting']} | {_f(r['step_ms'])} | {_f(r['step_ms'] / ref if ref else None, 2)} "
                   f"| {_f(r['step_ms'] / fp32 if fp32 and r['impl'] == 'project' else None, 2)} | {_f(disc)} "
                   f"| {_f(r['step_ms'] / disc if disc else None, 2)} | {_f(r['peak_mb'], 0)} | {_f(r['warmup_s'])} |")
    return out


def table_searches(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| search | space | C | cells | batch | timed steps / epoch | step (ms) | s / epoch | 50 epochs (GPU-h) "
           "| paper, 50 epochs (GPU-h) | peak (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = r.get("paper_s_50_epochs")
        out.append(f"| {r['variant']} | {r['space']} | {r['channels']} | {r['cells']} | {r['batch']} "
                   f"| {r['timed_steps']} / {r['steps_per_epoch']} | {_f(r['step_ms'])} | {_f(r['s_per_epoch'])} "
                   f"| {_f(r['gpu_h_50_epochs'], 2)} | {_f(paper / 3600 if paper else None, 2)} | {_f(r['peak_mb'], 0)} |")
    return out


def table_concurrent(rows: list[dict[str, Any]]) -> list[str]:
    one = next((r["steps_per_s"] for r in rows if r["runs"] == 1 and not r["mps"]), None)
    out = ["| runs side by side | MPS | steps/s, all runs | x one run | steps/s, each run |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['runs']} | {'yes' if r['mps'] else 'no'} | {_f(r['steps_per_s'], 2)} "
                   f"| {_f(r['steps_per_s'] / one if one else None, 2)} | {_f(r['per_run_steps_per_s'], 2)} |")
    return out


def table_calibration(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| candidates | spaces | report | exit | minutes |", "|---|---|---|---|---|"]
    out += [f"| {r['candidates']} | {r['spaces']} | `{r['report']}` | {r['exit']} | {_f(r['minutes'])} |" for r in rows]
    return out


TABLES = {"supernet": table_supernet, "searches": table_searches, "concurrent": table_concurrent,
          "calibration": table_calibration}


if __name__ == "__main__":
    sys.exit(main())
