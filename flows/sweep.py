"""``nas-sweep``: an Optuna study of a method's regularisation strength (ε, σ or λ).

Trials are Prefect tasks on the chosen task runner (threads, or a Dask cluster of processes or
machines); each asks the shared study for its parameters and tells it the result, so any number of
workers, here or elsewhere, can fill one study.  Each run adds ``n_trials`` trials to the study
(so the nightly deployment grows it night after night); ``max_trials`` caps its total.

    prefect deployment run 'nas-sweep/nightly' -p method=drnas -p n_trials=20   # adds 20 trials
    python -m flows.sweep --method sdarts-rs --n-trials 8 --mode benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.common import Where, add_runner_flags, add_set_flag, flow_main, task_runner, where_from
from nas import stopping, sweep, tracking, tracking_stages


@task(name="trial")
def trial_task(job: sweep.TrialJob) -> dict[str, Any] | None:
    row = sweep.run_trial(job)
    return None if row is None else {**row, "pid": os.getpid()}


@flow(name="nas-sweep-trials")
def _trials(jobs: list[sweep.TrialJob]) -> list[dict[str, Any]]:
    futures = [trial_task.submit(job) for job in jobs]
    rows = []
    with stopping.others_stop_on_abort():  # SIGTERM / SIGINT: the trials' threads stop too
        _collect(futures, rows)
    return rows


def _collect(futures: list[Any], rows: list[dict[str, Any]]) -> None:
    for fut in futures:
        try:
            row = fut.result()
            # None: the study was full when the trial asked (other workers took the last trials)
            rows.append(row if row is not None else {"state": "SKIPPED"})
        except Exception as exc:  # a failed trial is recorded as FAIL in the study; the sweep goes on
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"trial failed: {msg}")
            rows.append({"state": "FAILED", "error": msg})


def client_settings(params: str, storage: str | None, out: str, track: bool, remote: bool) -> dict[str, Any]:
    """What every trial needs, resolved here on the client so that a worker on another machine
    (or in another folder) uses exactly this: the params file's content, the output folder, the
    study's database URL and the tracking store.  With ``remote`` (a Dask cluster at an address), a
    store that is a file on this machine is refused, and a relative output folder stays relative:
    each trial runs in that folder under its worker's own folder (the client's folders may be
    read-only there, or absent), and its results come home through the study and the tracking
    server."""
    from nas import config as config_mod
    from nas.utils import NasError

    config_mod.load_yaml(params)  # a missing or malformed file: one line, before any trial
    storage = sweep.normalise_db_url(storage) if storage else sweep.default_storage()
    uri = tracking.client_tracking_uri(track)
    if remote and not sweep.is_server_db(storage):
        raise NasError(f"storage: {storage} is a file on this machine; the workers of a Dask cluster need a "
                       f"database server they all reach (--storage postgresql://USER@HOST:PORT/DB)")
    if remote and uri is not None and tracking.local_store(uri):
        raise NasError(f"MLFLOW_TRACKING_URI: {uri} is a file on this machine; the workers of a Dask cluster need "
                       f"a tracking server (MLFLOW_TRACKING_URI=http://HOST:5000) or --no-track")
    return {"params": str(Path(params)), "params_text": Path(params).read_text(), "storage": storage,
            "out": out if remote and not Path(out).is_absolute() else str(Path(out).resolve()),
            "track": uri is not None, "tracking_uri": uri}


def check_trial_configs(method: str, mode: str, params: str, sets: list[str] | None) -> list[str]:
    """Resolve every stage config as a trial will (a clash between sections, a misspelt or
    out-of-range ``--set``): one line here, on the client, instead of a failed trial per worker.
    Returns ``sets`` with each relative ``data`` path made absolute against this (the client's)
    folder, so a worker in another folder reads the same file; one that is not there is refused."""
    from nas import config as config_mod
    from nas.utils import NasError, clip

    key, lo, _ = sweep.check(method, mode)
    configs = config_mod.pipeline_configs(params, "runs/sweep/check", [*(sets or []), f"search.{key}={lo}"],
                                          method=method)
    resolved = list(sets or [])
    for section in ("prepare", "search", "retrain"):
        data = configs[section].data
        if data is None or Path(data).is_absolute():
            continue
        path = Path(data).resolve()
        if not path.exists():
            raise NasError(f"{section}.data: {clip(data, 80)} is not under the client's folder {Path.cwd()}; give a "
                           f"path that exists there, or an absolute path that every worker reads")
        resolved.append(f"{section}.data={json.dumps(str(path))}")
    return resolved


def study_parent(tracker: Any, name: str, storage: str, tags: dict[str, Any]) -> str | None:
    """The study's one MLflow parent run, found or created under the study's lock: clients that
    start sweeps of one study at once (on any machines that share its database) open one parent."""
    with sweep.storage_lock(storage):
        return tracker.study_run(name, storage, tags)


class Study(BaseModel):
    """The study a sweep adds to: its ``name`` (default ``<method>-<mode>``), database ``storage``
    (default ``$NAS_OPTUNA_STORAGE``, else ``sqlite:///runs/optuna.db``), ``pruner``, sampler
    ``seed``, the cap on its finished trials ``max_trials`` and the trials' folder ``out`` (default
    ``runs/sweep/<name>``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    storage: str | None = None
    pruner: Literal["median", "none"] = "median"
    seed: int = Field(0, ge=0)
    max_trials: int | None = Field(None, ge=0)
    out: str | None = None


@flow(name="nas-sweep", log_prints=True)
def sweep_flow(method: str = "sdarts-rs", n_trials: int = 8, mode: str = "retrain",
               params: str = "params/pipeline.yaml", sets: list[str] | None = None, study: Study | None = None,
               where: Where | None = None, track: bool = True) -> dict[str, Any]:
    """Add ``n_trials`` finished (complete or pruned) trials to the study, ``where.workers`` at a
    time, so that every run (every night of the nightly deployment) grows it.  ``study.max_trials``
    caps the study's total: a run stops early once the study holds that many.

    Several processes may run this flow on one study at once: each adds its own trials, each trial
    is claimed under the study's lock (so together they never pass ``max_trials``), and a trial
    whose worker died (no heartbeat for twice ``NAS_OPTUNA_HEARTBEAT`` seconds) is marked FAIL and
    retried once."""
    from nas.utils import NasError

    study, where = study or Study(), where or Where(threads=0)  # 0: torch's own thread count
    if n_trials < 0:
        raise NasError(f"sweep: n_trials must be >= 0, got {n_trials}")
    name = study.name or f"{method}-{mode}"
    settings = client_settings(params, study.storage, study.out or f"runs/sweep/{name}", track,
                               remote=where.runner == "dask" and bool(where.address))
    sets = check_trial_configs(method, mode, params, sets)
    storage, out, track = settings["storage"], settings["out"], settings["track"]
    st = sweep.open_study(name, storage, method, mode, study.pruner, study.seed)
    sweep.fail_stale(st, storage)
    before = sweep.finished(st)
    cap = "" if study.max_trials is None else f" (study capped at {study.max_trials})"
    print(f"study {name}: {before} finished trials, adding {n_trials}{cap}; objective {sweep.METRIC_NAMES[mode]}")
    tracker = tracking.tracker(track, uri=settings["tracking_uri"])
    parent = study_parent(tracker, name, storage, {
        "stage": "sweep", "method": method, "objective": mode, "selection": "magnitude"})
    job = sweep.TrialJob(name=name, method=method, mode=mode, sets=tuple(sets or ()), pruner=study.pruner,
                         seed=study.seed, parent_run=parent, threads=where.threads, max_trials=study.max_trials,
                         client=uuid.uuid4().hex, **settings)
    try:
        new = _add_trials(job, n_trials, where)
    except BaseException as exc:
        # trials on workers that were stopped with the flow could not end their own runs
        tracking_stages.end_running(tracker, job.client, stopping.status(exc))
        tracker.end(parent, stopping.status(exc))
        raise
    st = sweep.open_study(name, storage, method, mode, study.pruner, study.seed)
    rep = sweep.study_report(st, name, method, mode, Path(out).resolve())  # on the client
    create_markdown_artifact(key=f"nas-sweep-{name}".lower().replace("_", "-"), markdown=rep["markdown"],
                             description="Optuna trials of the regularisation strength")
    tracking_stages.log_study(tracker, parent, rep, {"study": name, "storage": storage, "objective": mode, "pruner": study.pruner})
    tracker.end(parent)
    return {"study": name, "trials": rep["table"], "new": new, "best": rep["best"], "csv": str(rep["csv"]),
            "mlflow_run": parent}


def _add_trials(job: sweep.TrialJob, n_trials: int, where: Where) -> list[dict[str, Any]]:
    """Run waves of up to ``where.workers`` trials until ``n_trials`` finished (or the study reached
    ``max_trials``, or two waves in a row failed); the finished rows.  A run that came up short
    because trials failed raises, naming the first failure."""
    from nas.runs.store import Failures

    new: list[dict[str, Any]] = []
    failures = Failures(f"sweep {job.name}")
    failed_waves = 0  # waves in a row whose every trial failed
    capped = False
    while len(new) < n_trials:
        wave = _wave_size(job, n_trials - len(new), where.workers)
        if wave is None:
            capped = True
            break
        if wave == 0:
            continue
        rows = _trials.with_options(task_runner=task_runner(where, workers=wave))([job] * wave)
        new.extend(r for r in rows if r["state"] not in ("SKIPPED", "FAILED"))
        failures.items.extend(r["error"] for r in rows if r["state"] == "FAILED")
        failed_waves = failed_waves + 1 if rows and all(r["state"] == "FAILED" for r in rows) else 0
        if failed_waves >= 2:
            break  # two waves in a row failed (each trial recorded as FAIL): stop instead of failing forever
    if not new or (len(new) < n_trials and not capped):
        failures.raise_if_any(len(new) + len(failures.items), "trials")
    return new


def _wave_size(job: sweep.TrialJob, room: int, parallel: int) -> int | None:
    """How many trials the next wave starts: None when the study is full, 0 (after a pause) while
    the last trials under ``max_trials`` run in other workers."""
    import time

    st = sweep.open_study(job.name, job.storage, job.method, job.mode, job.pruner, job.seed)
    sweep.fail_stale(st, job.storage)
    if job.max_trials is not None:
        done, busy = sweep.finished(st), sweep.running(st)
        if done >= job.max_trials:
            return None
        if done + busy >= job.max_trials:  # the rest runs in other workers: wait for them
            time.sleep(min(sweep.heartbeat_interval(), 10))
            return 0
        room = min(room, job.max_trials - done - busy)
    return min(parallel, room)


def study_from(a: Any) -> Study:
    """The ``Study`` of the command line, or a one-line error naming the flag."""
    from pydantic import ValidationError

    from nas.utils import NasError

    try:
        return Study(name=a.study, storage=a.storage, pruner=a.pruner, max_trials=a.max_trials, out=a.out)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-").replace("name", "study")
        raise NasError(f"{flag}: {err['msg'].lower()}, got {err.get('input')!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.sweep", description="Run the nas-sweep flow once.")
    p.add_argument("--method", default="sdarts-rs", choices=sorted(sweep.STRENGTHS),
                   help="the method whose regularisation strength is tuned (default sdarts-rs)")
    p.add_argument("--n-trials", type=int, default=8, help="trials this run adds to the study (default 8)")
    p.add_argument("--max-trials", type=int, help="cap on the study's total of finished trials (default none)")
    p.add_argument("--mode", default="retrain", choices=sweep.MODES,
                   help="a trial's score: the retrained cell's validation accuracy, or its NAS-Bench-201 "
                        "lookup (default retrain)")
    p.add_argument("--study", help="Optuna study name (default <method>-<mode>)")
    p.add_argument("--storage", help="database URL (default $NAS_OPTUNA_STORAGE, else sqlite:///runs/optuna.db)")
    p.add_argument("--params", default="params/pipeline.yaml",
                   help="params file of every trial's stages (default params/pipeline.yaml)")
    add_set_flag(p)
    p.add_argument("--parallel", type=int, default=1, help="trials run side by side (default 1)")
    add_runner_flags(p, "trials")
    p.add_argument("--pruner", default="median", choices=("median", "none"),
                   help="stop a trial whose supernet accuracy falls below the median of earlier ones, or "
                        "never (default median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per trial (default 0: torch's own)")
    p.add_argument("--out", help="trial run directories (default runs/sweep/<study>)")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow tracking")
    a = p.parse_args(argv)

    def check() -> None:  # settings that cannot work: one line, before any flow or server starts
        from nas.utils import NasError

        if a.n_trials < 0:
            raise NasError(f"--n-trials: expected 0 or more, got {a.n_trials}")
        study_from(a)
        where_from(a, a.parallel)
        client_settings(a.params, a.storage, a.out or "runs/sweep", a.track,
                        remote=a.runner == "dask" and bool(a.address))
        check_trial_configs(a.method, a.mode, a.params, a.sets)

    def run() -> None:
        res = sweep_flow(a.method, a.n_trials, a.mode, a.params, a.sets, study_from(a), where_from(a, a.parallel),
                         a.track)
        print(json.dumps({"study": res["study"], "best": res["best"], "csv": res["csv"]}, indent=2))

    return flow_main("python -m flows.sweep", check, run,
                     "finished trials stay in the study, stopped ones end FAIL; run it again to add trials")


if __name__ == "__main__":
    sys.exit(main())
