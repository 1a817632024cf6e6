"""The prepared cache: a dataset decoded once into ``<cache_dir>/<name>-<digest>.pt`` (uint8 NCHW
tensors) with a JSON manifest beside it, written atomically under a file lock, checked on load."""

from __future__ import annotations

import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas.data.formats import FORMAT_VERSION, read_raw
from nas.runs.files import read_json, torch_load, torch_save, write_json
from nas.utils import NasError, check_output_dir, cut, sha256_file

# --------------------------------------------------------------------------- prepare / load

def source_digest(dataset: str, data: str | None) -> str:
    """Cheap identity of a data source: file checksum, or a listing digest for folders."""
    import hashlib

    h = hashlib.sha256(f"v{FORMAT_VERSION}:{dataset}".encode())
    if dataset == "digits":
        from importlib.metadata import version  # sklearn's own import takes seconds

        h.update(f"sklearn-{version('scikit-learn')}".encode())
    elif data:
        p = Path(data)
        if p.is_file():
            h.update(sha256_file(p).encode())
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def check_source(dataset: str, data: str | None) -> None:
    """What can be told about a data source without reading it, as one-line errors: a dataset that
    needs ``--data`` and has none, a path that does not exist, a device or a pipe (``/dev/zero``
    would be read for ever)."""
    if dataset == "digits":
        return
    expected = "a prepared .pt file" if dataset == "prepared" else "an archive or folder"
    if not data:
        raise NasError(f"dataset {dataset!r} needs --data PATH ({expected})")
    p = Path(data)
    if not p.exists():
        what = expected if dataset == "prepared" else f"the {dataset} archive or folder"
        raise NasError(f"{cut(data, 120)}: not found (expected {what})")
    if not (p.is_file() or p.is_dir()):
        raise NasError(f"{cut(data, 120)}: not a regular file or folder (a device, pipe or socket cannot be "
                       f"read as a dataset)")


def prepare(dataset: str = "digits", data: str | None = None, cache_dir: str | Path = "data/prepared",
            out: str | Path | None = None) -> Path:
    """Decode a dataset once into a uint8 tensor file plus a manifest; returns the tensor path.

    Reuses an existing prepared file whose manifest checksum matches.  Writes are atomic.
    """
    check_source(dataset, data)
    if dataset == "prepared":
        load_prepared(data)  # validates
        return Path(data)
    digest = source_digest(dataset, data)
    target = Path(out) if out else Path(cache_dir) / f"{dataset}-{digest[:12]}.pt"
    check_output_dir(target.parent, "cache_dir")
    # one writer at a time: processes that prepare the same dataset at once (grid cells, Dask
    # workers) wait here and then reuse the first one's files
    from filelock import FileLock

    with FileLock(str(target.parent / f".{target.stem}.lock")):
        return _prepare_locked(dataset, data, digest, target)


def _cache_valid(target: Path, manifest_path: Path, digest: str) -> bool:
    """A prepared file from the same source whose checksum matches its manifest; an unreadable
    manifest counts as absent (the dataset is prepared again)."""
    if not (target.is_file() and manifest_path.is_file()):
        return False
    try:
        m = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return m.get("source_digest") == digest and m.get("sha256") == sha256_file(target)


def _prepare_locked(dataset: str, data: str | None, digest: str, target: Path) -> Path:
    manifest_path = target.with_suffix(".json")
    if _cache_valid(target, manifest_path, digest):
        return target
    try:
        raw = read_raw(dataset, data)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise NasError(f"{data}: truncated or corrupt archive ({type(exc).__name__})") from None
    tensors = {
        "train_x": torch.from_numpy(np.ascontiguousarray(raw.train_x)),
        "train_y": torch.from_numpy(raw.train_y),
        "test_x": torch.from_numpy(np.ascontiguousarray(raw.test_x)),
        "test_y": torch.from_numpy(raw.test_y),
    }
    x = tensors["train_x"].float()
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1.0).tolist()
    torch_save(target, tensors, digest=False)  # byte-identical for the same input, on any machine
    n_cls = len(raw.classes)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "source": raw.source,
        "source_path": str(data) if data else None,
        "source_digest": digest,
        "classes": raw.classes,
        "num_classes": n_cls,
        "channels": int(raw.train_x.shape[1]),
        "height": int(raw.train_x.shape[2]),
        "width": int(raw.train_x.shape[3]),
        "counts": {"train": int(len(raw.train_y)), "test": int(len(raw.test_y))},
        "class_counts": {
            "train": np.bincount(raw.train_y, minlength=n_cls).tolist(),
            "test": np.bincount(raw.test_y, minlength=n_cls).tolist(),
        },
        "mean": mean,
        "std": std,
        "flip": raw.flip,
        "sha256": sha256_file(target),
    }
    write_json(manifest_path, manifest)
    return target


@dataclass
class Prepared:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    manifest: dict
    path: Path

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])


MANIFEST_KEYS = ("format_version", "classes", "num_classes", "channels", "height", "width",
                 "counts", "mean", "std", "sha256")


def load_prepared(path: str | Path, verify: bool = True) -> Prepared:
    path = Path(path)
    mpath = path.with_suffix(".json")
    if not mpath.is_file():
        raise NasError(f"{mpath}: manifest not found beside {path.name} (run 'nas prepare')")
    manifest = read_json(mpath)
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise NasError(f"{mpath}: manifest lacks key {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise NasError(f"{mpath}: format_version {manifest['format_version']}, expected {FORMAT_VERSION}")
    from nas.schemas import validate_manifest

    validate_manifest(manifest, str(mpath))
    if verify and sha256_file(path) != manifest["sha256"]:
        raise NasError(f"{path}: checksum does not match its manifest (file changed or truncated)")
    t = torch_load(path)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        if not isinstance(t, dict) or key not in t:
            raise NasError(f"{path}: prepared file lacks tensor {key!r}")
    for split in ("train", "test"):
        x, y = t[f"{split}_x"], t[f"{split}_y"]
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y) or len(x) != manifest["counts"][split]:
            raise NasError(f"{path}: {split} tensors do not match the manifest counts/shape")
    return Prepared(t["train_x"], t["train_y"], t["test_x"], t["test_y"], manifest, path)


# --------------------------------------------------------------------------- subsets and splits

