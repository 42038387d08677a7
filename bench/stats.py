"""Small measurement helpers shared by the bench scripts: nearest-rank percentiles and a
process's CPU time from /proc."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["percentile", "process_cpu"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    # The smallest value with at least q% of the values at or below it: rank ceil(q/100 * n).
    # (The epsilon keeps 99.9% of 1000 at rank 999 despite binary floating point.)
    rank = math.ceil(q / 100 * len(sorted_values) - 1e-9)
    return sorted_values[max(1, min(len(sorted_values), rank)) - 1]


def process_cpu(pid: int) -> Callable[[], float]:
    """A probe for the CPU seconds (utime + stime, all threads) a process has used so far."""

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    return read
