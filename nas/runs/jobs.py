"""A job: one stage of one run, with its fully resolved config and the digests of its inputs.

Every campaign (the pipeline, a grid, a sweep, a calibration) hands its stages to this module as
``Job`` objects.  A job's config is resolved once, here, before anything is keyed or saved: the
space's defaults fill the keys left unset (``channels``, ``cells``, a retrain's ``epochs`` ...) and
what a stage would rewrite itself (``channels_last`` off for supernets too narrow for it) is
rewritten first.  The stage then saves the very config the job was keyed on.

``key`` is the one cache key: the stage, the config keys that decide the result (a stage's free
keys such as ``out`` or ``device`` aside; a key newer than a saved run counts as the value the run
had before it existed) and the input digests.  ``cached`` reads a finished run back when the key of
what its folder holds equals the job's, and otherwise runs it, continuing its checkpoint
(``resume_or_restart``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.runs.resolve import resolve
from nas.utils import NasError, ResumeMismatch, sha256_file

__all__ = ["Job", "cached", "finished", "key", "resolve", "resume_or_restart", "run"]

STAGES = ("search", "select", "retrain")


def _free_keys(stage: str) -> frozenset[str]:
    from nas.rundir import SEARCH_FREE_KEYS
    from nas.select import PT_FREE_KEYS
    from nas.train import RESUME_FREE_KEYS

    return frozenset({"search": SEARCH_FREE_KEYS, "select": PT_FREE_KEYS, "retrain": RESUME_FREE_KEYS}[stage])


def _deciding(stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a complete config dict that decide a stage's result."""
    if stage == "select":
        from nas.select import selection_key

        return selection_key(dict(values))
    free = _free_keys(stage)
    return {k: v for k, v in values.items() if k not in free}


def _old_defaults(stage: str) -> dict[str, Any]:
    """What a key missing from a saved config meant: the stage's default, or for the settings that
    came with a changed behaviour, the behaviour before them."""
    base = config_mod.to_dict(config_mod.CONFIGS[stage]())
    if stage == "select":
        from nas.select import PT_LEGACY

        base.update(PT_LEGACY)
    return base


def key(stage: str, config: Mapping[str, Any], inputs: Mapping[str, str] | None = None) -> str:
    """The cache key of a run of ``stage`` with a (resolved, maybe saved) ``config`` dict and the
    input digests ``inputs``."""
    values = {**_old_defaults(stage), **config}
    payload = {"stage": stage, "config": _deciding(stage, values), "inputs": dict(sorted((inputs or {}).items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Job:
    """One stage of one run: ``config`` is resolved (``Job.of``), ``inputs`` maps each input file's
    role to its SHA-256 (a selection's ``search`` result)."""

    stage: str
    config: Any
    inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, cfg: Any, inputs: Mapping[str, str] | None = None) -> Job:
        if stage not in STAGES:
            raise NasError(f"job: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
        return cls(stage, resolve(stage, cfg), dict(inputs or {}))

    @classmethod
    def selection(cls, cfg: config_mod.SelectConfig) -> Job:
        """A selection on the finished search in ``cfg.run``, keyed on that search's result file."""
        from nas.rundir import SEARCH_RESULT

        return cls.of("select", cfg, {"search": sha256_file(Path(cfg.run) / SEARCH_RESULT)})

    @property
    def key(self) -> str:
        return key(self.stage, config_mod.to_dict(self.config), self.inputs)

    @property
    def out(self) -> Path:
        return Path(self.config.out)


# --------------------------------------------------------------------------- running a job

def resume_or_restart(stage: Callable[..., dict[str, Any]], cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ``stage(cfg, resume=True)``; when the checkpoint in ``cfg.out`` was written with another
    config or other data (``ResumeMismatch``), start that stage over (``force``) instead of refusing."""
    try:
        return stage(cfg, resume=True, **kwargs)
    except ResumeMismatch as exc:
        print(f"{exc}; starting over", file=sys.stderr)
        return stage(cfg, resume=False, force=True, **kwargs)


def run(job: Job, callback: Any = None, restart: bool = True) -> dict[str, Any]:
    """Run a job's stage in its folder, continuing its checkpoint; a checkpoint of another config is
    started over (``restart``) or refused with ``ResumeMismatch`` (a grid keeps a finished search
    whose protocol changed rather than overwrite it).  A selection's result records its key."""
    from nas import stages

    if job.stage == "search":
        if not restart:
            return stages.search_stage(job.config, resume=True, callback=callback)
        return resume_or_restart(stages.search_stage, job.config, callback=callback)
    if job.stage == "retrain":
        return resume_or_restart(stages.retrain_stage, job.config)
    sel = resume_or_restart(stages.select_stage, job.config)
    if not job.config.out:
        return sel
    from nas.runs.files import write_json

    sel = {**sel, "search_digest": job.inputs.get("search"), "select_config": _select_record(job.config)}
    write_json(job.out / "selection.json", sel)
    return sel


def _select_record(cfg: Any) -> dict[str, Any]:
    free = _free_keys("select")
    return {k: v for k, v in config_mod.to_dict(cfg).items() if k not in free}


def finished(job: Job) -> dict[str, Any] | None:
    """What the job's folder holds when it is a finished run with the job's key; else None (a
    damaged result is taken for no result: the run finishes again from its checkpoint)."""
    found = _read_finished(job)
    if found is None:
        return None
    result, saved_key = found
    return result if saved_key == job.key else None


def _read_finished(job: Job) -> tuple[dict[str, Any], str] | None:
    """A finished run's result and the key it was made with, or None."""
    from nas.runs.files import read_json

    if not job.config.out:
        return None
    try:
        if job.stage == "search":
            from nas.rundir import SEARCH_RESULT, read_search_result

            if not (job.out / SEARCH_RESULT).is_file():
                return None
            res = read_search_result(job.out)
            return res, key("search", res["config"])
        name = "selection.json" if job.stage == "select" else "result.json"
        if not (job.out / name).is_file():
            return None
        res = read_json(job.out / name)
    except NasError as exc:
        print(f"{exc}; finishing the {job.stage} again from its checkpoint", file=sys.stderr, flush=True)
        return None
    if not isinstance(res, dict):
        return None
    if job.stage == "select":
        saved = res.get("select_config")
        if not isinstance(saved, dict) or not isinstance(res.get("genotype"), str):
            return None
        return res, key("select", saved, {"search": res.get("search_digest")})
    if not isinstance(res.get("config"), dict) or "test_acc" not in res:
        return None
    return res, key("retrain", res["config"])


def cached(job: Job, callback: Any = None, restart: bool = True) -> tuple[dict[str, Any], bool]:
    """The job's result and whether it was read back (``finished``) rather than computed (``run``)."""
    old = finished(job)
    if old is not None:
        return old, True
    return run(job, callback, restart), False
