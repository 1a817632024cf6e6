"""Small shared helpers: atomic file writes, seeding, device choice, digests."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class NasError(Exception):
    """A user-facing error: the message is one line naming the file, key or token at fault."""


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``writer`` receives the temporary path.  A crash leaves no file that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or a one-line error naming the file and the position."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NasError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint or tensor file safely (``weights_only=True``): no code runs on load."""
    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasError(f"{path}: not a loadable tensor/checkpoint file ({first[:200]})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
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
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


_CODE_VERSION: str | None = None


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
