"""``nas-benchmark``: the NAS-Bench-201 grid of a protocol (methods x seeds x selections).

Each (method, seed) cell is a task on the chosen task runner: threads here, or a Dask cluster of
processes or machines.  Cells are cached by the library (``nas.grid``): a finished search or
selection is read back, an interrupted one resumes, so a long grid completes across invocations.
The flow then writes the lecture-form table (markdown + CSV), the per-run CSV and the figures, and
logs them to MLflow.

    prefect deployment run 'nas-benchmark/cpu-proxy' -p data=/path/to/cifar-10-python.tar.gz
    python -m flows.benchmark --protocol params/cpu-proxy.yaml --data ... --runner dask --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import ready_local_prefect, task_runner
from nas import grid, tracking


@task(name="grid-cell")
def cell_task(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One cell on whatever worker runs it: the job carries its protocol and archived results
    (``grid.ship_cell``), and the cell's results come back with its rows."""
    return grid.run_shipped_cell(kwargs)


@flow(name="nas-benchmark-cells")
def _cells(jobs: list[dict[str, Any]], report: str) -> tuple[list[dict[str, Any]], list[str]]:
    futures = [cell_task.submit(grid.ship_cell(kw)) for kw in jobs]
    out, failures = [], []
    for kw, fut in zip(jobs, futures):
        try:
            res = fut.result()
        except Exception as exc:  # the other cells go on; rerun the flow to retry this one
            where = f"{kw['space']} " if kw.get("space") else ""
            msg = f"{where}{kw['method']} seed {kw['seed']}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"cell {msg} failed")
            failures.append(msg)
            continue
        grid.store_shipped_cell(report, res)  # the results come home: no shared folder needed
        out.append(res)
    return out, failures


@flow(name="nas-benchmark", log_prints=True)
def benchmark(protocol: str = "params/cpu-proxy.yaml", data: str | None = None, methods: list[str] | None = None,
              seeds: list[int] | None = None, selections: list[str] | None = None, out: str | None = None,
              report: str | None = None, runner: str = "thread", address: str | None = None, workers: int = 1,
              threads: int = 1, track: bool = True) -> dict[str, Any]:
    from nas.utils import NasError, check_output_dir

    spec = grid.load_grid(protocol, out, report, methods, seeds, selections)
    check_output_dir(spec.report, "report")
    jobs = grid.cell_kwargs(spec, data, threads)
    results, failures = _cells.with_options(task_runner=task_runner(runner, address, workers=workers,
                                                                    threads=threads))(jobs, spec.report)
    rows = [r for res in results for r in res["rows"]]
    if not rows and failures:
        raise NasError(f"grid {spec.name}: all {len(failures)} cells failed (first: {failures[0]})")
    rep = grid.write_report(spec, rows)
    create_markdown_artifact(key=f"nas-benchmark-{spec.name}".lower().replace("_", "-"), markdown=rep["markdown"],
                             description=f"{'retrained' if spec.retrain else 'NAS-Bench-201'} table of protocol "
                                         f"{spec.name}")
    tr = tracking.tracker(track)
    run_id = None
    if tr.active:  # one nested run per row: nothing to build when tracking is off
        spaces = ",".join(spec.spaces) if spec.spaces else ("nb201" if not spec.retrain else "")
        run_id = tr.start(f"benchmark-{spec.name}", {"stage": "benchmark", "protocol": spec.name, "space": spaces})
        tr.log_params(run_id, {"protocol": protocol, "methods": ",".join(spec.methods),
                               "seeds": ",".join(map(str, spec.seeds)), "selections": ",".join(spec.selections)})
        for r in rep["summary"]:
            if spec.retrain:
                tr.log_metrics(run_id, {f"{r['space']}.{r['method']}.{r['selection']}.test_error_mean":
                                        r["test_error_mean"]})
            else:
                tr.log_metrics(run_id, {f"{r['method']}.{r['selection']}.{d}_mean": r[f"{d}_mean"]
                                        for d in grid.DATASETS})
        for path in (rep["table_md"], rep["table_csv"], rep["runs_csv"]):
            tr.log_file(run_id, path, "table")
        key = "test_error_mean" if spec.retrain else "cifar10_mean"
        cols = ([c for c in ("space",) if spec.retrain] + ["method", "selection", "runs", "seeds", key,
                 "test_error_std" if spec.retrain else "cifar10_std", "search_minutes", "select_minutes"])
        tr.log_comparison(run_id, f"Protocol {spec.name}: " + ("test error (%), lowest first" if spec.retrain else
                                                               "NAS-Bench-201 CIFAR-10 test accuracy (%), best first"),
                          cols, sorted(rep["summary"], key=lambda r: r[key] * (1 if spec.retrain else -1)))
        for path in rep["figures"]:
            tr.log_file(run_id, path, "figures")
        by_cell = {(res["rows"][0].get("space"), res["rows"][0]["method"], int(res["rows"][0]["seed"])): res
                   for res in results if res["rows"]}
        for r in rows:  # one nested run per (space, method, selection, seed), comparable with pipeline runs
            space = r.get("space", "nb201")
            child = tr.start(tracking.run_name("grid", r["method"], r["selection"], space, r["seed"], spec.name), {
                "stage": "grid", "protocol": spec.name, "method": r["method"], "selection": r["selection"],
                "seed": r["seed"], "space": space, "genotype": r["genotype"]}, parent=run_id)
            if spec.retrain:
                numbers = {k: r[k] for k in ("test_acc", "test_error", "params_m", "normal_skip", "normal_noise",
                                             "normal_none", "retrain_minutes")}
            else:
                numbers = {"nb201_cifar10": r["cifar10"], "nb201_cifar100": r["cifar100"],
                           "nb201_imagenet16-120": r["imagenet16-120"], "skip_edges": r["skip_edges"]}
            tr.log_metrics(child, {**numbers, "search_minutes": r["search_minutes"],
                                   "select_minutes": r["select_minutes"],
                                   **({"final_eigenvalue": r["final_eigenvalue"]}
                                      if r.get("final_eigenvalue") is not None and not math.isnan(r["final_eigenvalue"])
                                      else {})})
            cell = by_cell.get((r.get("space"), r["method"], int(r["seed"])))
            if cell is not None:  # the row and the cell's results: a report can be rebuilt from the server
                tr.log_json(child, {"row": r, "cell": cell["cell"], "files": cell["files"]}, "cell.json", "cell")
            tr.end(child)
        tr.end(run_id)
    if failures:
        raise NasError(f"grid {spec.name}: {len(failures)} of {len(jobs)} cells failed (first: {failures[0]}); the "
                       f"report holds the others; rerun the same command to retry them")
    return {"rows": rows, "report": {k: v for k, v in rep.items() if k != "summary"},
            "pids": sorted({res["pid"] for res in results}), "mlflow_run": run_id}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.benchmark", description="Run the nas-benchmark flow once.")
    p.add_argument("--protocol", default="params/cpu-proxy.yaml")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--report")
    p.add_argument("--runner", default="thread", choices=("thread", "dask"))
    p.add_argument("--address", default=os.environ.get("NAS_DASK_ADDRESS") or None,
                   help="Dask scheduler address (tcp://host:8786; default $NAS_DASK_ADDRESS)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-track", dest="track", action="store_false")
    a = p.parse_args(argv)
    from nas.utils import NasError

    ready_local_prefect()
    try:
        res = benchmark(a.protocol, a.data, out=a.out, report=a.report, runner=a.runner, address=a.address,
                        workers=a.workers, threads=a.threads, track=a.track)
    except NasError as exc:
        print(f"python -m flows.benchmark: error: {exc}", file=sys.stderr)
        return 1
    print(res["report"]["markdown"])
    print(json.dumps({"figures": res["report"]["figures"], "runs_csv": res["report"]["runs_csv"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
