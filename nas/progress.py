"""Progress of long work: a step bar on a terminal, one line per epoch or candidate otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def progress_bar(enabled: bool, total: int, initial: int, desc: str = "search") -> Any:
    """A tqdm bar of ``total`` steps, or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: shown on a terminal, silent when stderr is redirected (CI, logs)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None, desc=desc)


def run_label(out: str | Path | None) -> str | None:
    """A run folder's last two parts (``r32-i10k-e10/s1-good-s1``, ``s1-darts-s1/retrain-pt``): which
    of the runs that share one log (a grid's or a calibration's workers) a plain line comes from."""
    return "/".join(Path(out).parts[-2:]) if out else None


def log_line(bar: Any, msg: str, label: str | None = None) -> None:
    """``msg`` on stderr, above the bar when one is shown; a plain line starts with ``[label]``."""
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(f"[{label}] {msg}" if label else msg, file=sys.stderr, flush=True)
