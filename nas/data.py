"""Datasets: formats -> one prepared uint8 tensor file -> augmented batches on the device.

Formats read:
- ``digits``: scikit-learn's 8x8 handwritten digits (ships with the package; the embedded default);
- ``cifar10`` / ``cifar100``: the official python archives (pickled batches), as ``.tar.gz`` or an
  extracted folder, unpickled with a restricted unpickler;
- ``imagefolder``: ``root/{train,test}/<class>/*.{png,jpg,jpeg}``, as a folder or a tar archive.
``cifar10``/``cifar100`` also accept an image folder with the CIFAR class names.

A dataset is decoded once into ``<cache_dir>/<name>-<digest>.pt`` (uint8 NCHW tensors) with a JSON
manifest beside it (classes, counts, checksum, source, channel statistics).  Batches are then
cut, cropped, flipped and normalised on the compute device with tensor ops only.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.rng import rng_stream
from nas.utils import (
    NasError,
    atomic_write,
    check_output_dir,
    generator_for,
    read_json,
    sha256_file,
    torch_load,
    write_json,
)

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder", "prepared")
# Bounds on what one input may make us allocate, checked from headers before anything is read:
# the largest official CIFAR member (CIFAR-100's train batch) is 155 MB; an image file or its
# decoded pixels beyond these are refused, and so is a decoded dataset larger than free memory.
MAX_CIFAR_MEMBER_BYTES = {"cifar10": 64 << 20, "cifar100": 256 << 20}
MAX_IMAGE_FILE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 4096 * 4096


# --------------------------------------------------------------------------- safe archives

def check_tar_members(tar: tarfile.TarFile, source: Path) -> list[tarfile.TarInfo]:
    """Refuse members that could escape an extraction folder: absolute paths, ``..``, links
    pointing outside, devices.  Reading is done in memory, but an archive carrying such a
    member is not trusted at all."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise NasError(f"{source}: truncated or corrupt archive ({type(exc).__name__})") from None
    for m in members:
        name = m.name
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise NasError(f"{source}: unsafe archive member {name!r} (absolute path or '..')")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            base = PurePosixPath(name).parent if m.issym() else PurePosixPath(".")
            resolved = base / target
            if m.linkname.startswith("/") or ".." in resolved.parts:
                raise NasError(
                    f"{source}: unsafe archive member {name!r} (link to {m.linkname!r} "
                    "points outside the archive)")
        if m.isdev() or m.isfifo():
            raise NasError(f"{source}: unsafe archive member {name!r} (device or fifo)")
    return members


def open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise NasError(f"{path}: not a readable tar archive ({exc})") from None


# --------------------------------------------------------------------------- restricted unpickling

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR batches contain: dicts, lists, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module.startswith("numpy.core"):  # numpy >= 2 renamed numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise NasError(f"{source}: refused or corrupt pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise NasError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


# --------------------------------------------------------------------------- readers

@dataclass
class RawDataset:
    train_x: np.ndarray  # uint8 [N, C, H, W]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str
    flip: bool = True  # horizontal flips make sense for this data


def read_digits() -> RawDataset:
    """scikit-learn's 1,797 8x8 digits; a seeded stratified 75/25 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(20240601)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_idx.extend(rng.permutation(idx)[: len(idx) // 4])
    test_mask = np.zeros(len(y), bool)
    test_mask[test_idx] = True
    return RawDataset(x[~test_mask], y[~test_mask], x[test_mask], y[test_mask],
                      [str(i) for i in range(10)], "sklearn.datasets.load_digits", flip=False)


def _cifar_arrays(batches: list[dict], label_key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for b in batches:
        if "data" not in b or label_key not in b:
            raise NasError(f"{source}: batch lacks 'data' or '{label_key}'")
        data = np.asarray(b["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise NasError(f"{source}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        labels = np.asarray(b[label_key], dtype=np.int64)
        if labels.shape != (data.shape[0],):
            raise NasError(f"{source}: {data.shape[0]} images but {labels.shape} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar(path: Path, kind: str) -> RawDataset:
    """The official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (or extracted)."""
    if kind == "cifar10":
        folder, train_names, test_names = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_name, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        folder, train_names, test_names = "cifar-100-python", ["train"], ["test"]
        meta_name, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    wanted = [*train_names, *test_names, meta_name]
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        base = path / folder if (path / folder).is_dir() else path
        for n in wanted:
            f = base / n
            if not f.is_file():
                raise NasError(f"{path}: missing {folder}/{n} (expected the official {kind} python layout)")
            if f.stat().st_size > MAX_CIFAR_MEMBER_BYTES[kind]:
                raise NasError(f"{f}: {f.stat().st_size} bytes, larger than any official {kind} batch")
            blobs[n] = f.read_bytes()
    else:
        with open_tar(path) as tar:
            members = {PurePosixPath(m.name).name: m for m in check_tar_members(tar, path)
                       if m.isfile() and PurePosixPath(m.name).parent.name == folder}
            for n in wanted:
                if n not in members:
                    raise NasError(f"{path}: missing {folder}/{n} (expected the official {kind} python archive)")
                if members[n].size > MAX_CIFAR_MEMBER_BYTES[kind]:
                    raise NasError(f"{path}: member {members[n].name} is {members[n].size} bytes, larger than "
                                   f"any official {kind} batch")
                fobj = tar.extractfile(members[n])
                if fobj is None:
                    raise NasError(f"{path}: member {members[n].name} cannot be read")
                blobs[n] = fobj.read()
    train = [safe_unpickle(blobs[n], f"{path}:{n}") for n in train_names]
    test = [safe_unpickle(blobs[n], f"{path}:{n}") for n in test_names]
    meta = safe_unpickle(blobs[meta_name], f"{path}:{meta_name}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    tx, ty = _cifar_arrays(train, label_key, f"{path}:train")
    vx, vy = _cifar_arrays(test, label_key, f"{path}:test")
    n_cls = 10 if kind == "cifar10" else 100
    if len(classes) != n_cls:
        raise NasError(f"{path}:{meta_name}: expected {n_cls} class names, got {len(classes)}")
    for arr, name in ((ty, "train"), (vy, "test")):
        if arr.min() < 0 or arr.max() >= n_cls:
            raise NasError(f"{path}: {name} labels outside 0..{n_cls - 1}")
    return RawDataset(tx, ty, vx, vy, classes, f"{kind} python archive {path.name}")


def read_svhn(path: Path) -> RawDataset:
    """SVHN's official ``train_32x32.mat`` / ``test_32x32.mat`` (a folder holding both): ``X`` is
    32x32x3xN uint8, ``y`` holds 1..10 with 10 for the digit 0."""
    from scipy.io import loadmat

    out = {}
    for split in ("train", "test"):
        f = path / f"{split}_32x32.mat" if path.is_dir() else None
        if f is None or not f.is_file():
            raise NasError(f"{path}: missing {split}_32x32.mat (expected a folder with the official SVHN .mat files)")
        try:
            m = loadmat(f)
        except Exception as exc:  # scipy raises several types for corrupt files
            raise NasError(f"{f}: not a readable .mat file ({exc.__class__.__name__})") from None
        if "X" not in m or "y" not in m:
            raise NasError(f"{f}: expected variables 'X' and 'y'")
        x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1).astype(np.int64)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or x.dtype != np.uint8:
            raise NasError(f"{f}: 'X' must be uint8 32x32x3xN matching 'y', got {x.dtype} {x.shape}")
        if len(y) and (y.min() < 1 or y.max() > 10):
            raise NasError(f"{f}: labels must be 1..10")
        out[split] = (np.ascontiguousarray(x.transpose(3, 2, 0, 1)), np.where(y == 10, 0, y))
    return RawDataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1],
                      [str(i) for i in range(10)], f"svhn .mat files {path.name}", flip=False)


def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: nothing is decoded yet
            if w * h > MAX_IMAGE_PIXELS:
                raise NasError(f"{name}: image is {w}x{h}, more than {MAX_IMAGE_PIXELS} pixels")
            im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError:  # PIL's own, earlier refusal of a far larger image
        raise NasError(f"{name}: image has more than {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NasError(f"{name}: not a readable image ({exc.__class__.__name__})") from None


def read_image_folder(path: Path, class_order: list[str] | None = None) -> RawDataset:
    """``root/{train,test}/<class>/*.{png,jpg}`` from a folder or a tar archive."""
    files: dict[str, dict[str, list[tuple[str, Any]]]] = {"train": {}, "test": {}}
    tar = None
    if path.is_dir():
        root = path
        if not (root / "train").is_dir():
            subs = [p for p in root.iterdir() if p.is_dir()]
            if len(subs) == 1 and (subs[0] / "train").is_dir():
                root = subs[0]
        for split in ("train", "test"):
            sd = root / split
            if not sd.is_dir():
                raise NasError(f"{path}: missing '{split}/' folder (expected root/{{train,test}}/<class>/*.png|jpg)")
            for cdir in sorted(p for p in sd.iterdir() if p.is_dir()):
                imgs = sorted(p for p in cdir.iterdir() if p.is_file() and not p.name.startswith("."))
                files[split][cdir.name] = [(str(p), p) for p in imgs]
    else:
        tar = open_tar(path)
        members = [m for m in check_tar_members(tar, path) if m.isfile()]
        for m in members:
            parts = PurePosixPath(m.name).parts
            if parts and parts[0] == ".":
                parts = parts[1:]
            # allow one wrapping folder: [top/]split/class/file
            if len(parts) == 4 and parts[1] in ("train", "test"):
                parts = parts[1:]
            if len(parts) != 3 or parts[0] not in ("train", "test") or parts[2].startswith("."):
                continue
            split, cls, _ = parts
            files[split].setdefault(cls, []).append((f"{path}:{m.name}", m))
        for split in ("train", "test"):
            if not files[split]:
                tar.close()
                raise NasError(f"{path}: no '{split}/<class>/<image>' members (expected root/{{train,test}}/<class>/*.png|jpg)")
            for cls in files[split]:
                files[split][cls].sort(key=lambda t: t[0])
    try:
        classes = sorted(set(files["train"]) | set(files["test"]))
        if class_order is not None and set(classes) == set(class_order):
            classes = list(class_order)
        for split in ("train", "test"):
            for cls in classes:
                items = files[split].get(cls, [])
                if not items:
                    raise NasError(f"{path}: class folder '{split}/{cls}' is empty or missing")
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape = None
        decoded, budget = 0, available_memory() // 3  # the images, their stack and the tensor copy
        for split in ("train", "test"):
            xs, ys = [], []
            for ci, cls in enumerate(classes):
                for name, ref in files[split][cls]:
                    if not name.lower().endswith(IMAGE_SUFFIXES):
                        raise NasError(f"{name}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
                    size = ref.size if tar is not None else Path(ref).stat().st_size
                    if size > MAX_IMAGE_FILE_BYTES:
                        raise NasError(f"{name}: {size} bytes, larger than an image file may be "
                                       f"({MAX_IMAGE_FILE_BYTES >> 20} MiB)")
                    if tar is not None:
                        fobj = tar.extractfile(ref)
                        data = fobj.read() if fobj is not None else b""
                    else:
                        data = Path(ref).read_bytes()
                    img = _decode_image(data, name)
                    decoded += img.nbytes
                    if decoded > budget:
                        raise NasError(f"{path}: decoded images exceed the {budget / 2**30:.1f} GiB of free memory "
                                       f"(at {name})")
                    if shape is None:
                        shape = img.shape
                    elif img.shape != shape:
                        raise NasError(f"{name}: image is {img.shape[1]}x{img.shape[0]}, expected "
                                       f"{shape[1]}x{shape[0]} like the first image")
                    xs.append(img)
                    ys.append(ci)
            out[split] = (np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, np.int64))
    finally:
        if tar is not None:
            tar.close()
    return RawDataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes,
                      f"image folder {path.name}")


def _looks_like_cifar_archive(path: Path, kind: str) -> bool:
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    if path.is_dir():
        return (path / folder).is_dir() or (path / ("batches.meta" if kind == "cifar10" else "meta")).is_file()
    with open_tar(path) as tar:
        for m in tar:
            if folder in PurePosixPath(m.name).parts:
                return True
            if m.isfile():
                return False
    return False


def read_raw(dataset: str, data: str | None) -> RawDataset:
    if dataset == "digits":
        return read_digits()
    if dataset not in DATASETS:
        raise NasError(f"dataset: unknown {dataset!r} (expected one of {', '.join(DATASETS)})")
    if not data:
        raise NasError(f"dataset {dataset!r} needs --data PATH (an archive or folder)")
    path = Path(data)
    if not path.exists():
        raise NasError(f"{path}: not found (expected the {dataset} archive or folder)")
    if dataset == "svhn":
        return read_svhn(path)
    if dataset in ("cifar10", "cifar100"):
        if _looks_like_cifar_archive(path, dataset):
            return read_cifar(path, dataset)
        raw = read_image_folder(path, CIFAR10_CLASSES if dataset == "cifar10" else None)
        n = 10 if dataset == "cifar10" else 100
        if len(raw.classes) != n:
            raise NasError(f"{path}: {dataset} image folder must have {n} classes, found {len(raw.classes)}")
        return raw
    return read_image_folder(path)


# --------------------------------------------------------------------------- prepare / load

def source_digest(dataset: str, data: str | None) -> str:
    """Cheap identity of a data source: file checksum, or a listing digest for folders."""
    import hashlib

    h = hashlib.sha256(f"v{FORMAT_VERSION}:{dataset}".encode())
    if dataset == "digits":
        import sklearn

        h.update(f"sklearn-{sklearn.__version__}".encode())
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


def prepare(dataset: str = "digits", data: str | None = None, cache_dir: str | Path = "data/prepared",
            out: str | Path | None = None) -> Path:
    """Decode a dataset once into a uint8 tensor file plus a manifest; returns the tensor path.

    Reuses an existing prepared file whose manifest checksum matches.  Writes are atomic.
    """
    if dataset == "prepared":
        if not data:
            raise NasError("dataset 'prepared' needs --data PATH to a prepared .pt file")
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
    atomic_write(target, lambda p: torch.save(tensors, p))
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

def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of up to ``per_class`` images of each class, chosen by a seeded permutation."""
    g = generator_for(seed, rng_stream("subset"))
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


def search_split(n_or_idx: int | torch.Tensor, portion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (w, alpha) index sets from the training set, by a seeded permutation."""
    idx = torch.arange(n_or_idx) if isinstance(n_or_idx, int) else n_or_idx
    perm = idx[torch.randperm(len(idx), generator=generator_for(seed, rng_stream("split")))]
    k = int(round(len(idx) * portion))
    if k == 0 or k == len(idx):
        raise NasError(f"train_portion {portion} leaves an empty w or alpha split of {len(idx)} images")
    return perm[:k], perm[k:]


# --------------------------------------------------------------------------- batches on the device

def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    mode = "area" if size < x.shape[-1] else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    out = []
    per_image = 4 * x.shape[1] * max(size * size, x.shape[-1] * x.shape[-2])  # float32 bytes in and out
    for chunk in x.split(max(1, min(4096, (256 << 20) // per_image))):
        out.append(F.interpolate(chunk.float(), size=(size, size), mode=mode, **kw).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


class BatchStream:
    """Batches of one index set, drawn and augmented on the device.

    Images stay uint8 on the device; a batch is gathered, randomly cropped from a
    zero-padded copy (per-sample offsets, one advanced-indexing gather), optionally
    flipped, and normalised, with no per-sample Python.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, *, mean: list[float],
                 std: list[float], batch_size: int, augment: bool, padding: int, flip: bool,
                 drop_last: bool = False, channels_last: bool = False, cutout: int = 0):
        self.x, self.y = x, y
        self.device = x.device
        self.indices = indices.to(self.device)
        self.batch_size = batch_size
        self.augment = augment
        self.padding = padding
        self.flip = flip
        self.drop_last = drop_last
        self.cutout = cutout
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch(self, idx: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        xb = self.x[idx]
        if self.augment and gen is not None:
            xb = self._augment(xb, gen)
        xb = (xb.float() - self.mean) * self.inv_std
        if self.augment and gen is not None and self.cutout > 0:
            xb = self._cutout(xb, gen)
        return xb.contiguous(memory_format=self.memory_format), self.y[idx]

    def _cutout(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero a ``cutout``-sided square (clipped at the border) around a random centre per image,
        after normalisation, as the DARTS training code does."""
        b, _, h, w = xb.shape
        cy = torch.randint(0, h, (b,), device=self.device, generator=gen)
        cx = torch.randint(0, w, (b,), device=self.device, generator=gen)
        half = self.cutout // 2
        rows = torch.arange(h, device=self.device)[None, :]
        cols = torch.arange(w, device=self.device)[None, :]
        in_r = (rows >= (cy[:, None] - half)) & (rows < (cy[:, None] + half))
        in_c = (cols >= (cx[:, None] - half)) & (cols < (cx[:, None] + half))
        hole = in_r[:, :, None] & in_c[:, None, :]
        return xb * (~hole)[:, None].to(xb.dtype)

    def _augment(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = xb.shape
        p = self.padding
        if p > 0:
            padded = F.pad(xb, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), device=self.device, generator=gen)
            ox = torch.randint(0, 2 * p + 1, (b,), device=self.device, generator=gen)
            rows = (oy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=self.device))[:, None, None, :]
            bi = torch.arange(b, device=self.device)[:, None, None, None]
            ci = torch.arange(c, device=self.device)[None, :, None, None]
            xb = padded[bi, ci, rows, cols]
        if self.flip:
            mask = torch.rand(b, device=self.device, generator=gen) < 0.5
            xb = torch.where(mask[:, None, None, None], xb.flip(3), xb)
        return xb

    def epoch(self, gen: torch.Generator | None, shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        if shuffle and gen is not None:
            order = order[torch.randperm(len(order), device=self.device, generator=gen)]
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size:(i + 1) * self.batch_size], gen)


@dataclass
class DataBundle:
    """What a stage needs: streams for w, alpha (or train) and test, plus shape facts."""

    prepared: Prepared
    x: torch.Tensor  # device, uint8, resized
    test_x: torch.Tensor
    num_classes: int
    channels: int
    size: int
    mean: list[float]
    std: list[float]
    flip: bool
    padding: int
    channels_last: bool = False

    def describe(self, name: str) -> dict[str, Any]:
        """What a run's result.json records about its data."""
        return {"name": name, "source": self.prepared.manifest["source"], "num_classes": self.num_classes,
                "resolution": self.size, "channels": self.channels, "prepared": str(self.prepared.path),
                "train_images": len(self.prepared.train_y), "test_images": len(self.prepared.test_y)}

    def stream(self, indices: torch.Tensor, batch_size: int, augment: bool, test: bool = False,
               drop_last: bool = False, cutout: int = 0) -> BatchStream:
        x = self.test_x if test else self.x
        y = (self.prepared.test_y if test else self.prepared.train_y).to(x.device)
        return BatchStream(x, y, indices, mean=self.mean, std=self.std, batch_size=batch_size,
                           augment=augment, padding=self.padding, flip=self.flip, drop_last=drop_last,
                           channels_last=self.channels_last, cutout=cutout)


def available_memory() -> int:
    """Bytes of memory the system can still hand out (``MemAvailable``), or the physical memory."""
    meminfo = Path("/proc/meminfo")
    lines = meminfo.read_text().splitlines() if meminfo.is_file() else []  # Linux only
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(manifest: dict, size: int, padding: int, batch_size: int, what: str) -> None:
    """Refuse, before allocating, a resolution or crop padding whose tensors would not fit in
    memory: the resized uint8 images plus one padded float batch."""
    n = int(manifest["counts"]["train"]) + int(manifest["counts"]["test"])
    c = int(manifest["channels"])
    need = n * c * size * size + 3 * 4 * batch_size * c * (size + 2 * padding) ** 2
    have = available_memory()
    if need > have:
        raise NasError(f"{what}: resolution {size} with crop padding {padding} needs about {need / 2**30:.1f} GiB "
                       f"for {n} images, more than the {have / 2**30:.1f} GiB available")


def load_bundle(cfg: Any, device: torch.device) -> DataBundle:
    """Prepare (or reuse) the dataset named by a DataConfig and move it to ``device``."""
    path = prepare(cfg.dataset, cfg.data, cfg.cache_dir)
    prep = load_prepared(path)
    size = cfg.resolution or prep.manifest["height"]
    padding = cfg.crop_padding if cfg.crop_padding >= 0 else max(1, round(4 * size / 32))
    check_memory(prep.manifest, size, padding, max(cfg.batch_size or 1, cfg.eval_batch_size), str(path))
    x = resize_uint8(prep.train_x, size).to(device)
    tx = resize_uint8(prep.test_x, size).to(device)
    flip = prep.manifest.get("flip", True) if cfg.flip is None else cfg.flip
    return DataBundle(prep, x, tx, prep.num_classes, prep.channels, size, prep.manifest["mean"],
                      prep.manifest["std"], bool(flip), padding, bool(getattr(cfg, "channels_last", False)))


def search_streams(cfg: Any, device: torch.device) -> tuple[DataBundle, BatchStream, BatchStream]:
    """A search's data: the (class-balanced ``subset`` of the) training images, split into the w
    and the α part, as augmented batch streams."""
    bundle = load_bundle(cfg, device)
    labels = bundle.prepared.train_y
    idx = balanced_subset(labels, cfg.subset, cfg.seed) if cfg.subset else torch.arange(len(labels))
    w_idx, a_idx = search_split(idx, cfg.train_portion, cfg.seed)
    return bundle, bundle.stream(w_idx, cfg.batch_size, cfg.augment), bundle.stream(a_idx, cfg.batch_size, cfg.augment)
