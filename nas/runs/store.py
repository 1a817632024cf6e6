"""Where a campaign keeps what its jobs produced: archived run folders, the per-run rows, the
failure report.

- ``archive`` / ``restore``: a finished run folder's JSON files (results, selections, analyses and
  their ``timings.json``) copied into a report folder, and back into an unstarted run folder on
  another machine (or after the run folders were deleted), so that the job is read back instead
  of computed again;
- ``RowsFile``: the report's per-run CSV, merged by each row's key under a file lock, so that
  several processes or machines adding rows lose none;
- ``Failures``: what failed among a campaign's jobs, and the one error that reports it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.utils import NasError, atomic_write, check_output_dir, write_csv


def _json_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*.json") if p.is_file())


def archive(folder: str | Path, dest: str | Path, last: str) -> Path:
    """Copy the JSON files of a finished run ``folder`` into ``dest``, each atomically and ``last``
    (the run's result, relative to the folder) at the end: an archive holding ``last`` is complete."""
    folder, dest = Path(folder), Path(dest)
    files = _json_files(folder)
    files.sort(key=lambda rel: rel == Path(last))
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, src=folder / rel: shutil.copyfile(src, tmp))
    return dest


def restore(src: str | Path, folder: str | Path, last: str) -> bool:
    """Seed an unstarted run ``folder`` (nothing in it but its lock) from an archive holding
    ``last``; False when there is no complete archive or the folder already holds something (a run
    folder is never overwritten)."""
    src, folder = Path(src), Path(folder)
    if not (src / last).is_file():
        return False
    if folder.is_dir() and any(p.name != ".lock" for p in folder.iterdir()):
        return False
    for rel in _json_files(src):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, folder / rel)
    return True


def read_archive(folder: str | Path) -> dict[str, Any]:
    """An archived run's JSON files: relative path -> content with its seconds merged in (what a
    worker sends home); the ``timings.json`` files themselves are not sent, ``write_archive`` makes
    them again."""
    from nas.runs.files import TIMINGS, read_json

    folder = Path(folder)
    return {rel.as_posix(): read_json(folder / rel) for rel in _json_files(folder) if rel.name != TIMINGS}


def write_archive(dest: str | Path, files: dict[str, Any], last: str) -> Path:
    """The inverse of ``read_archive``: each file atomically, ``last`` at the end."""
    from nas.runs.files import TIMINGS, write_json

    dest = Path(dest)
    for rel in sorted(files, key=lambda r: r == last):
        if Path(rel).is_absolute() or ".." in Path(rel).parts or Path(rel).suffix != ".json":
            raise NasError(f"{dest}: archived file name {rel[:80]!r} is not a JSON file inside its folder")
        if Path(rel).name == TIMINGS:
            continue  # made again from the seconds merged into the other files
        write_json(dest / rel, files[rel])
    return dest


@dataclasses.dataclass(frozen=True)
class RowsFile:
    """A report's per-run CSV: ``fields`` in order, one row per ``key(row)``, floats written with
    ``float_format``; ``read`` turns the file's rows back into typed rows (and checks them)."""

    path: Path
    fields: list[str]
    key: Callable[[dict[str, Any]], tuple]
    read: Callable[[list[dict[str, str]], str], list[dict[str, Any]]]
    float_format: str = "{:.4f}"
    lineterminator: str = "\r\n"

    def rows(self) -> list[dict[str, Any]]:
        """The file's rows, typed and checked (a one-line error names the file)."""
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise NasError(f"{self.path}: not a CSV of runs (not UTF-8 text)") from None
        except OSError as exc:
            raise NasError(f"{self.path}: cannot read ({exc.strerror or type(exc).__name__})") from None
        return self.read(list(csv.DictReader(io.StringIO(text, newline=""))), str(self.path))

    def merge(self, rows: list[dict[str, Any]], check: Callable[[list[dict[str, Any]]], None] | None = None) -> Path:
        """Add ``rows`` (replacing rows with the same key), sorted by key, atomically, under
        ``<path>.lock``; ``check`` sees the merged rows before anything is written."""
        from filelock import FileLock

        check_output_dir(self.path.parent, "report")
        with FileLock(str(self.path) + ".lock"):
            keep = {self.key(r): r for r in (self.rows() if self.path.is_file() else [])}
            keep.update((self.key(r), r) for r in rows)
            merged = [keep[k] for k in sorted(keep)]
            if check is not None:
                check(merged)
            return write_csv(self.path, merged, self.fields, self.float_format, lineterminator=self.lineterminator)


class JobsFailed(NasError):
    """Some jobs of a campaign failed; the finished ones are kept."""

    def __init__(self, message: str, failed: int, total: int):
        super().__init__(message)
        self.failed, self.total = failed, total


@dataclasses.dataclass
class Failures:
    """The failed jobs of a campaign (``what``: "grid g1", "calibration c, candidate a" ...), each as
    ``label: ExceptionType: message``, printed as they come."""

    what: str
    items: list[str] = dataclasses.field(default_factory=list)

    def add(self, label: str, exc: BaseException) -> str:
        from nas.utils import cut

        line = f"{label}: {type(exc).__name__}: {cut(str(exc), 300)}"
        self.items.append(line)
        print(f"[{self.what}] FAILED {line}", file=sys.stderr, flush=True)
        return line

    def raise_if_any(self, total: int, noun: str = "jobs") -> None:
        """``JobsFailed``: "<what>: N of M <noun> failed (first: ...); rerun the same command ..."."""
        if self.items:
            raise JobsFailed(f"{self.what}: {len(self.items)} of {total} {noun} failed (first: {self.items[0]}); "
                             f"rerun the same command to retry them, finished {noun} are kept",
                             len(self.items), total)
