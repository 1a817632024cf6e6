"""A job's run folder kept in the tracking server's artifact store while the job runs, so that a job
whose worker died continues on another worker from its last stored checkpoint, with no folder
shared between the hosts.

While a shipped grid cell runs, a thread uploads the files of its run folder that changed
(checkpoints, results, selections) every ``every`` seconds to one MLflow run of the experiment
``nas-progress``, found again by the job's identity (the ``progress_key`` tag: a digest of the
protocol's text, the cell and its data).  A job that starts on a machine where its folder is empty
first downloads what that run holds, so the search, selection or retraining resumes from the stored
checkpoint (the checkpoint itself is checked as it is read: config and data must match); the run's
``restored`` tag counts these restores and ``restored_by`` names the last host and process.  A job that
fails or is stopped uploads once more before it ends; a killed one keeps what the last upload sent.

``NAS_PROGRESS_EVERY`` (seconds, default 60, read on the client) sets the interval.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.utils import NasError

EXPERIMENT = "nas-progress"
EVERY_ENV = "NAS_PROGRESS_EVERY"
DEFAULT_EVERY = 60.0
EVERY_RANGE = (0.5, 86_400.0)
SUFFIXES = (".pt", ".json", ".yaml", ".csv", ".npz")  # what a resumed job reads back


@dataclass(frozen=True)
class ProgressStore:
    """Where a job keeps its progress: the tracking server, the job's identity, its label (the
    run's name) and the upload interval in seconds."""

    uri: str
    key: str
    label: str
    every: float = DEFAULT_EVERY


def progress_key(*parts: str) -> str:
    """The identity of a job's progress: a digest of what decides its results."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def interval_from_env() -> float:
    """``NAS_PROGRESS_EVERY`` in seconds (default 60); a bad value is refused in one line."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = float("nan")
    lo, hi = EVERY_RANGE
    if not lo <= every <= hi:
        raise NasError(f"{EVERY_ENV}={raw!r}: expected seconds between {lo:g} and {hi:g}")
    return every


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """The folder's files that a resumed job reads, by relative path, with their size and mtime."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."):
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


class Progress:
    """The stored progress of one job's run folder (see the module's docstring)."""

    def __init__(self, store: ProgressStore, folder: Path):
        from nas import tracking

        self.store, self.folder = store, Path(folder)
        self.tracker = tracking.Tracker(store.uri, experiment=EXPERIMENT)
        self.run_id = self._find_or_start()
        self.sent: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _find_or_start(self) -> str:
        from nas.tracking import quoted

        t = self.tracker
        found = t.client.search_runs([t.experiment_id], f"tags.progress_key = '{quoted(self.store.key)}'",
                                     max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            t.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        return t.start(f"progress-{self.store.label}", {"stage": "progress", "progress_key": self.store.key,
                                                        "job": self.store.label})

    def restore(self) -> int:
        """Into an empty (or absent) folder: the stored files; how many came back."""
        if self.folder.is_dir() and _files(self.folder):
            return 0  # this machine's own run folder wins
        names = {a.path for a in self.tracker.client.list_artifacts(self.run_id)}
        if not names:
            return 0
        with tempfile.TemporaryDirectory(prefix="nas-progress-") as tmp:
            got = Path(self.tracker.client.download_artifacts(self.run_id, "", tmp))
            files = [p for p in got.rglob("*") if p.is_file() and p.suffix in SUFFIXES]
            for p in files:  # paths made from the download folder's own listing: they stay inside
                dest = self.folder / p.relative_to(got)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(p), dest)
        self.sent = _files(self.folder)
        # the run counts its restores, and names the last taker: what the runs table shows of a retry
        done = self.tracker.client.get_run(self.run_id).data.tags.get("restored", "0")
        self.tracker.set_tags(self.run_id, {"restored": int(done) + 1 if done.isdigit() else 1,
                                            "restored_by": f"{os.uname().nodename}:{os.getpid()}"})
        return len(files)

    def upload(self) -> int:
        """The files that changed since the last upload; how many were sent."""
        with self._lock:
            now = _files(self.folder) if self.folder.is_dir() else {}
            changed = [rel for rel, stamp in sorted(now.items()) if self.sent.get(rel) != stamp]
            for rel in changed:
                parent = Path(rel).parent.as_posix()
                self.tracker.log_file(self.run_id, self.folder / rel, None if parent == "." else parent)
                self.sent[rel] = now[rel]
            return len(changed)

    def _loop(self) -> None:
        while not self._stop.wait(self.store.every):
            try:
                self.upload()
            except Exception as exc:  # the tracking server away for a while: the next round retries
                print(f"{self.store.label}: progress not stored this time ({type(exc).__name__})", file=sys.stderr,
                      flush=True)

    @contextmanager
    def uploading(self):
        """Upload in the background while the body runs; once more if it fails or is stopped."""
        from nas import stopping

        thread = threading.Thread(target=self._loop, name="progress-upload", daemon=True)
        thread.start()
        try:
            yield self
        except BaseException as exc:
            self._stop.set()
            thread.join()
            status = stopping.status(exc)
            self._best_effort("the last progress", lambda: (self.upload(), self.tracker.end(self.run_id, status)))
            raise
        self._stop.set()
        thread.join()
        self._best_effort("the end of the progress run", lambda: self.tracker.end(self.run_id))

    def _best_effort(self, what: str, fn: Any) -> None:
        """The job's own outcome stands whatever the tracking server says: a failure here is a warning."""
        try:
            fn()
        except Exception as exc:
            print(f"{self.store.label}: {what} not stored ({type(exc).__name__})", file=sys.stderr, flush=True)


@contextmanager
def kept(store: ProgressStore | None, folder: Path, label: str):
    """Run the body with ``folder``'s progress stored in ``store`` (nothing when ``store`` is None),
    after restoring it into an empty ``folder``."""
    if store is None:
        yield None
        return
    try:
        progress = Progress(store, folder)
        n = progress.restore()
    except Exception as exc:  # the tracking server away: the job runs, only without stored progress
        print(f"{label}: no stored progress this time ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr,
              flush=True)
        yield None
        return
    if n:
        print(f"{label}: continuing from its stored progress ({n} files from run {progress.run_id})",
              file=sys.stderr, flush=True)
    with progress.uploading():
        yield progress


def store_for(uri: str | None, label: str, *identity: str) -> ProgressStore | None:
    """The progress store of a job shipped to a worker: the tracking server when the client logs to
    one (a file or SQLite store on the client is out of a worker's reach: None)."""
    from nas.tracking import local_store

    if not uri or local_store(uri):
        return None
    return ProgressStore(uri, progress_key(*identity), label, interval_from_env())
