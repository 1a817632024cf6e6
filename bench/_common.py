"""Helpers shared by the benchmark scripts."""

from __future__ import annotations


def vm(key: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes; 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> int | None:
    """Reset the peak-RSS mark (Linux) and return the current RSS, or None where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return vm("VmRSS")
