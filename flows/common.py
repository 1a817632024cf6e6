"""What the flows share: the file-aware cache key, result storage, task runners, settings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect.cache_policies import CachePolicy
from prefect.exceptions import TerminationSignal
from pydantic import BaseModel, ConfigDict, Field

from nas import stopping
from nas.runs import jobs
from nas.tracking import disable_telemetry
from nas.utils import NasError, code_version, sha256_file

disable_telemetry()

REPO = Path(__file__).resolve().parent.parent
# Parameters that never change what a stage computes.
NOT_IN_KEY = {"progress", "track", "parent_run", "outputs", "run_tags"}


def file_digest(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(p) if p.is_file() else "missing"


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """A stage's cache key: the run layer's key of its resolved config (``nas.runs.jobs.key``, so a
    key left to the space's default and the default itself are one key), its other inputs, the code
    version and the digests of its input files (the ``inputs`` parameter lists them).  Unlike
    Prefect's default policy it holds no run id, so a second pipeline run with the same inputs
    reuses the finished stages."""
    files = {str(p): file_digest(p) for p in parameters.get("inputs") or []}
    params = {k: v for k, v in parameters.items() if k not in NOT_IN_KEY and k != "inputs"}
    task = context.task.name
    if task in jobs.STAGES and isinstance(params.get("cfg"), dict):
        from nas import config as config_mod

        with contextlib.suppress(NasError):  # a config the stage refuses keys as given; the stage says why
            cfg = jobs.resolve(task, config_mod.from_dict(task, params["cfg"]))
            params["cfg"] = jobs.key(task, config_mod.to_dict(cfg))
    payload = {"task": task, "code": code_version(), "params": params, "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StageFiles(CachePolicy):
    """Prefect cache policy of a pipeline stage: its parameters, the code version and the digests
    of its ``inputs`` files (``stage_cache_key``); never the flow-run id."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return stage_cache_key(task_ctx, inputs)


def cache_options(outputs: list[str], refresh: bool = False) -> dict[str, Any]:
    """Task options that make a cached result answer only while the stage's output files exist:
    when one is missing (a deleted run folder) the stage runs again and its cache record is
    replaced (``refresh_cache``), instead of being reported ``Cached`` with files that are gone."""
    missing = [p for p in outputs if not Path(p).exists()]
    return {"refresh_cache": True} if refresh or missing else {}


def ready_local_prefect() -> None:
    """Without ``PREFECT_API_URL`` a flow starts a temporary Prefect server, which creates or
    migrates its SQLite database on start; several flows started together on an empty home race in
    that migration ("duplicate column name").  Do it once here, under a lock in ``PREFECT_HOME``,
    and remember it per Prefect version."""
    import asyncio

    import prefect
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return
    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    marker = home / f".nas-db-ready-{prefect.__version__}"
    if marker.exists():
        return
    with FileLock(str(home / ".nas-db.lock")):
        if marker.exists():
            return
        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())
        marker.touch()


def flow_main(prog: str, check: Callable[[], object], run: Callable[[], None],
              resume: str = "rerun the same command: finished work is cached") -> int:
    """A flow's command line: ``check`` refuses bad settings in one line before any flow (or
    temporary Prefect server) starts; then ``run`` runs the flow, and a failure under it (all its
    work failed, a server went away) ends in one line after Prefect's own log.  SIGTERM and SIGINT
    stop it within seconds (its trials' threads at their next batch), with one line saying how to
    go on (``resume``).  Exit status 0, 1, or 130 when stopped."""
    stopping.install()
    try:
        check()
    except NasError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"{prog}: {stopping.stopped_line(exc, resume)}", file=sys.stderr)
        return 130
    try:
        ready_local_prefect()
        run()
    except (KeyboardInterrupt, TerminationSignal) as exc:  # TerminationSignal: Prefect's SIGTERM, in a flow
        stopping.ask(stopping.signal_name(exc))  # threads still computing stop at their next batch
        print(f"{prog}: {stopping.stopped_line(exc, resume)}", file=sys.stderr)
        return 130
    except NasError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- whatever failed under the flow, said in one line
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"{prog}: error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


def not_a_config_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O), never a bad config or bad input (``NasError``)."""
    try:
        state.result()
    except NasError:
        return False
    except Exception:
        return True
    return False


def add_set_flag(p: Any) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable), shared by the flows that run the stages."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one key of one stage, e.g. search.epochs=5 (repeatable)")


def add_runner_flags(p: Any, what: str) -> None:
    """``--runner`` and ``--address``: where a flow's ``what`` (cells, trials) run."""
    import os

    p.add_argument("--runner", default="thread", choices=("thread", "dask"),
                   help=f"where the {what} run: threads of this process, or Dask (default thread)")
    p.add_argument("--address", default=os.environ.get("NAS_DASK_ADDRESS") or None,
                   help="Dask scheduler address (tcp://host:8786; default $NAS_DASK_ADDRESS)")


class Where(BaseModel):
    """Where a flow's jobs run: ``runner`` ``thread`` (threads of the flow's process) or ``dask`` (a
    local cluster of processes, or the scheduler at ``address``, ``tcp://host:8786``, for several
    machines), ``workers`` side by side with ``threads`` torch threads each."""

    model_config = ConfigDict(extra="forbid")

    runner: Literal["thread", "dask"] = "thread"
    address: str | None = None
    workers: int = Field(1, ge=1, le=1024)
    threads: int = Field(1, ge=0, le=1024)


def where_from(args: Any, workers: int) -> Where:
    """The ``Where`` of a flow's command line (``--runner``, ``--address``, ``--threads``; ``workers``
    from its own flag), or a one-line error naming the flag."""
    from pydantic import ValidationError

    try:
        return Where(runner=args.runner, address=args.address, workers=workers, threads=args.threads)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {"workers": "--workers/--parallel"}.get(str(err["loc"][0]), f"--{err['loc'][0]}")
        raise NasError(f"{flag}: {err['msg'].lower()}, got {err.get('input')!r}") from None


def task_runner(where: Where, workers: int | None = None):
    """The Prefect task runner of ``where`` (``workers`` overrides its worker count).  The flow
    process itself never touches CUDA, so workers may take GPUs."""
    workers = where.workers if workers is None else workers
    if where.runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if where.address:
        return DaskTaskRunner(address=where.address)
    from nas.cluster import quiet_dask

    quiet_dask()
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": max(where.threads, 1),
                                          "processes": True, "dashboard_address": None, "env": _workers_env()})


def _workers_env() -> dict[str, str]:
    """A local cluster's workers report to this flow's Prefect server.  Without ``PREFECT_API_URL``
    the flow runs on a temporary server that only this process knows; a worker that is not told
    its address would start a temporary server of its own, and leave it running when the worker
    is stopped."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # the workers read the same setting
        return {}
    server = SubprocessASGIServer()  # the temporary server of this process (one per process)
    return {"PREFECT_API_URL": server.api_url} if server.running else {}
