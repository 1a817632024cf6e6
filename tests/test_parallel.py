"""Data-parallel search (nas.parallel): ranks against one process with accumulated micro-batches,
every rank's α the same after every step, identical runs bitwise equal, refusals in one line, a
killed rank restarted from the last checkpoint; with two gloo ranks on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from nas import parallel
from nas.config import build_config
from nas.runs.files import torch_load
from nas.search import Search
from nas.utils import NasError

ENV = {**os.environ, "NAS_MLFLOW": "0", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _search_cmd(out: Path, cache: Path, *extra: str, epochs: int = 2, steps: int = 4) -> list[str]:
    return [sys.executable, "-m", "nas.cli", "search", "--dataset", "digits", "--epochs", str(epochs), "--device", "cpu",
            "--seed", "3", "--out", str(out), "--set", "progress=false", "--set", "channels=4", "--set", "cells=1",
            "--set", "batch_size=32", "--set", f"steps_per_epoch={steps}", "--set", f"cache_dir={cache}", *extra]


def _search_here(out: Path, cache: Path, epochs: int = 2, steps: int = 4, **over) -> dict:
    """The search of ``_search_cmd`` in this process, on one thread (not bit for bit the command's:
    for comparisons that need no equality)."""
    cfg = build_config("search", overrides=dict(dataset="digits", epochs=epochs, device="cpu", seed=3, out=str(out),
                                                progress=False, channels=4, cells=1, batch_size=32,
                                                steps_per_epoch=steps, cache_dir=str(cache), threads=1, **over))
    return Search(cfg).run()


def _said(out: Path) -> list[dict]:
    """What the ranks of tests/dp_searches.py wrote, rank 0's lines first."""
    return [json.loads(line) for r in (0, 1) if (out / f"rank-{r}.jsonl").is_file()
            for line in (out / f"rank-{r}.jsonl").read_text().splitlines()]


def _params(run: Path) -> dict[str, torch.Tensor]:
    ck = torch_load(run / "checkpoint.pt")
    return {k: v for k, v in ck["model"].items() if v.dtype.is_floating_point and "running" not in k}


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_two_micro_batches_and_pt_decides_alike(tmp_path):
    """2 ranks x B/2 (launched by --nproc 2) against 1 process accumulating 2 micro-batches of B/2:
    the same α, mixing weights, w and genotype (two summands: the reduction order cannot differ);
    then PT on that supernet in 2 processes and in 1."""
    cache = tmp_path / "cache"
    ranks = subprocess.run(_search_cmd(tmp_path / "ranks", cache, "--nproc", "2", "--json"), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    one = subprocess.run(_search_cmd(tmp_path / "one", cache, "--set", "accumulate=2"), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / r / "result.json").read_text()) for r in ("ranks", "one"))
    assert a["genotype"] == b["genotype"] == json.loads(ranks.stdout)["genotype"]
    assert a["alpha"] == b["alpha"] and a["weights"] == b["weights"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    pa, pb = _params(tmp_path / "ranks"), _params(tmp_path / "one")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch_load(tmp_path / "ranks" / "checkpoint.pt")["world"] == 2
    # and they differ from the plain one-process search of whole batches: the micro-batches count
    assert _search_here(tmp_path / "plain", cache)["alpha"] != a["alpha"]
    assert a["config"]["nproc"] == 2 and b["config"]["accumulate"] == 2

    # PT on the 2-rank supernet: in 2 processes (evaluations split, tuning data-parallel) and in 1
    # (the tuning accumulates the search's 2 micro-batches) every decision and accuracy is the same
    sel = {}
    for n in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "nas.cli", "select", "--method", "pt", "--run",
                               str(tmp_path / "ranks"), "--out", str(tmp_path / f"pt{n}"), "--nproc", str(n),
                               "--set", "pt_tune_epochs=1", "--set", "progress=false", "--json"], env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sel[n] = json.loads((tmp_path / f"pt{n}" / "selection.json").read_text())
        assert json.loads(proc.stdout)["genotype"] == sel[n]["genotype"]
    assert sel[1]["genotype"] == sel[2]["genotype"] and sel[1]["decisions"] == sel[2]["decisions"]
    assert sel[1]["final_val_acc"] == sel[2]["final_val_acc"]
    assert sorted(p.name for p in (tmp_path / "pt2").iterdir()) == sorted(p.name for p in (tmp_path / "pt1").iterdir())


@pytest.mark.slow
def test_sampling_methods_keep_every_rank_on_one_alpha_and_ranks_that_disagree_are_refused_in_one_line(tmp_path):
    """One launch of tests/dp_searches.py: sampling methods repeat bitwise with every rank on one α;
    batch-norm statistics per rank or synchronised; a rank asking for another seed, and a search
    started by one process continued by two, refused in one line on every rank."""
    cache = tmp_path / "cache"
    # a search started by one process, which the two ranks will refuse to continue
    cfg = build_config("search", overrides=dict(dataset="digits", epochs=2, channels=4, cells=1, batch_size=32,
                                                steps_per_epoch=3, device="cpu", progress=False, seed=5,
                                                dist_check=True, cache_dir=str(cache), out=str(tmp_path / "single")))
    Search(cfg).run()
    proc = subprocess.run([*TORCHRUN, str(REPO / "tests" / "dp_searches.py"), str(tmp_path), str(cache)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # dist_check: α gathered and compared after every step
    lines = _said(tmp_path)
    bn = {(d["rank"], d["run"]): d["running_mean"] for d in lines if d["run"].startswith("bn-")}
    assert bn[(0, "bn-False")] != bn[(1, "bn-False")]  # each rank's own statistics ...
    assert bn[(0, "bn-True")] == bn[(1, "bn-True")]  # ... or, with bn_sync, their mean on every rank
    for method in ("gdas", "snas", "drnas", "sdarts-rs"):
        genos = {(d["rank"], d["run"]): d["genotype"] for d in lines if d["run"].startswith(method + "-")}
        assert len(genos) == 4 and len(set(genos.values())) == 1, genos  # both ranks, both runs: one cell
        first, second = (json.loads((tmp_path / f"{method}-{rep}" / "result.json").read_text()) for rep in (1, 2))
        assert first["alpha"] == second["alpha"] and first["history"][-1]["alpha"] == second["history"][-1]["alpha"]
        assert [h["val_loss"] for h in first["history"]] == [h["val_loss"] for h in second["history"]]
        pa, pb = _params(tmp_path / f"{method}-1"), _params(tmp_path / f"{method}-2")
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    errors = {(d["run"], d["rank"]): d["error"] for d in lines if "error" in d}
    assert {r: errors[("mismatch", r)] for r in (0, 1)} == {
        r: "rank 1's search config differs from rank 0's: seed is 6 there, 5 on rank 0" for r in (0, 1)}
    assert not (tmp_path / "mismatch").exists()  # refused before any work
    want = (f"{tmp_path / 'single' / 'checkpoint.pt'}: cannot resume with 2 rank(s): the checkpoint was written by 1 "
            "(resume with the world size the search started with)")
    assert {r: errors[("single", r)] for r in (0, 1)} == {0: want, 1: f"rank 0, reading the checkpoint: {want}"}


@pytest.mark.slow
def test_a_rank_that_cannot_reach_the_others_fails_within_its_timeout_in_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    t0 = time.time()
    proc = subprocess.run(_search_cmd(tmp_path / "run", tmp_path / "cache", "--set", "dist_timeout=3"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and time.time() - t0 < 60
    assert proc.stderr.strip().splitlines() == [
        f"nas search: error: rank 1 of 2: could not join the others at 127.0.0.1:{port} within 3 s (DistNetworkError)"]
    assert not (tmp_path / "run").exists()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of the search process of ``rank`` that ``root`` started (read from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = b"\0" + (d / "environ").read_bytes()
        except OSError:
            continue
        if f"\0RANK={rank}\0".encode() not in env or b"\0TORCHELASTIC_RUN_ID=" not in env:
            continue
        pid = int(d.name)
        while pid > 1:
            pid = _parent(pid)
            if pid == root:
                return int(d.name)
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_search_restarts_from_the_checkpoint_and_ends_as_if_uninterrupted(tmp_path):
    cache, epochs = tmp_path / "cache", 6
    # uninterrupted: one process accumulating the 2 ranks' micro-batches, which gives the 2 ranks'
    # numbers bit for bit (test_two_ranks_equal_one_process_...)
    whole = subprocess.run(_search_cmd(tmp_path / "whole", cache, "--set", "accumulate=2", epochs=epochs, steps=8),
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(_search_cmd(run, cache, "--nproc", "2", "--max-restarts", "1", epochs=epochs, steps=8),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pt").is_file():
            epoch = torch_load(run / "checkpoint.pt")["epoch"]
            pid = _rank_pid(proc.pid, 1)
            if 1 <= epoch < epochs - 2 and pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = epoch
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed is not None, "the search ended before a rank could be killed"
    assert proc.returncode == 0, err[-3000:]
    assert "exitcode: -9" in err  # torchrun saw the rank die, and started both again
    assert err.count(f"epoch 1/{epochs} ") == 1  # ... which resumed from the checkpoint, not from epoch 0
    a, b = (json.loads((tmp_path / r / "result.json").read_text()) for r in ("whole", "killed"))
    assert a["alpha"] == b["alpha"] and a["genotype"] == b["genotype"]
    assert [h["alpha"] for h in a["history"]] == [h["alpha"] for h in b["history"]]
    pa, pb = _params(tmp_path / "whole"), _params(run)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


# ------------------------------------------------------------------------------- fast: no processes
def test_micro_batches_cut_the_global_batch_in_order_with_their_shares():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    parts = parallel.Shards(rank=1, world=2, accumulate=2).parts((x, y))
    assert [(j, b[1].tolist(), share) for j, b, share in parts] == [(2, [6, 7], 0.2), (3, [8, 9], 0.2)]
    parts = parallel.Shards(rank=0, world=2, accumulate=2).parts((x, y))
    assert [(j, b[1].tolist(), share) for j, b, share in parts] == [(0, [0, 1, 2], 0.3), (1, [3, 4, 5], 0.3)]
    assert sum(s for sh in (0, 1) for _, _, s in parallel.Shards(sh, 2, 2).parts((x, y))) == pytest.approx(1.0)
    one = parallel.Shards()
    assert one.total == 1 and one.main and [j for j, _, _ in one.parts((x, y))] == [0]
    t = torch.ones(3)
    one.sum_([t])  # one process: nothing to sum
    assert one.broadcast("x") == "x" and one.gather(1) == [1] and torch.equal(t, torch.ones(3))


def test_each_micro_batch_has_its_own_global_random_stream():
    rand = parallel.ShardRandom({1: 123}, torch.device("cpu"))
    torch.manual_seed(7)
    with rand.of(1):
        a = torch.rand(3)
    b = torch.rand(3)  # the outer stream went on as if nothing had happened
    torch.manual_seed(7)
    assert torch.equal(b, torch.rand(3))
    with rand.of(1):  # micro-batch 1's stream continues where it left off
        a2 = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(a, torch.rand(3)) and torch.equal(a2, torch.rand(3))
    with rand.of(0):  # micro-batch 0 has no stream of its own: the outer one
        torch.manual_seed(5)
        c = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(c, torch.rand(1))


def test_a_rank_whose_alpha_differs_is_caught_by_dist_check(monkeypatch):
    cfg = build_config("search", overrides=dict(dataset="digits", channels=4, cells=1, device="cpu"))
    s = Search(cfg)
    st = type("St", (), {"arch": torch.nn.Module()})()
    st.arch.alpha = torch.nn.Parameter(torch.zeros(2, 3))
    same = [torch.zeros(6), torch.zeros(6)]
    monkeypatch.setattr(parallel.Shards, "gather", lambda self, obj: same)
    s._check_ranks(st, 0, 0)
    monkeypatch.setattr(parallel.Shards, "gather", lambda self, obj: [torch.zeros(6), torch.full((6,), 1e-7)])
    with pytest.raises(parallel.RankMismatch, match=r"^dist_check: rank 1's α differs from rank 0's after step 4 of "
                                                    r"epoch 2 \(largest difference 1e-07\)$"):
        s._check_ranks(st, 1, 3)


def test_cards_are_per_rank_and_what_ranks_send_is_on_the_cpu(monkeypatch):
    assert parallel.device_for("cuda:1", 1) == "cuda:1" and parallel.device_for("cpu", 2) == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert parallel.device_for("cuda", 4) == "cuda:3"
    with pytest.raises(NasError, match=r"device: 'cuda:1' names one card, but 2 ranks each take their own"):
        parallel.device_for("cuda:1", 2)
    nested = parallel.to_cpu({"a": [torch.ones(1)], "b": (torch.zeros(1), 3)})
    assert nested["b"][1] == 3 and nested["a"][0].device.type == "cpu"


@pytest.mark.parametrize(("over", "message"), [
    ({"method": "random"}, "method 'random' trains no supernet: accumulate and several ranks apply to supernet"),
    ({"batch_size": 3}, r"batch_size 3 cannot be cut into 4 micro-batches \(1 ranks x accumulate 4\)"),
])
def test_what_a_sharded_search_cannot_do_is_refused_before_any_work(tmp_path, over, message):
    cfg = build_config("search", overrides=dict(dataset="digits", channels=4, cells=1, device="cpu", accumulate=4,
                                                out=str(tmp_path / "run"), **over))
    with pytest.raises(NasError, match=message):
        Search(cfg)
    assert not (tmp_path / "run").exists()
