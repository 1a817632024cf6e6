"""Optuna sweeps of the regularisation strengths: SDARTS-ADV ε, SDARTS-RS σ, DrNAS λ.

A trial searches with the sampled strength, reporting the supernet's validation accuracy after
every epoch to the pruner, selects by magnitude, and returns the objective:

- ``retrain`` (default): the selected architecture's accuracy on a held-out validation split of the
  training images after a short retrain (the ``retrain`` section of the params file, with
  ``holdout``); the test split is never looked at;
- ``benchmark``: its NAS-Bench-201 CIFAR-10 test accuracy from the table (NB201 space only).

The study lives in a database (``sqlite:///runs/optuna.db`` by default, any SQLAlchemy URL for a
server shared by several machines); trials use Optuna's ask/tell interface, so workers in other
processes or on other machines can run trials of the same study at once.  A rerun continues the
study: finished trials are kept and only the missing ones run.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas import stopping
from nas.methods import tuned_strengths
from nas.spaces import get_space
from nas.utils import NasError, write_csv

# method -> (config key, low, high): sampled log-uniformly; declared by each method (``TUNED``)
STRENGTHS: dict[str, tuple[str, float, float]] = tuned_strengths()
MODES = ("retrain", "benchmark")
# What the objective is, as the study names it (optuna-dashboard and the trials table show it).
METRIC_NAMES = {"retrain": "holdout_val_acc_after_retrain", "benchmark": "nb201_cifar10_test_acc"}
DEFAULT_STORAGE = Path("runs") / "optuna.db"


def default_storage() -> str:
    """``NAS_OPTUNA_STORAGE``, else ``runs/optuna.db`` under the current folder (as an absolute path)."""
    return normalise_db_url(os.environ.get("NAS_OPTUNA_STORAGE") or f"sqlite:///{DEFAULT_STORAGE.resolve()}")


def make_pruner(spec: str = "median"):
    """``median`` (MedianPruner: stop a trial whose supernet accuracy is below the median of earlier
    trials at the same epoch, once two trials have finished, from epoch 2 on), ``none``."""
    import optuna

    if spec == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if spec == "none":
        return optuna.pruners.NopPruner()
    raise NasError(f"pruner: unknown {spec!r} (expected median or none)")


def check(method: str, mode: str) -> tuple[str, float, float]:
    if method not in STRENGTHS:
        raise NasError(f"sweep: method {method!r} has no strength to tune (expected one of {', '.join(STRENGTHS)})")
    if mode not in MODES:
        raise NasError(f"sweep: mode {mode!r} (expected retrain or benchmark)")
    return STRENGTHS[method]


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats (``NAS_OPTUNA_HEARTBEAT``, default 60); a trial
    silent for twice that (a killed worker) is marked FAIL and retried once."""
    return int(_env_seconds("NAS_OPTUNA_HEARTBEAT", "60", int, 1))


def _env_seconds(name: str, default: str, kind: type, least: float) -> float:
    """A number of seconds from the environment variable ``name``, checked: at least ``least``."""
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        what = "whole seconds" if kind is int else "seconds"
        raise NasError(f"{name}: expected {what}, got {raw[:40]!r}") from None
    if value < least:
        raise NasError(f"{name}: expected >= {least:g} second{'s' if least != 1 else ''}, got {value:g}")
    return value


def normalise_db_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs name psycopg 3 (the ``cluster`` extra) as their
    driver, whatever SQLAlchemy's default for the bare scheme is; other URLs are kept."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def is_server_db(url: str) -> bool:
    """Whether the study lives in a database server that several machines can share."""
    return not url.startswith("sqlite")


def storage_lock(url: str) -> Any:
    """The lock under which schema creation and the claim of a trial happen, one process at a
    time: a file lock beside a SQLite study database; for PostgreSQL, an advisory lock held by the
    database itself, so that processes on machines that share nothing but the database are
    serialised too (a process that dies releases it with its connection)."""
    from filelock import FileLock

    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(db) + ".lock")
    if url.startswith("postgresql"):
        return _advisory_lock(url)
    raise NasError(f"storage: {url.split('://')[0]}:// is not supported for a study shared by several processes "
                   f"(expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB)")


_ENGINES: dict[str, Any] = {}


@contextmanager
def _advisory_lock(url: str):
    import hashlib

    import sqlalchemy as sa

    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(url, poolclass=sa.pool.NullPool)
    key = int.from_bytes(hashlib.sha256(b"nas-optuna-study-lock").digest()[:8], "big", signed=True)
    with _ENGINES[url].connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def make_storage(url: str):
    """Optuna's database storage with heartbeats: a RUNNING trial whose worker died is found
    (``fail_stale_trials``), marked FAIL and enqueued again once (``RetryFailedTrialCallback``)."""
    import warnings

    import optuna.storages as storages

    url = normalise_db_url(url)
    interval = heartbeat_interval()
    if (url, interval) not in _STORES:
        with storage_lock(url), warnings.catch_warnings():  # the first use creates the schema
            warnings.simplefilter("ignore")  # heartbeats are marked experimental
            if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
            # a database server that restarted leaves dead connections in the pool: each one is
            # checked before use and replaced (SQLAlchemy's pre-ping); a SQLite writer waits up to 60 s
            # for another process's write instead of SQLite's default 5 s
            engine = ({"engine_kwargs": {"pool_pre_ping": True}} if is_server_db(url)
                      else {"engine_kwargs": {"connect_args": {"timeout": 60}}})
            _STORES[(url, interval)] = storages.RDBStorage(url, heartbeat_interval=interval,
                                                           grace_period=2 * interval, **retry, **engine)
    return _STORES[(url, interval)]


def db_retry_seconds() -> float:
    """How long a running trial waits for its study's database to come back (``NAS_DB_RETRY``,
    default 120 seconds) before the trial fails."""
    return _env_seconds("NAS_DB_RETRY", "120", float, 0)


def _transient(exc: BaseException) -> bool:
    """A database error that may pass (the server restarting, a dropped connection), not a refusal."""
    import optuna
    import sqlalchemy.exc as sa_exc

    return isinstance(exc, (optuna.exceptions.StorageInternalError, sa_exc.OperationalError,
                            sa_exc.InterfaceError)) or (isinstance(exc, sa_exc.DBAPIError)
                                                        and exc.connection_invalidated)


def with_db_retry(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, tried again while the database is unreachable, for up to
    ``db_retry_seconds()``: a study's server restarted during a trial costs the trial a wait, not
    its result.  Other errors, and the last transient one, are raised."""
    import time

    deadline = time.monotonic() + db_retry_seconds()
    pause = 1.0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + pause > deadline:
                raise
            print(f"{what}: database unreachable ({type(exc).__name__}); retrying in {pause:g} s", file=sys.stderr,
                  flush=True)
            time.sleep(pause)
            pause = min(2 * pause, 10.0)


def retried_from(trial) -> int | None:
    """The number of the stale trial that ``trial`` re-runs, or None."""
    import optuna.storages as storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return cls.retried_trial_number(trial)


_STORES: dict[tuple[str, int], Any] = {}


def open_study(name: str, storage: str | None, method: str, mode: str, pruner: str = "median", seed: int = 0):
    """Create or load the study; a study keeps the method and mode it was made for."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check(method, mode)
    storage = storage or default_storage()
    store = make_storage(storage)
    # created and labelled under the study's lock: a process that opens the study at the same time
    # sees it with both its method and its mode, never half-labelled
    with storage_lock(storage):
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(pruner))
        attrs = study.user_attrs
        if not attrs:
            study.set_user_attr("method", method)
            study.set_user_attr("mode", mode)
        if "token" not in attrs:  # the study's identity in its trials' folders: a fresh database, a new token
            study.set_user_attr("token", uuid.uuid4().hex[:8])
    if attrs and (attrs.get("method") != method or attrs.get("mode") != mode):
        raise NasError(f"study {name!r} in {storage} was made for method {attrs.get('method')!r} mode "
                       f"{attrs.get('mode')!r}, not {method!r} {mode!r}: pick another study name")
    if study.metric_names != [METRIC_NAMES[mode]]:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental, stable since Optuna 3.2
            study.set_metric_names([METRIC_NAMES[mode]])
    return study


def finished(study) -> int:
    import optuna

    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)


def running(study) -> int:
    import optuna

    return sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)


def fail_stale(study, storage: str | None) -> None:
    """Mark the RUNNING trials whose worker stopped sending heartbeats as FAIL (and enqueue their
    retry)."""
    import warnings

    from optuna.storages import fail_stale_trials

    with storage_lock(storage or default_storage()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API
        fail_stale_trials(study)


def claim_trial(study, storage: str | None, max_trials: int | None, seed: int = 0):
    """``study.ask()`` under the storage lock, unless the study already has ``max_trials`` complete,
    pruned or running trials (then None): concurrent workers never overshoot that total.  The new
    trial's first heartbeat is recorded before the lock is released."""
    import warnings

    import optuna

    with storage_lock(storage or default_storage()), warnings.catch_warnings():
        # experimental API; "heartbeat ... supposed to be used with Study.optimize": here the
        # heartbeat is sent by this module's own thread
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
        if max_trials is not None and finished(study) + running(study) >= max_trials:
            return None
        # the sampler is seeded from the number the new trial gets (the study's trial count, read
        # under the lock): a sequential sweep is reproducible, and no two trials of the study, on any
        # machine, share a seed
        study.sampler = optuna.samplers.TPESampler(seed=(seed * 1_000_003 + len(study.trials) * 101) % 2**31)
        trial = study.ask()
        _beat(study, trial, storage)
    return trial


def tell(study, trial, storage: str | None, value: float | None = None, state: Any = None, quiet: bool = False) -> bool:
    """``study.tell`` under the storage lock that ``claim_trial`` reaps stale trials under, so that a
    trial reaped as stale (its heartbeat silent past the grace period, its retry already enqueued)
    never has its FAIL overwritten by a late result.  False, with a line on stderr, when the trial
    had been reaped: its result is dropped and the retry stands in for it."""
    import optuna

    with storage_lock(storage or default_storage()):
        store, trial_id = _stored(study, trial, storage)
        now = store.get_trial(trial_id).state
        if now != optuna.trial.TrialState.RUNNING:
            if quiet:  # a FAIL for a trial already finished: nothing to say
                return False
            print(f"trial {trial.number}: found {now.name} when its result came (taken for a dead worker's: no "
                  f"heartbeat for over {2 * heartbeat_interval()} s); the result is dropped, the retry stands in",
                  file=sys.stderr, flush=True)
            return False
        study.tell(trial, value, state=state)
    return True


def _stored(study, trial, storage: str | None) -> tuple[Any, int]:
    """The study's storage and the trial's id in it."""
    store = make_storage(storage or default_storage())
    return store, store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name),
                                                                trial.number)


def _beat(study, trial, storage: str | None = None) -> None:
    store, trial_id = _stored(study, trial, storage)
    store.record_heartbeat(trial_id)


class Heartbeat:
    """A daemon thread recording the trial's heartbeat every ``heartbeat_interval()`` seconds."""

    def __init__(self, study, trial, storage: str | None):
        import threading

        self.study, self.trial, self.storage = study, trial, storage
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial.number}")

    def _run(self) -> None:
        interval = heartbeat_interval()
        wait = interval
        while not self.stop.wait(wait):
            try:
                _beat(self.study, self.trial, self.storage)
                wait = interval
            except Exception as exc:  # a missed beat is tried again soon, well inside the grace period
                wait = max(1, interval // 5)
                print(f"trial {self.trial.number}: heartbeat not recorded ({type(exc).__name__}: "
                      f"{str(exc)[:120]}); retrying in {wait} s", file=sys.stderr, flush=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@dataclass(frozen=True)
class TrialJob:
    """What one trial needs, resolved on the client, so that a worker on another machine (or in
    another folder) takes nothing from its own folder or environment: the study (``name``, its
    database ``storage``, ``pruner``, sampler ``seed`` and ``max_trials`` cap), the method and
    objective ``mode``, the params file (``params`` names it in messages, ``params_text`` is its
    content, written into the trial's folder), the ``--set`` items, the trials' folder ``out``,
    tracking (``track``, ``tracking_uri``, the study's ``parent_run``, the sweep call's ``client``
    id) and torch ``threads``."""

    name: str
    storage: str | None
    method: str
    mode: str
    params: str
    sets: tuple[str, ...] = ()
    out: str = "runs/sweep"
    pruner: str = "median"
    seed: int = 0
    track: bool = True
    parent_run: str | None = None
    threads: int = 0
    max_trials: int | None = None
    params_text: str | None = None
    tracking_uri: str | None = None
    client: str | None = None  # the sweep call that made the job: its trials' runs carry it (tags.sweep_client)


def run_trial(job: TrialJob) -> dict[str, Any] | None:
    """Ask the study for one trial, run it, tell the result.  Returns the trial's row, or None when
    the study already has ``max_trials`` complete, pruned or running trials.  The sampler is seeded
    from (seed, the trial's number): a sequential sweep is reproducible and no two trials share a
    seed.  A heartbeat is recorded while the trial runs."""
    import optuna

    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    check(job.method, job.mode)
    tag = f"study {job.name}"
    study = with_db_retry(tag, open_study, job.name, job.storage, job.method, job.mode, job.pruner, job.seed)
    trial = with_db_retry(tag, claim_trial, study, job.storage, job.max_trials, job.seed)
    if trial is None:
        return None
    with Heartbeat(study, trial, job.storage):
        try:
            return _run_trial(study, trial, job)
        except BaseException:  # whatever stopped the trial, it does not stay RUNNING
            tell(study, trial, job.storage, state=optuna.trial.TrialState.FAIL, quiet=True)
            raise


def study_token(trial: Any) -> str:
    """The token ``open_study`` gave the trial's study (its identity beyond its name and number)."""
    token = trial.study.user_attrs.get("token") if hasattr(trial, "study") else None
    if not isinstance(token, str) or not token.isalnum():
        raise NasError(f"study {trial.study.study_name!r}: no token (open it with nas.sweep.open_study)")
    return token


def trial_folder(out: str | Path, token: str, number: int) -> Path:
    """A trial's run folder: ``<out>/trial-<number>-<token>``, so a study started afresh (a new
    database, the same name and folder) never meets the folders of an earlier one."""
    return Path(out) / f"trial-{number:04d}-{token}"


def _trial_configs(trial: Any, job: TrialJob, token: str, strength: tuple[str, float]) -> tuple[Path, dict[str, Any]]:
    """The trial's folder (its study's ``token`` in the name) and its stage configs, the sampled
    strength (key, value) set."""
    from nas.utils import atomic_write

    (key, value), root = strength, trial_folder(job.out, token, trial.number)
    params = job.params
    if job.params_text is not None:  # the client's params file, as it was when the sweep started
        root.mkdir(parents=True, exist_ok=True)
        params = str(atomic_write(root / "params.yaml", lambda p: p.write_text(job.params_text)))
    per = config_mod.pipeline_configs(params, root, [*job.sets, f"search.{key}={value}"], method=job.method)
    if job.mode == "benchmark" and get_space(per["search"].space).benchmark is None:
        raise NasError(f"sweep: mode 'benchmark' needs search.space nb201, got {per['search'].space!r}")
    return root, per


def _run_trial(study: Any, trial: Any, job: TrialJob) -> dict[str, Any]:
    import optuna

    from nas import tracking, tracking_stages
    from nas.runs import jobs

    key, lo, hi = check(job.method, job.mode)
    method, mode, storage_url = job.method, job.mode, job.storage
    value, token = trial.suggest_float(key, lo, hi, log=True), study_token(trial)
    root, per = _trial_configs(trial, job, token, (key, value))
    scfg, sel_cfg = per["search"], per["select"]
    tracker = tracking.tracker(job.track, uri=job.tracking_uri)
    run_id = _start_trial_run(tracker, trial, job, (key, value, token), per)

    reported: list[float | None] = [None]  # the last supernet accuracy reported (the pruning signal)

    def on_epoch(st: Any) -> None:
        rec = st.history[-1]
        reported[0] = 100.0 * rec["val_acc"]
        tag = f"trial {trial.number}"
        with_db_retry(tag, trial.report, reported[0], step=st.epoch)
        tracker.log_metrics(run_id, {"supernet_val_acc": 100.0 * rec["val_acc"]}, step=st.epoch)
        if with_db_retry(tag, trial.should_prune):
            raise optuna.TrialPruned(f"supernet val acc {100 * rec['val_acc']:.2f} at epoch {st.epoch}")

    row: dict[str, Any] = {"number": trial.number, key: value, "method": method, "mode": mode}
    try:
        searched = jobs.run(jobs.Job.of("search", scfg), callback=on_epoch)
        tracking_stages.log_search(tracker, run_id, searched)  # α history and charts, cell, eigenvalues
        sel = jobs.run(jobs.Job.selection(sel_cfg))
        row["genotype"] = sel["genotype"]
        for attr in ("genotype", "space"):
            with_db_retry(f"trial {trial.number}", trial.set_user_attr, attr, sel[attr])
        objective = _objective(mode, sel["genotype"], per["retrain"])
    except optuna.TrialPruned as exc:
        with_db_retry(f"trial {trial.number}", tell, study, trial, storage_url, state=optuna.trial.TrialState.PRUNED)
        print(f"trial {trial.number}: {key}={value:.4g} pruned ({exc})", file=sys.stderr, flush=True)
        tracker.set_tags(run_id, {"state": "PRUNED"})
        tracker.log_run_folder(run_id, root)  # its search so far: α history, checkpoint, config
        tracker.end(run_id)
        return {**row, "state": "PRUNED", "value": None, "supernet_val_acc": reported[0]}
    except BaseException as exc:
        tell(study, trial, storage_url, state=optuna.trial.TrialState.FAIL, quiet=True)
        status = stopping.status(exc)
        if status == "FAILED":  # a failed trial keeps what it wrote; a stopped one ends at once
            _log_files_if_possible(tracker, run_id, root)
        tracker.end(run_id, status)
        raise
    if not with_db_retry(f"trial {trial.number}", tell, study, trial, storage_url, objective):  # reaped meanwhile
        tracker.end(run_id, "FAILED")
        return {**row, "state": "FAIL", "value": None, "supernet_val_acc": reported[0]}
    print(f"trial {trial.number}: {key}={value:.4g} -> {objective:.2f} ({mode}) {row['genotype']}",
          file=sys.stderr, flush=True)
    _log_finished(tracker, run_id, objective, scfg.space, row["genotype"], root,
                  trial_run_name(trial.number, method, key, value, objective))
    return {**row, "state": "COMPLETE", "value": objective, "supernet_val_acc": reported[0]}


def _start_trial_run(tracker: Any, trial: Any, job: TrialJob, strength: tuple[str, float, str],
                     per: dict[str, Any]) -> Any:
    """The trial's MLflow run (``strength``: the sampled key and value, the study's token), nested
    in the study's parent; a retry ends the run of the trial it stands in for (its worker died, so
    that run could not end itself)."""
    from nas import tracking_stages

    (key, value, token), scfg, name = strength, per["search"], trial.study.study_name
    run_id = tracker.start(trial_run_name(trial.number, job.method, key, value), {
        "stage": "trial", "method": job.method, "space": scfg.space, "dataset": scfg.dataset, "seed": scfg.seed,
        "objective": job.mode, "selection": per["select"].method, "study": name, "trial": trial.number,
        "study_token": token, **({"sweep_client": job.client} if job.client else {})}, parent=job.parent_run)
    tracker.log_params(run_id, {key: value, "objective": job.mode, "study": name, "trial": trial.number})
    store, trial_id = _stored(trial.study, trial, job.storage)
    stale = retried_from(store.get_trial(trial_id))
    if stale is not None:
        tracking_stages.end_reaped(tracker, name, token, stale)
    return run_id


def trial_run_name(number: int, method: str, key: str, value: float, objective: float | None = None) -> str:
    """A trial's MLflow run name, what the runs table shows first: its objective (once known, in
    percent), then its strength, then the trial: ``93.28%-drnas_lambda=0.0123-trial-4-drnas``."""
    head = f"{objective:.2f}%-" if objective is not None else ""
    return f"{head}{key}={value:.3g}-trial-{number}-{method}"


def _log_files_if_possible(tracker: Any, run_id: str, root: Path) -> None:
    """A failed trial's run folder as artifacts; a tracking store that fails too is named in one
    line, and the trial's own error is the one raised."""
    try:
        tracker.log_run_folder(run_id, root)
    except Exception as err:
        print(f"trial run {run_id}: files not logged ({type(err).__name__})", file=sys.stderr, flush=True)


def _objective(mode: str, genotype: str, rcfg: Any) -> float:
    """A selected cell's objective: its NAS-Bench-201 CIFAR-10 test accuracy (``benchmark``) or
    its validation accuracy on a held-out split after the retrain (``retrain``; 20% held out
    when the params file holds out none), in percent."""
    from nas import stages
    from nas.runs import jobs

    if mode == "benchmark":
        return stages.lookup_stage(genotype, "cifar10")["test_accuracy"]
    if rcfg.holdout <= 0:
        rcfg = config_mod.from_dict("retrain", {**config_mod.to_dict(rcfg), "holdout": 0.2})
    rcfg = config_mod.from_dict("retrain", {**config_mod.to_dict(rcfg), "genotype": genotype})
    return 100.0 * jobs.run(jobs.Job.of("retrain", rcfg))["val_acc"]


def _log_finished(tracker: Any, run_id: str, objective: float, space: str, genotype: str, root: Path,
                  name: str) -> None:
    from nas import tracking

    tracker.log_metrics(run_id, {"objective": objective})
    tracker.rename(run_id, name)
    look = tracking.nb201_lookup(space, genotype) if tracker.active else None
    if look:  # the trial's cell in the NAS-Bench-201 table, comparable with pipeline and grid runs
        tracker.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})
    tracker.set_tags(run_id, {"state": "COMPLETE", "genotype": genotype})
    tracker.log_run_folder(run_id, root)  # the results come home through the tracking server
    tracker.end(run_id)


def trials_table(study) -> list[dict[str, Any]]:
    """The study's trials as validated rows (number, state, value, the strength, method, mode)."""
    from nas.schemas import validate_trials

    key = STRENGTHS[study.user_attrs["method"]][0]
    rows = []
    for t in study.trials:
        # Optuna stores a pruned trial's last reported value (the supernet's validation accuracy) as
        # its value; that is not the objective, so it goes to its own column.
        complete = t.state.name == "COMPLETE"
        v = t.value if complete and t.value is not None and math.isfinite(t.value) else None
        reports = t.intermediate_values
        last = float(reports[max(reports)]) if reports else None
        rows.append({"number": t.number, "state": t.state.name, "value": v, "supernet_val_acc": last,
                     key: t.params.get(key), "genotype": t.user_attrs.get("genotype"),
                     "space": t.user_attrs.get("space"),
                     "method": study.user_attrs["method"], "mode": study.user_attrs["mode"]})
    return validate_trials(rows, f"study {study.study_name}")


OBJECTIVES = {"benchmark": "NAS-Bench-201 CIFAR-10 test accuracy (table)",
              "retrain": "validation accuracy of the selected cell after a short retrain (held-out split)"}


def study_report(study, name: str, method: str, mode: str, out: str | Path) -> dict[str, Any]:
    """A study's trials as ``trials.csv`` in ``out``, a markdown table, the rows and the best trial
    (``best`` is None before any trial completed); ``key`` names the tuned strength."""
    csv_path = write_trials_csv(study, Path(out) / "trials.csv")
    table = trials_table(study)
    complete = [r for r in table if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    key = STRENGTHS[method][0]
    lines = [f"# nas-sweep {name}", "", f"objective: {OBJECTIVES[mode]}", "", f"| trial | state | {key} | value |",
             "|---|---|---|---|"]
    for r in table:
        value = "" if r["value"] is None else f"{r['value']:.2f}"
        strength = "" if r[key] is None else f"{r[key]:.4g}"
        lines.append(f"| {r['number']} | {r['state']} | {strength} | {value} |")
    if best:
        lines += ["", f"best: {key} = {best[key]:.4g} -> {best['value']:.2f}"]
    return {"csv": csv_path, "table": table, "best": best, "key": key, "markdown": "\n".join(lines) + "\n",
            "objective": OBJECTIVES[mode]}


def write_trials_csv(study, path: str | Path) -> Path:
    rows = trials_table(study)
    return write_csv(path, rows, list(rows[0]) if rows else ["number"])
