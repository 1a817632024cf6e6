"""Batches on the compute device: class-balanced subsets, the search split, and ``BatchStream``, which
cuts, crops, flips, applies cutout and normalises with tensor ops only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nas import stopping
from nas.data.cache import Prepared, load_prepared, prepare
from nas.data.formats import available_memory
from nas.rng import rng_stream
from nas.utils import (
    NasError,
    generator_for,
)


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of up to ``per_class`` images of each class, chosen by a seeded permutation."""
    g = generator_for(seed, rng_stream("subset"))
    chosen = []
    classes, counts = torch.unique(labels, return_counts=True)
    if per_class > int(counts.min()):
        c = int(classes[counts.argmin()])
        raise NasError(f"config: key 'subset' asks for {per_class} images per class, but class {c} holds "
                       f"{int(counts.min())} (at most {int(counts.min())}, or 0 for every image)")
    for c in classes.tolist():
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


@dataclass(frozen=True)
class StreamSettings:
    """How a ``BatchStream`` draws its batches: the normalisation, the batch size, the augmentation
    (a zero-padded random crop, a flip, cutout) and the memory format of the batches."""

    mean: list[float]
    std: list[float]
    batch_size: int
    augment: bool
    padding: int
    flip: bool
    drop_last: bool = False
    channels_last: bool = False
    cutout: int = 0


class BatchStream:
    """Batches of one index set, drawn and augmented on the device.

    Images stay uint8 on the device; a batch is gathered, randomly cropped from a
    zero-padded copy (per-sample offsets, one advanced-indexing gather), optionally
    flipped, and normalised, with no per-sample Python.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, how: StreamSettings):
        self.x, self.y = x, y
        self.device = x.device
        self.indices = indices.to(self.device)
        self.batch_size = how.batch_size
        self.augment = how.augment
        self.padding = how.padding
        self.flip = how.flip
        self.drop_last = how.drop_last
        self.cutout = how.cutout
        self.memory_format = torch.channels_last if how.channels_last else torch.contiguous_format
        self.mean = torch.tensor(how.mean, device=self.device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(how.std, device=self.device).view(1, -1, 1, 1)

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
            stopping.check()  # SIGTERM / SIGINT: the next batch raises Stopped, in any thread
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
        return BatchStream(x, y, indices, StreamSettings(self.mean, self.std, batch_size, augment, self.padding,
                                                         self.flip, drop_last, self.channels_last, cutout))


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


def check_batch(batch_size: int, images: int, what: str) -> None:
    """A batch larger than the images it is drawn from repeats images within the batch: refused."""
    if batch_size > images:
        raise NasError(f"config: key 'batch_size' is {batch_size}, more than the {images} images of {what}; "
                       f"lower batch_size or use more images (subset, holdout, train_portion)")


def load_bundle(cfg: Any, device: torch.device) -> DataBundle:
    """Prepare (or reuse) the dataset named by a DataConfig and move it to ``device``."""
    path = prepare(cfg.dataset, cfg.data, cfg.cache_dir)
    prep = load_prepared(path)
    size = cfg.resolution or prep.manifest["height"]
    padding = cfg.crop_padding if cfg.crop_padding >= 0 else max(1, round(4 * size / 32))
    if padding >= size:
        raise NasError(f"config: key 'crop_padding' is {padding}, but the images are {size}x{size}: a random crop "
                       f"could hold no image pixel (at most {size - 1}; -1 scales 4 pixels at 32x32)")
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
    check_batch(cfg.batch_size, min(len(w_idx), len(a_idx)), f"the smaller of the w and α splits ({len(idx)} images, "
                                                               f"train_portion {cfg.train_portion})")
    return bundle, bundle.stream(w_idx, cfg.batch_size, cfg.augment), bundle.stream(a_idx, cfg.batch_size, cfg.augment)
