"""The one module that reads and writes the files of a run folder: JSON and torch files.

Every file the project writes through it follows one rule for where wall-clock seconds live:
beside the file, not in it.  A run's result and checkpoint hold what the run computed; the seconds
it took differ from machine to machine and from run to run.  They are written to ``timings.json``
in the same folder, one entry per file, and merged back when the file is read here, so that code
reading a result sees the dictionary it wrote.  Two runs of the same stage on the same input then
write byte-identical files (DVC's ``.dvcignore`` leaves ``timings.json`` out of an output's hash,
so two fresh clones get the same ``dvc.lock``).

A key is a timing when it is ``seconds`` or ends in ``_seconds`` and holds a number.  A file read
without its ``timings.json`` (a run fetched with ``dvc checkout`` or copied without it) simply has
no timing keys; a file written before this rule, with its seconds inline, reads the same.

Writes are atomic (a temporary file, then a rename); reads are bounded and give one-line errors;
torch files load with ``weights_only=True`` (nothing in them is executed) and checkpoints carry
their payload's SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.utils import NasError, atomic_write

if TYPE_CHECKING:
    import torch

def _write_raw_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


MAX_JSON_BYTES = 256 << 20


def _read_raw_json(path: str | Path) -> Any:
    """A JSON file's content, or a one-line error naming the file and the position."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise NasError(f"{path}: {path.stat().st_size} bytes, more than a result file may hold "
                           f"({MAX_JSON_BYTES >> 20} MiB)")
        return json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise NasError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise NasError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise NasError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise NasError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


# A checkpoint file is this magic, the SHA-256 of the payload, then torch.save's bytes: a flipped
# bit anywhere is found on load instead of resuming from garbage.
CHECKPOINT_MAGIC = b"NASCKPT1"


def _raw_torch_save(path: str | Path, obj: Any, digest: bool = True) -> Path:
    """Save ``obj`` atomically; with ``digest`` (checkpoints) the file carries its payload's SHA-256,
    verified by ``torch_load``.  ``digest=False`` writes the plain ``torch.save`` format (weights
    meant for other tools)."""
    import torch

    # serialised in memory: torch names the archive's root folder after the file it writes to, so
    # saving straight into the temporary file would make the bytes differ from run to run
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    if not digest:
        return atomic_write(path, lambda p: p.write_bytes(payload))

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(CHECKPOINT_MAGIC)
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)

    return atomic_write(path, write)


def _raw_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint or tensor file safely (``weights_only=True``): no code runs on load.

    A file written with a digest (``torch_save``) is checked against it first."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(len(CHECKPOINT_MAGIC))
            if head == CHECKPOINT_MAGIC:
                want = f.read(32)
                payload = f.read()
                if hashlib.sha256(payload).digest() != want:
                    raise NasError(f"{path}: checksum mismatch (the file is corrupt or was changed); "
                                   "delete it to start that run over")
                source: Any = io.BytesIO(payload)
            else:
                source = path
        return torch.load(source, map_location=map_location, weights_only=True)
    except NasError:
        raise
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasError(f"{path}: not a loadable tensor/checkpoint file ({first[:200]})") from None



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
        doc = _read_raw_json(side)
    except NasError:  # a damaged timings file costs the timings, never the run
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
    _write_raw_json(_sidecar(path), dict(sorted(entries.items())))


def timings_of(path: str | Path) -> Any:
    """The timing tree recorded for ``path`` (None when there is none)."""
    path = Path(path)
    return _entries(path).get(path.name)


def write_json(path: str | Path, obj: Any) -> Path:
    """``_write_raw_json`` of ``obj`` without its timings; these go to ``timings.json`` (first,
    so that a result is never newer than its timings)."""
    path = Path(path)
    clean, tree = split(obj)
    _record(path, tree)
    return _write_raw_json(path, clean)


def read_json(path: str | Path) -> Any:
    """``_read_raw_json`` with the file's timings merged back."""
    return merge(_read_raw_json(path), timings_of(path))


def torch_save(path: str | Path, obj: Any, digest: bool = True) -> Path:
    path = Path(path)
    clean, tree = split(obj)
    _record(path, tree)
    return _raw_torch_save(path, clean, digest=digest)


def torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    return merge(_raw_torch_load(path, map_location=map_location), timings_of(path))
