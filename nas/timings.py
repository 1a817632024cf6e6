"""Wall-clock seconds live beside a run's files, not in them.

A run's result and checkpoint hold what the run computed; the seconds it took differ from machine
to machine and from run to run.  They are written to ``timings.json`` in the same folder, one
entry per file, and merged back when the file is read through this module, so that code reading a
result sees the same dictionary as before.  Two runs of the same stage on the same input then write
byte-identical files (DVC's ``.dvcignore`` leaves ``timings.json`` out of an output's hash, so two
fresh clones get the same ``dvc.lock``).

A key is a timing when it is ``seconds`` or ends in ``_seconds`` and holds a number.  A file read
without its ``timings.json`` (a run fetched with ``dvc checkout`` or copied without it) simply has
no timing keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas import utils

TIMINGS = "timings.json"


def is_timing(key: Any, value: Any) -> bool:
    return (isinstance(key, str) and (key == "seconds" or key.endswith("_seconds"))
            and isinstance(value, (int, float)) and not isinstance(value, bool))


def split(obj: Any) -> tuple[Any, Any]:
    """``(obj without its timing keys, the timing keys in the same nesting)``; the second is None
    when ``obj`` holds none, and then the first is ``obj`` itself (a state dict keeps its type and
    metadata).  Lists become lists of per-item trees; ``obj`` is not changed."""
    if isinstance(obj, dict):
        tree: dict[Any, Any] = {}
        parts: dict[Any, Any] = {}
        for k, v in obj.items():
            if is_timing(k, v):
                tree[k] = v
                continue
            parts[k], sub = split(v)
            if sub is not None:
                tree[k] = sub
        return (parts, tree) if tree else (obj, None)
    if isinstance(obj, list):
        pairs = [split(v) for v in obj]
        subs = [s for _, s in pairs]
        if all(s is None for s in subs):
            return obj, None
        return [c for c, _ in pairs], subs
    return obj, None


def merge(obj: Any, tree: Any) -> Any:
    """Put the timing keys of ``tree`` back into ``obj`` (in place; returned).  Parts of the tree
    that no longer fit the object are ignored."""
    if isinstance(obj, dict) and isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(v, (dict, list)):
                if k in obj:
                    merge(obj[k], v)
            else:
                obj[k] = v
    elif isinstance(obj, list) and isinstance(tree, list):
        for item, sub in zip(obj, tree):
            if sub is not None:
                merge(item, sub)
    return obj


def _sidecar(path: Path) -> Path:
    return path.parent / TIMINGS


def _entries(path: Path) -> dict[str, Any]:
    side = _sidecar(path)
    if not side.is_file():
        return {}
    try:
        doc = utils.read_json(side)
    except utils.NasError:  # a damaged timings file costs the timings, never the run
        return {}
    return doc if isinstance(doc, dict) else {}


def _record(path: Path, tree: Any) -> None:
    entries = _entries(path)
    if tree is None and path.name not in entries:
        return
    if tree is None:
        entries.pop(path.name)
    else:
        entries[path.name] = tree
    utils.write_json(_sidecar(path), dict(sorted(entries.items())))


def timings_of(path: str | Path) -> Any:
    """The timing tree recorded for ``path`` (None when there is none)."""
    path = Path(path)
    return _entries(path).get(path.name)


def write_json(path: str | Path, obj: Any) -> Path:
    """``utils.write_json`` of ``obj`` without its timings; these go to ``timings.json`` (first,
    so that a result is never newer than its timings)."""
    path = Path(path)
    clean, tree = split(obj)
    _record(path, tree)
    return utils.write_json(path, clean)


def read_json(path: str | Path) -> Any:
    """``utils.read_json`` with the file's timings merged back."""
    return merge(utils.read_json(path), timings_of(path))


def torch_save(path: str | Path, obj: Any, digest: bool = True) -> Path:
    path = Path(path)
    clean, tree = split(obj)
    _record(path, tree)
    return utils.torch_save(path, clean, digest=digest)


def torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    return merge(utils.torch_load(path, map_location=map_location), timings_of(path))
