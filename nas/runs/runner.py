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
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                collect(fut.result())
            except Exception as exc:
                failed(futures[fut], exc)
