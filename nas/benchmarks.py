"""NAS-Bench-201 table lookups: an architecture's benchmark accuracy, and the table's oracle."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nas.spaces import get_space, nb201
from nas.utils import NasError, clip

COLUMNS = {
    "cifar10": "cifar10_test",
    "cifar100": "cifar100_test",
    "imagenet16-120": "imagenet16_120_test",
}
ENV_VAR = "NAS_NB201_TABLE"
_REPO = Path(__file__).resolve().parent.parent
CANDIDATES = (
    _REPO / "data" / "benchmarks" / "nb201_test_acc.csv",
    _REPO / "data" / "benchmarks" / "nb201_test_acc.csv.gz",
    _REPO.parent / "shared" / "benchmarks" / "nb201_test_acc.csv",
)


def default_table_path() -> Path:
    """``$NAS_NB201_TABLE``, else the copy under ``data/benchmarks/``, else ``../shared/benchmarks/``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for p in CANDIDATES:
        if p.is_file():
            return p
    raise NasError(f"NAS-Bench-201 table not found: pass --table PATH or set {ENV_VAR} "
                   f"(looked in {', '.join(str(p) for p in CANDIDATES)})")


@dataclass(frozen=True)
class NB201Table:
    path: Path
    rows: dict[str, dict[str, float]]  # canonical genotype string -> {dataset: accuracy}

    def oracle(self, dataset: str) -> tuple[str, float]:
        col = _column(dataset)
        arch = max(self.rows, key=lambda a: self.rows[a][col])
        return arch, self.rows[arch][col]

    def accuracy(self, genotype: str, dataset: str = "cifar10") -> float:
        return self._row(genotype)[_column(dataset)]

    def _row(self, genotype: str) -> dict[str, float]:
        key = nb201.canonical_genotype(genotype)
        if key not in self.rows:
            raise NasError(f"genotype {clip(genotype)} is not in the NAS-Bench-201 table {self.path}")
        return self.rows[key]

    def lookup(self, genotype: str, dataset: str = "cifar10") -> dict[str, Any]:
        """Accuracy on ``dataset`` beside the oracle, the rank among all architectures, and the
        accuracies on every dataset of the table."""
        col, key = _column(dataset), nb201.canonical_genotype(genotype)
        row = self._row(key)
        acc = row[col]
        best_arch, best = self.oracle(dataset)
        rank = 1 + sum(1 for r in self.rows.values() if r[col] > acc)
        return {
            "genotype": key,
            "dataset": dataset,
            "test_accuracy": acc,
            "oracle_accuracy": best,
            "oracle_genotype": best_arch,
            "gap_to_oracle": best - acc,
            "rank": rank,
            "of": len(self.rows),
            "all_datasets": {d: row[c] for d, c in COLUMNS.items()},
            "table": str(self.path),
        }


def _column(dataset: str) -> str:
    if dataset not in COLUMNS:
        raise NasError(f"dataset {dataset!r} is not in the NAS-Bench-201 table (expected one of {', '.join(COLUMNS)})")
    return COLUMNS[dataset]


# The table of 15,625 rows is about 1.5 MB; a file (or its decompressed content) far beyond that
# is refused before it is held in memory.
MAX_TABLE_BYTES = 64 << 20


def _read_bounded(p: Path) -> bytes:
    """The table's bytes, gunzipped if needed, never more than ``MAX_TABLE_BYTES``."""
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_TABLE_BYTES + 1)
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(MAX_TABLE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise NasError(f"{p}: truncated or corrupt table ({type(exc).__name__}: {str(exc)[:100]})") from None
    if len(raw) > MAX_TABLE_BYTES:
        raise NasError(f"{p}: more than {MAX_TABLE_BYTES >> 20} MiB of table data (the NAS-Bench-201 table is ~1.5 MB)")
    return raw


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> NB201Table:
    """Read the table and check it with the pandera schema (``nas.schemas.nb201_schema``): every
    error names the column and the CSV line."""
    import pandas as pd

    from nas.schemas import validate_nb201

    p = Path(path)
    raw = _read_bounded(p)
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise NasError(f"{p}: not a CSV table ({str(exc).splitlines()[0][:200]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = validate_nb201(df, str(p))
    rows: dict[str, dict[str, float]] = {}
    for rec in df.itertuples(index=False):
        key = nb201.canonical_genotype(rec.arch)
        rows[key] = {"cifar10_test": float(rec.cifar10_test), "cifar100_test": float(rec.cifar100_test),
                     "imagenet16_120_test": float(rec.imagenet16_120_test)}
    return NB201Table(p, rows)


def load_table(path: str | Path | None = None) -> NB201Table:
    p = Path(path) if path else default_table_path()
    if not p.is_file():
        raise NasError(f"{p}: NAS-Bench-201 table not found")
    return _load(str(p.resolve()), p.stat().st_mtime_ns)


def benchmark_lookup(space: str, genotype: str, dataset: str = "cifar10") -> dict[str, Any] | None:
    """The lookup of a genotype in its space's benchmark table, or None for a space without one
    (or when the table is not there)."""
    if get_space(space).benchmark is None:
        return None
    try:
        return load_table().lookup(genotype, dataset)
    except NasError:
        return None
