"""Running a campaign's jobs: in this process, or in a pool of local processes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker process: a daemon thread that ends the process once ``parent`` is gone (the
    worker is re-parented), so that a campaign killed by SIGTERM or SIGKILL leaves no orphan worker.
    Jobs write their results atomically and hold their folder's lock through the OS, so a worker
    ended this way leaves a resumable checkpoint and no stale claim."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(143)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(jobs: list[Any], workers: int, fn: Callable[[Any], Any], collect: Callable[[Any], None],
             failed: Callable[[Any, BaseException], None]) -> None:
    """``fn(job)`` for every job, in ``workers`` processes (one: in this process); ``collect`` takes
    each result, ``failed`` each job that raised (one failing job never stops the others).  ``fn``
    and the jobs must pickle (a module-level function, plain or dataclass jobs)."""
    if workers <= 1:
        for job in jobs:
            try:
                collect(fn(job))
            except Exception as exc:
                failed(job, exc)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: workers start clean (no CUDA context or thread pool inherited from this process);
    # each leaves when this process dies (a killed campaign leaves no worker computing on)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_start, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    collect(fut.result())
                except Exception as exc:
                    failed(futures[fut], exc)
        except KeyboardInterrupt:  # stopped (SIGTERM, SIGINT): the workers stop too, then this returns
            _stop_workers(pool)
            raise


def _worker_start(parent: int) -> None:
    """A worker process: it stops cleanly on SIGTERM (its tracking runs end KILLED) and ends when
    its parent is gone."""
    from nas import stopping

    stopping.install()
    exit_with_parent(parent)


def _stop_workers(pool: Any) -> None:
    """SIGTERM to every worker of ``pool`` (each stops at once, keeping its last checkpoint) and no
    job started after it."""
    import signal

    for proc in list(getattr(pool, "_processes", {}).values()):  # the executor keeps no public list
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    pool.shutdown(wait=True, cancel_futures=True)
