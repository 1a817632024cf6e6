"""Small shared helpers: atomic file writes, seeding, device choice, digests."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and numpy load lazily: `nas --help` answers without them
    import torch


class NasError(Exception):
    """A user-facing error: the message is one line naming the file, key or token at fault."""


class ResumeMismatch(NasError):
    """A checkpoint written with another configuration or other data: resuming it is refused, and
    starting the run over is the caller's decision (``nas.runs.resume_or_restart``)."""


class FolderBusy(NasError):
    """Another process holds the folder's lock (``RunLock``)."""


def set_training(model: torch.nn.Module, mode: bool,
                 modules: list[torch.nn.Module] | None = None) -> list[torch.nn.Module]:
    """``model.train(mode)`` in one flat pass, returning the model's modules: the same flags at a
    fraction of the recursive walk's cost (a DARTS-space supernet has hundreds of modules, and PT
    switches modes around every measurement).  A module that overrides ``train`` gets its own call;
    ``modules``, the list an earlier call returned for the same model, saves the walk."""
    from torch import nn

    modules = list(model.modules()) if modules is None else modules
    for m in modules:
        if type(m).train is nn.Module.train:
            object.__setattr__(m, "training", mode)  # a plain bool: Module.__setattr__'s checks are moot
        else:
            m.train(mode)
    return modules


ECHO_LIMIT = 200


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages that echo input.

    Nested containers are abbreviated before they are turned into text, so a huge (or
    alias-expanded) value costs no more than its first few items."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = 80) -> str:
    """``text`` itself (no quotes, control characters escaped so that it stays on one line), cut to
    ``limit`` characters."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_error(path: Path, exc: OSError) -> NasError:
    reason = exc.strerror or type(exc).__name__
    return NasError(f"{path}: cannot write ({reason})")


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``writer`` receives the temporary path.  A crash leaves no file that looks complete; a failed
    write (full disk, read-only filesystem, a file where a folder should be) leaves no temporary
    file and raises a one-line ``NasError`` naming the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _os_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        # mkstemp creates the file with mode 0600; give it the mode any other new file gets
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None,
              float_format: str | None = None, lineterminator: str = "\r\n") -> Path:
    """Write ``rows`` as a CSV with a header (``fields``, default: the first row's keys), atomically;
    floats are written with ``float_format`` (e.g. ``"{:.4f}"``) when given."""
    import csv

    fields = fields or (list(rows[0]) if rows else [])

    def cell(v: Any) -> Any:
        return float_format.format(v) if float_format and isinstance(v, float) else v

    def w(p: Path) -> None:
        with open(p, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=fields, lineterminator=lineterminator)
            wr.writeheader()
            for r in rows:
                wr.writerow({k: cell(r.get(k)) for k in fields})

    return atomic_write(path, w)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that writes killed part-way left in ``folder``.

    Call it only while holding the folder (``run_lock``), so that no live write is removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def check_output_dir(path: str | Path, what: str = "out") -> Path:
    """Refuse, before any work starts, an output folder that cannot be written: a path that is
    an existing file or lies under one, or a folder that is read-only.  Creates the folder."""
    if str(path).strip() == "":
        raise NasError(f"{what}: an empty path is not an output folder")
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == path else f"lies under {parent}, which is"
            raise NasError(f"{what}: {path} {where} a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise NasError(f"{what}: {path} is not writable ({exc.strerror or type(exc).__name__})") from None
    return path


class RunLock:
    """An exclusive claim on a run folder (``<folder>/.lock``), held while a stage writes there.

    A second process that tries to claim the same folder gets a one-line error at once (or waits,
    with ``wait=True``).  The lock file stays; the claim goes with the process."""

    def __init__(self, folder: str | Path, wait: bool = False, what: str = "run"):
        from filelock import FileLock

        self.folder = check_output_dir(folder)
        self.wait = wait
        self.what = what
        self._lock = FileLock(str(self.folder / ".lock"))

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=-1 if self.wait else 0)
        except Timeout:
            raise FolderBusy(f"{self.folder}: another process is writing this {self.what} folder "
                           "(wait for it to finish, or choose another --out)") from None
        remove_stale_temporaries(self.folder)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0: leave torch's setting), then restore it."""
    import torch

    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NasError(f"device: unknown device {name!r} (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NasError(f"device: {name!r} requested but CUDA is not available")
    return dev


def generator_for(seed: int, *parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from ``seed`` and extra integers (epoch, stream id...).

    Seeding each epoch's randomness from (seed, epoch) makes a resumed run draw exactly
    the batches and augmentations an uninterrupted run would.
    """
    import torch

    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


_CODE_VERSION: str | None = None


# Parts of a config that never change what a run computes: left out of the digest in run names.
_NOT_IN_DIGEST = {"out", "run", "progress", "device", "cache_dir", "checkpoint_every", "eval_batch_size",
                  "dist_timeout", "dist_check", "max_restarts"}


def config_digest(cfg: dict[str, Any]) -> str:
    """Six hex digits that tell two configs apart (paths and bookkeeping keys left out)."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in _NOT_IN_DIGEST}
        return v

    return hashlib.sha256(json.dumps(clean(cfg), sort_keys=True, default=str).encode()).hexdigest()[:6]


def code_version() -> str:
    """The package version and a digest of its source files: a cache key and an MLflow tag that
    changes whenever the code that computes a stage changes."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from nas import __version__

        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
        _CODE_VERSION = f"{__version__}+{h.hexdigest()[:12]}"
    return _CODE_VERSION
