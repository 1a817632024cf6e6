"""The same tiny grid through a Dask cluster of 1 and of 2 workers, side by side in one run: the
throughput ratio, and what a cell costs beyond its own computation (scheduling and the Prefect task,
shipping its settings and archived results, storing its results on the client, logging them).

Each worker is a ``dask worker`` process of ``nas cluster`` (one process, one thread, its own empty
folder); the grid is the benchmark flow (``flows.benchmark``) with fresh run folders for each
setting, so no cell is read back from a cache.

    python bench/cluster.py --cells 8 --epochs 6 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _protocol(folder: Path, cells: int, epochs: int) -> Path:
    methods = ["darts", "gdas", "snas", "drnas"]
    seeds = list(range(1, (cells + len(methods) - 1) // len(methods) + 1))
    path = folder / "benchcluster.yaml"
    path.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "epochs": epochs, "channels": 8, "cells": 1, "batch_size": 32,
                   "steps_per_epoch": 8, "hessian_every": 0},
        "grid": {"methods": methods[:min(cells, len(methods))], "seeds": seeds, "selections": ["magnitude"]}}))
    return path


def _run(cluster, workers: int, proto: Path, scratch: Path, tag: str) -> dict:
    from flows.benchmark import benchmark
    from flows.common import Where

    for name in [n for n in cluster.state["services"] if n.startswith("worker-")]:
        cluster.stop_service(name)
        cluster.state["services"].remove(name)
    for i in range(1, workers + 1):
        cluster.add_worker(f"worker-{i}")
    cluster._wait_workers(cluster.env()["NAS_DASK_ADDRESS"], workers, 120)
    t0 = time.perf_counter()
    res = benchmark(protocol=str(proto), out=str(scratch / f"g-{tag}"), report=str(scratch / f"r-{tag}"),
                    where=Where(runner="dask", address=cluster.env()["NAS_DASK_ADDRESS"]), track=False)
    wall = time.perf_counter() - t0
    compute = 60 * sum(r["search_minutes"] for r in res["rows"])
    return {"workers": workers, "cells": len(res["rows"]), "wall": wall, "compute": compute,
            "overhead_per_cell": (wall * workers - compute) / len(res["rows"])}


def _shipping(proto: Path, scratch: Path, repeats: int = 20) -> dict:
    """Client-side cost per cell of shipping a finished cell's job and storing its returned results,
    and of logging them to a local tracking store."""
    from nas import grid, tracking

    spec = grid.load_grid(proto, str(scratch / "g-1w-0"), str(scratch / "r-1w-0"))
    cell = grid.cell_jobs(spec, None, 1)[0]
    t0 = time.perf_counter()
    for _ in range(repeats):
        shipped = grid.ship_cell(cell)
    ship = (time.perf_counter() - t0) / repeats
    files = shipped.archived
    result = {"rows": [], "files": files, "cell": cell.cell.name + "-x"}
    t0 = time.perf_counter()
    for i in range(repeats):
        grid.store_shipped_cell(scratch / f"store-{i}", {**result, "cell": f"c{i}"})
    store = (time.perf_counter() - t0) / repeats
    tr = tracking.Tracker(f"sqlite:///{scratch / 'mlflow.db'}")
    run = tr.start("bench")
    t0 = time.perf_counter()
    for i in range(5):
        tr.log_json(run, files, f"cell-{i}.json", "cell")
    log = (time.perf_counter() - t0) / 5
    return {"ship": ship, "store": store, "log": log, "bytes": len(json.dumps(files))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternated")
    a = p.parse_args(argv)
    os.environ.setdefault("NAS_MLFLOW", "0")
    from flows.common import ready_local_prefect
    from nas.cluster import Cluster

    with tempfile.TemporaryDirectory(prefix="nas-bench-cluster-") as tmp:
        scratch = Path(tmp)
        proto = _protocol(scratch, a.cells, a.epochs)
        cluster = Cluster(scratch / "cluster")
        print("starting the cluster (PostgreSQL, MLflow, Prefect, Dask) ...", file=sys.stderr, flush=True)
        env = cluster.up(workers=1, prefect=True)
        os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT")})
        ready_local_prefect()
        try:
            runs = {1: [], 2: []}
            for r in range(a.repeats):
                for w in (1, 2):
                    runs[w].append(_run(cluster, w, proto, scratch, f"{w}w-{r}"))
                    print(f"  {w} worker(s), run {r + 1}: {runs[w][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
            ship = _shipping(proto, scratch)
        finally:
            cluster.down(quiet=True)
    cpu = os.cpu_count()
    print(f"bench/cluster.py: {a.cells} cells of a {a.epochs}-epoch digits grid, {a.repeats} runs per setting, "
          f"{cpu} CPUs; Dask workers of `nas cluster` (1 process, 1 thread each)")
    print("| workers | wall (s), median | cells / min | compute per cell (s) | overhead per cell (s) |")
    print("|---|---|---|---|---|")
    med = {}
    for w, rs in runs.items():
        wall = statistics.median(x["wall"] for x in rs)
        med[w] = wall
        print(f"| {w} | {wall:.1f} | {60 * rs[0]['cells'] / wall:.2f} | "
              f"{statistics.median(x['compute'] / x['cells'] for x in rs):.2f} | "
              f"{statistics.median(x['overhead_per_cell'] for x in rs):.2f} |")
    print(f"throughput ratio, 2 workers / 1 worker: {med[1] / med[2]:.2f}x")
    print(f"per cell on the client: shipping the job {1000 * ship['ship']:.1f} ms, storing its results "
          f"{1000 * ship['store']:.1f} ms, logging them to MLflow (SQLite) {1000 * ship['log']:.1f} ms "
          f"({ship['bytes'] / 1024:.0f} KiB of JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
