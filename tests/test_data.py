import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import _add_bytes, make_cifar_archive, make_image_folder, tar_folder

from nas.data import (
    BatchStream,
    balanced_subset,
    load_prepared,
    prepare,
    read_cifar,
    read_digits,
    read_image_folder,
    search_split,
)
from nas.data.stream import StreamSettings
from nas.runs.files import torch_load, torch_save
from nas.utils import NasError

# ---------------------------------------------------------------- formats

def test_cifar10_archive_is_read_in_official_order(tmp_path):
    labels = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=7)
    raw = read_cifar(tmp_path / "cifar-10-python.tar.gz", "cifar10")
    assert raw.train_x.shape == (35, 3, 32, 32) and raw.test_x.shape == (7, 3, 32, 32)
    expected = sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert raw.train_y.tolist() == expected
    assert raw.test_y.tolist() == labels["test_batch"]
    assert raw.classes == [f"c{i}" for i in range(10)]


def test_cifar_pixels_are_channel_planes(tmp_path):
    # the official layout stores 1024 red, then 1024 green, then 1024 blue values per row
    data = np.zeros((1, 3072), np.uint8)
    data[0, :1024] = 10
    data[0, 1024:2048] = 20
    data[0, 2048:] = 30
    folder = "cifar-10-batches-py"
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            _add_bytes(tar, f"{folder}/{n}", pickle.dumps({b"data": data, b"labels": [3]}, protocol=2))
        _add_bytes(tar, f"{folder}/batches.meta", pickle.dumps({b"label_names": [b"x"] * 10}))
    raw = read_cifar(tmp_path / "c.tar.gz", "cifar10")
    assert raw.train_x[0, :, 5, 7].tolist() == [10, 20, 30]


def test_cifar100_archive_uses_fine_labels(tmp_path):
    labels = make_cifar_archive(tmp_path / "cifar-100-python.tar.gz", kind="cifar100", per_batch=4)
    raw = read_cifar(tmp_path / "cifar-100-python.tar.gz", "cifar100")
    assert raw.train_y.tolist() == labels["train"] and len(raw.classes) == 100


def test_prepare_cifar_writes_manifest_and_reuses_it(tmp_path, cache_dir):
    make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=5)
    path = prepare("cifar10", str(tmp_path / "cifar-10-python.tar.gz"), cache_dir)
    m = json.loads(path.with_suffix(".json").read_text())
    assert m["counts"] == {"train": 25, "test": 5} and m["num_classes"] == 10 and m["channels"] == 3
    assert sum(m["class_counts"]["train"]) == 25
    mtime = path.stat().st_mtime_ns
    assert prepare("cifar10", str(tmp_path / "cifar-10-python.tar.gz"), cache_dir) == path
    assert path.stat().st_mtime_ns == mtime  # cached, not rewritten
    prep = load_prepared(path)
    assert prep.train_x.dtype == torch.uint8 and prep.train_x.shape == (25, 3, 32, 32)


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_from_folder_and_tar(tmp_path, as_tar):
    root = make_image_folder(tmp_path / "imgs")
    src = tar_folder(root, tmp_path / "imgs.tar.gz") if as_tar else root
    raw = read_image_folder(src)
    assert raw.classes == ["cat", "dog", "eel"]
    assert raw.train_x.shape == (18, 3, 12, 12) and raw.test_x.shape == (9, 3, 12, 12)
    assert np.bincount(raw.train_y).tolist() == [6, 6, 6]
    # class-dependent brightness survives decoding
    means = [raw.train_x[raw.train_y == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]


def test_cifar10_accepts_an_image_folder_with_cifar_class_order(tmp_path, cache_dir):
    from nas.data import CIFAR10_CLASSES

    root = make_image_folder(tmp_path / "c10", classes=tuple(sorted(CIFAR10_CLASSES)), per_class=(2, 1), size=8)
    path = prepare("cifar10", str(root), cache_dir)
    m = json.loads(path.with_suffix(".json").read_text())
    assert m["classes"] == CIFAR10_CLASSES  # official label order, not alphabetical


def test_digits_is_the_embedded_default(cache_dir):
    raw = read_digits()
    assert raw.train_x.shape[1:] == (1, 8, 8) and len(raw.train_y) + len(raw.test_y) == 1797
    assert not raw.flip
    path = prepare("digits", None, cache_dir)
    assert load_prepared(path).num_classes == 10


# ---------------------------------------------------------------- bad input

def test_missing_archive_is_named(tmp_path):
    with pytest.raises(NasError, match="nope.tar.gz: not found"):
        prepare("cifar10", str(tmp_path / "nope.tar.gz"), tmp_path)


def test_corrupt_archive_is_named(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage" * 10)
    with pytest.raises(NasError, match="cifar-10-python.tar.gz: not a readable tar archive"):
        prepare("cifar10", str(bad), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_archive_missing_a_batch_is_named(tmp_path):
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        _add_bytes(tar, "cifar-10-batches-py/data_batch_1", pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(NasError, match="missing cifar-10-batches-py/data_batch_2"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10")


def test_wrong_layout_is_named(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(NasError, match="missing 'train/' folder"):
        read_image_folder(tmp_path / "flat")


def test_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(NasError, match="'test/dog' is empty"):
        read_image_folder(root)


def test_file_that_is_not_an_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "999.png").write_bytes(b"this is not a png")
    with pytest.raises(NasError, match=r"999\.png: not a readable image"):
        read_image_folder(root)


def test_failed_prepare_leaves_no_file(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "999.png").write_bytes(b"broken")
    cache = tmp_path / "cache"
    with pytest.raises(NasError):
        prepare("imagefolder", str(root), cache)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.suffix in (".pt", ".json")]


def test_truncated_prepared_file_is_refused(tmp_path, cache_dir):
    path = prepare("digits", None, cache_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NasError, match="checksum does not match"):
        load_prepared(path)


# ---------------------------------------------------------------- untrusted input

def _tar_with(tmp_path, name, member, link=None):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        if link is None:
            _add_bytes(tar, member, b"x")
        else:
            info = tarfile.TarInfo(member)
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
        _add_bytes(tar, "train/cat/0.png", b"x")
    return path


@pytest.mark.parametrize("member,link,why", [
    ("/etc/evil.png", None, "absolute path"),
    ("train/../../evil.png", None, r"'\.\.'"),
    ("train/cat/link.png", "../../../../etc/passwd", "points outside"),
    ("train/cat/abs.png", "/etc/passwd", "points outside"),
])
def test_unsafe_tar_members_are_refused(tmp_path, member, link, why):
    path = _tar_with(tmp_path, "evil.tar.gz", member, link)
    with pytest.raises(NasError, match=f"unsafe archive member.*{why}"):
        read_image_folder(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    folder = "cifar-10-batches-py"
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            _add_bytes(tar, f"{folder}/{n}", pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(NasError, match=r"data_batch_1: refused or corrupt pickle \(forbidden global (posix|os)\.system\)"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10")


def test_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(NasError, match="checkpoint.pt: not a loadable tensor/checkpoint file"):
        torch_load(path)
    # a plain tensor checkpoint loads fine
    torch_save(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert torch.equal(torch_load(tmp_path / "ok.pt")["w"], torch.ones(2))


# ---------------------------------------------------------------- splits and batches

def test_balanced_subset_and_disjoint_seeded_split():
    labels = torch.arange(100) % 4
    idx = balanced_subset(labels, 5, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
    assert torch.equal(idx, balanced_subset(labels, 5, seed=3))
    w, a = search_split(torch.arange(100), 0.3, seed=1)
    assert len(w) == 30 and len(a) == 70
    assert not set(w.tolist()) & set(a.tolist())
    w2, _ = search_split(torch.arange(100), 0.3, seed=2)
    assert not torch.equal(w, w2)


def _stream(**kw):
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6).to(torch.uint8)
    y = torch.tensor([0, 1])
    args = dict(mean=[0.0], std=[1.0], batch_size=2, augment=True, padding=2, flip=True)
    args.update(kw)
    return BatchStream(x, y, torch.arange(2), StreamSettings(**args)), x


def test_augmentation_is_a_padded_crop_and_flip_of_the_image():
    stream, x = _stream()
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        xb, yb = stream.batch(torch.arange(2), g)
        assert xb.shape == (2, 1, 6, 6)
        for b in range(2):
            found = False
            for oy in range(5):
                for ox in range(5):
                    crop = padded[b, :, oy:oy + 6, ox:ox + 6]
                    if torch.equal(crop, xb[b]) or torch.equal(crop.flip(-1), xb[b]):
                        found = True
            assert found


def test_batches_are_deterministic_per_generator_seed():
    stream, _ = _stream()
    a = [b[0] for b in stream.epoch(torch.Generator().manual_seed(5))]
    b = [b[0] for b in stream.epoch(torch.Generator().manual_seed(5))]
    c = [b[0] for b in stream.epoch(torch.Generator().manual_seed(6))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_no_augmentation_normalises_only():
    stream, x = _stream(augment=False, mean=[10.0], std=[2.0])
    xb, _ = stream.batch(torch.arange(2), torch.Generator())
    torch.testing.assert_close(xb, (x.float() - 10) / 2)


def test_concurrent_prepares_agree(tmp_path):
    """Processes preparing the same dataset at once (grid cells, Dask workers) end with one
    consistent file and manifest: each load passes its checksum."""
    import multiprocessing as mp

    from nas.data import load_prepared

    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        paths = pool.starmap(prepare, [("digits", None, str(tmp_path / "c"))] * 3)
    assert len(set(paths)) == 1
    load_prepared(paths[0])
