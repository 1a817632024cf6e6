"""Progress of long work: a step bar on a terminal, one line per epoch or candidate otherwise."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool, total: int, initial: int, desc: str = "search") -> Any:
    """A tqdm bar of ``total`` steps, or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: shown on a terminal, silent when stderr is redirected (CI, logs)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None, desc=desc)


def log_line(bar: Any, msg: str) -> None:
    """``msg`` on stderr, above the bar when one is shown."""
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)
