"""Run folders: who may write one, when an existing one is continued, refused or started over.

A stage (search, retrain, PT selection) writes into its ``out`` folder only while it holds the
folder's lock, so two processes never write one run.  A folder that already holds a run is never
overwritten by accident: without ``resume`` or ``force`` the stage stops at once with a message
naming both.  ``force`` removes the earlier run's files first, so that no stale result is left
beside a new checkpoint.  Resuming checks that the configuration (and the data) is the one the
checkpoint was written with.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.runs.files import read_json
from nas.schemas import validate_search_result
from nas.spaces import get_space
from nas.utils import NasError, ResumeMismatch, RunLock, clip


@contextmanager
def claim(out: str | Path, resume: bool, force: bool, owned: Iterable[str], what: str,
          flag_hint: str = "--resume to continue it or --force to start over") -> Iterator[None]:
    """Hold ``out`` for this process (a one-line error when another holds it) and decide what to
    do with a run already in it; ``owned`` are the file names this stage writes there.

    - ``resume``: the files stay (the stage continues from its checkpoint);
    - ``force``: the files are removed, the stage starts over;
    - neither: a one-line error when any of them exists."""
    with RunLock(out, what=what):
        present = check_claim(out, resume, force, owned, what, flag_hint)
        if present and not resume:
            for name in present:
                p = Path(out) / name
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        yield


def check_claim(out: str | Path, resume: bool, force: bool, owned: Iterable[str], what: str,
                flag_hint: str = "--resume to continue it or --force to start over") -> list[str]:
    """The files of ``owned`` already in ``out``; a one-line error when they hold a run that is
    neither to be resumed nor replaced, or a run of another kind.  ``claim`` calls it under the
    folder's lock; the command line calls it before any work (and before any tracking run)."""
    present = [name for name in owned if (Path(out) / name).exists()]
    if present and not resume and not force:
        other = run_kind(Path(out))
        if other is not None and other != what:
            raise NasError(f"{out}: holds a {other} run ({', '.join(present)}), not a {what}; choose another "
                           f"folder (or pass --force to replace the {other})")
        raise NasError(f"{out}: already holds a {what} run ({', '.join(present)}); pass {flag_hint}")
    return present


def run_kind(folder: Path) -> str | None:
    """What wrote ``folder/result.json``: a search (it records α or a search method's selection), a
    retrain (a test accuracy and no α); else a selection when ``selection.json`` is there; None
    when it cannot tell."""
    path = folder / "result.json"
    if not path.is_file() and (folder / "selection.json").is_file():
        return "selection"
    try:
        res = read_json(path) if path.is_file() else None
    except NasError:
        return None
    if not isinstance(res, dict):
        return None
    if "alpha" in res or "method_info" in res:
        return "search"
    if "test_acc" in res:
        return "retrain"
    return None


def check_selection_folder(out: str | Path, method: str) -> None:
    """A selection never writes into a retrain's folder, nor (PT, verify: their checkpoints) into a
    search's; a magnitude selection may sit beside its search's result."""
    other = run_kind(Path(out))
    if other == "retrain" or (other == "search" and method != "magnitude"):
        raise NasError(f"select: out {out} holds a {other} run (result.json); give the {method} selection a folder "
                       f"of its own (or pass --force to write there all the same)")


def config_difference(saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any],
                      free: Iterable[str]) -> str | None:
    """The first key (sorted) whose value differs between a checkpoint's config and the current one,
    as ``'key' was X, now Y``; keys in ``free`` may change; keys newer than the checkpoint count as
    their default.  None when nothing differs."""
    free = set(free)
    diff = sorted(k for k in now if k not in free and saved.get(k, defaults.get(k)) != now[k])
    if not diff:
        return None
    k = diff[0]
    return f"config key {k!r} was {clip(saved.get(k, defaults.get(k)), 80)}, now {clip(now[k], 80)}"


def check_resume(path: Path, saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any],
                 free: Iterable[str], saved_data: str | None = None, data: str | None = None) -> None:
    """Refuse to resume a checkpoint written with another configuration, or from other data (the
    prepared file's SHA-256: a different archive, subset of classes or image size)."""
    diff = config_difference(saved, now, defaults, free)
    if diff:
        raise ResumeMismatch(f"{path}: cannot resume, {diff}")
    if saved_data is not None and data is not None and saved_data != data:
        raise ResumeMismatch(f"{path}: cannot resume, the data changed (the checkpoint was trained on prepared data "
                       f"{saved_data[:12]}, this run reads {data[:12]}); use another --out or --force")


# --------------------------------------------------------------------------- search runs

SEARCH_CHECKPOINT = "checkpoint.pt"
SEARCH_RESULT = "result.json"
CHECKPOINT_FORMAT = "nas-search-checkpoint-v1"
# Keys that may differ between an interrupted search and its resumption (and between a cached
# search and the grid's request for it).  ``data`` may move: its content is checked through the
# prepared file's SHA-256 instead.
SEARCH_FREE_KEYS = frozenset({"out", "progress", "device", "cache_dir", "checkpoint_every", "data",
                              "eval_batch_size", "threads", "dist_timeout", "dist_check", "max_restarts"})
KEPT_DIR = "epochs"  # the supernets kept every `keep_every` epochs
# Files of a search run folder: a new run refuses a folder holding any of them (without --force).
SEARCH_RUN_FILES = (SEARCH_CHECKPOINT, SEARCH_RESULT, "snapshots", KEPT_DIR)


def kept_checkpoint(run: str | Path, epoch: int) -> Path:
    """The search checkpoint kept at the end of ``epoch`` (search key ``keep_every``)."""
    return Path(run) / KEPT_DIR / f"epoch-{epoch}.pt"


def kept_epochs(run: str | Path) -> list[int]:
    """The epochs whose supernet a search run kept, in order."""
    folder = Path(run) / KEPT_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt") if p.stem.split("-")[1].isdigit())


def search_result(search: Any, genotype: Any, alpha: Any, weights: Any, seconds: float,
                  history: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The ``result.json`` of a ``Search`` (of the loop or of a baseline, its data loaded): what was
    searched, the architecture it selected, and its history; ``extra`` keys follow."""
    space, method_info, config = search.space, search.method.describe(), search.cfg.model_dump()
    selection, dataset = search.method.selection, search.bundle.describe(search.cfg.dataset)
    device = str(search.device)
    return {
        "space": space.name,
        "method": method_info["name"],
        "order": config["order"],
        "selection": selection,
        "genotype": space.format_genotype(genotype),
        **({"genotype_json": space.genotype_json(genotype)} if space.genotype_json else {}),
        "ops": list(space.ops),
        "edge_ops": [list(o) for o in space.edge_ops],
        "alpha": alpha,
        "weights": weights,
        **({"mask": extra.pop("mask")} if "mask" in extra else {}),
        "method_info": method_info,
        "dataset": dataset,
        "device": device,
        "seconds": seconds,
        "config": config,
        "history": history,
        **extra,
    }


def read_search_result(run: str | Path) -> dict[str, Any]:
    """A search's ``result.json`` (or its run folder's), schema-checked: a one-line error names
    the file and the key that is wrong."""
    path = Path(run)
    if path.is_dir():
        path = path / SEARCH_RESULT
    if not path.is_file():
        raise NasError(f"{path}: search result not found (expected a run directory written by 'nas search')")
    res = read_json(path)
    space = get_space(res["space"]) if isinstance(res, dict) and isinstance(res.get("space"), str) else None
    return validate_search_result(res, str(path), space.alpha_shape if space else None)


def same_config(saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any],
                free: Iterable[str] = SEARCH_FREE_KEYS) -> bool:
    """Whether a finished run's config is the one asked for now (``free`` keys aside; keys newer
    than the run count as their default)."""
    return config_difference(saved, now, defaults, free) is None
