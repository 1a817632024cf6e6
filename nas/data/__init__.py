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

Modules: ``formats`` (readers), ``cache`` (the prepared cache), ``stream`` (subsets and batches).
"""

from nas.data.cache import MANIFEST_KEYS, Prepared, check_source, load_prepared, prepare, source_digest
from nas.data.formats import (
    CIFAR10_CLASSES,
    DATASETS,
    FORMAT_VERSION,
    RawDataset,
    check_tar_members,
    read_cifar,
    read_digits,
    read_image_folder,
    read_raw,
    read_svhn,
    safe_unpickle,
)
from nas.data.stream import (
    BatchStream,
    DataBundle,
    available_memory,
    balanced_subset,
    check_batch,
    check_memory,
    load_bundle,
    resize_uint8,
    search_split,
    search_streams,
)

__all__ = ["CIFAR10_CLASSES", "DATASETS", "FORMAT_VERSION", "MANIFEST_KEYS", "BatchStream", "DataBundle", "Prepared",
           "RawDataset", "available_memory", "balanced_subset", "check_batch", "check_memory", "check_source", "check_tar_members", "load_bundle",
           "load_prepared", "prepare", "read_cifar", "read_digits", "read_image_folder", "read_raw", "read_svhn",
           "resize_uint8", "safe_unpickle", "search_split", "search_streams", "source_digest"]
