"""Dataset formats read into one in-memory form (``RawDataset``): the embedded digits, CIFAR
archives (restricted unpickling), SVHN, image folders; archives are checked before anything is
extracted, and every size is bounded before it is read."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nas.utils import (
    NasError,
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


Files = dict[str, dict[str, list[tuple[str, Any]]]]  # split -> class -> [(name, path or tar member)]


def read_image_folder(path: Path, class_order: list[str] | None = None) -> RawDataset:
    """``root/{train,test}/<class>/*.{png,jpg}`` from a folder or a tar archive."""
    tar = None
    if path.is_dir():
        files = _folder_files(path)
    else:
        tar = open_tar(path)
        files = _tar_files(tar, path)
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
        state = {"shape": None, "decoded": 0, "budget": available_memory() // 3}  # images, stack, tensor copy
        for split in ("train", "test"):
            xs, ys = [], []
            for ci, cls in enumerate(classes):
                for name, ref in files[split][cls]:
                    xs.append(_decode_checked(path, name, _read_member(name, ref, tar), state))
                    ys.append(ci)
            out[split] = (np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, np.int64))
    finally:
        if tar is not None:
            tar.close()
    return RawDataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes,
                      f"image folder {path.name}")


def _folder_files(path: Path) -> Files:
    files: Files = {"train": {}, "test": {}}
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
    return files


def _tar_files(tar: Any, path: Path) -> Files:
    files: Files = {"train": {}, "test": {}}
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
    return files


def _read_member(name: str, ref: Any, tar: Any) -> bytes:
    """An image file's bytes (a path, or a member of ``tar``), refused by name or size first."""
    if not name.lower().endswith(IMAGE_SUFFIXES):
        raise NasError(f"{name}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    size = ref.size if tar is not None else Path(ref).stat().st_size
    if size > MAX_IMAGE_FILE_BYTES:
        raise NasError(f"{name}: {size} bytes, larger than an image file may be ({MAX_IMAGE_FILE_BYTES >> 20} MiB)")
    if tar is not None:
        fobj = tar.extractfile(ref)
        return fobj.read() if fobj is not None else b""
    return Path(ref).read_bytes()


def _decode_checked(path: Path, name: str, data: bytes, state: dict[str, Any]) -> np.ndarray:
    """Decode one image; refused when the decoded total passes the memory budget or its size is
    not the first image's."""
    img = _decode_image(data, name)
    state["decoded"] += img.nbytes
    if state["decoded"] > state["budget"]:
        raise NasError(f"{path}: decoded images exceed the {state['budget'] / 2**30:.1f} GiB of free memory "
                       f"(at {name})")
    shape = state["shape"]
    if shape is None:
        state["shape"] = img.shape
    elif img.shape != shape:
        raise NasError(f"{name}: image is {img.shape[1]}x{img.shape[0]}, expected {shape[1]}x{shape[0]} like the "
                       f"first image")
    return img


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


