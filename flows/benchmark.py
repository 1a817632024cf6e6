"""``nas-benchmark``: the NAS-Bench-201 grid of a protocol (methods x seeds x selections).

Each (method, seed) cell is a task on the chosen task runner: threads here, or a Dask cluster of
processes or machines.  Cells are cached by the library (``nas.grid``): a finished search or
selection is read back, an interrupted one resumes, so a long grid completes across invocations.
The flow then writes the table in the papers' form (markdown + CSV), the per-run CSV and the figures, and
logs them to MLflow.

    prefect deployment run 'nas-benchmark/cpu-proxy' -p data=/path/to/cifar-10-python.tar.gz
    python -m flows.benchmark --protocol params/cpu-proxy.yaml --data ... --runner dask --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.common import Where, add_runner_flags, flow_main, task_runner, where_from
from nas import grid, stopping, tracking, tracking_stages
from nas.runs.store import Failures


@task(name="grid-cell")
def cell_task(shipped: grid.ShippedCell) -> dict[str, Any]:
    """One cell on whatever worker runs it: the job carries its protocol and archived results
    (``grid.ship_cell``), and the cell's results come back with its rows."""
    return grid.run_shipped_cell(shipped)


@flow(name="nas-benchmark-cells")
def _cells(jobs: list[grid.CellJob], report: str, what: str,
           tracking_uri: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    futures = [cell_task.submit(grid.ship_cell(job, tracking_uri)) for job in jobs]
    out, failures = [], Failures(what)
    with stopping.others_stop_on_abort():  # SIGTERM / SIGINT: cells in threads stop too
        for job, fut in zip(jobs, futures):
            try:
                res = fut.result()
            except Exception as exc:  # the other cells go on; rerun the flow to retry this one
                failures.add(job.label, exc)
                continue
            grid.store_shipped_cell(report, res)  # the results come home: no shared folder needed
            out.append(res)
    return out, failures.items


class Only(BaseModel):
    """A part of a protocol's grid: these methods, seeds or selections only (None: the protocol's)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] | None = None
    seeds: list[int] | None = None
    selections: list[str] | None = None


@flow(name="nas-benchmark", log_prints=True)
def benchmark(protocol: str = "params/cpu-proxy.yaml", data: str | None = None, out: str | None = None,
              report: str | None = None, where: Where | None = None, track: bool = True,
              only: Only | None = None) -> dict[str, Any]:
    """The grid of ``protocol`` (``only``: a part of it) on ``where``'s workers, its report written to
    ``report`` and logged to MLflow (``track``); run folders under ``out``."""
    from nas.utils import check_output_dir

    where, only = where or Where(), only or Only()
    spec = grid.load_grid(protocol, out, report, only.methods, only.seeds, only.selections)
    check_output_dir(spec.report, "report")
    jobs = grid.cell_jobs(spec, data, where.threads)
    failures = Failures(f"grid {spec.name}")
    # with a tracking server, each cell keeps its progress there: another worker continues a dead one's
    results, failures.items = _cells.with_options(task_runner=task_runner(where))(
        jobs, spec.report, failures.what, tracking.client_tracking_uri(track))
    rows = [r for res in results for r in res["rows"]]
    if not rows:
        failures.raise_if_any(len(jobs), "cells")
    rep = grid.write_report(spec, rows)
    create_markdown_artifact(key=f"nas-benchmark-{spec.name}".lower().replace("_", "-"), markdown=rep["markdown"],
                             description=f"{'retrained' if spec.retrain else 'NAS-Bench-201'} table of protocol "
                                         f"{spec.name}")
    tr = tracking.tracker(track)
    run_id = tracking_stages.log_benchmark(tr, spec, protocol, rep, rows, results) if tr.active else None
    failures.raise_if_any(len(jobs), "cells")
    return {"rows": rows, "report": {k: v for k, v in rep.items() if k != "summary"},
            "pids": sorted({res["pid"] for res in results}), "mlflow_run": run_id}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.benchmark", description="Run the nas-benchmark flow once.")
    p.add_argument("--protocol", default="params/cpu-proxy.yaml",
                   help="protocol params file (default params/cpu-proxy.yaml)")
    p.add_argument("--data", help="the CIFAR-10 archive or folder (the protocol's dataset)")
    p.add_argument("--out", help="run directories (default runs/grid/<protocol>)")
    p.add_argument("--report", help="table, CSV and figures (default data/results/<protocol>)")
    add_runner_flags(p, "cells")
    p.add_argument("--workers", type=int, default=1, help="cells run side by side (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow tracking")
    a = p.parse_args(argv)

    def check() -> None:  # a bad protocol or report folder: one line, before any flow or server starts
        from nas.runs.progress import interval_from_env
        from nas.utils import check_output_dir

        where_from(a, a.workers)
        check_output_dir(grid.load_grid(a.protocol, a.out, a.report).report, "report")
        interval_from_env()

    def run() -> None:
        res = benchmark(a.protocol, a.data, a.out, a.report, where_from(a, a.workers), a.track)
        print(res["report"]["markdown"])
        print(json.dumps({"figures": res["report"]["figures"], "runs_csv": res["report"]["runs_csv"]}, indent=2))

    return flow_main("python -m flows.benchmark", check, run, "rerun the same command: finished cells are kept")


if __name__ == "__main__":
    sys.exit(main())
