"""Delays between retries of a failing Kubernetes list or watch.

Exponential with jitter, and capped low: after an API server outage the watch must be back
within seconds (a cap of 30 s left ServiceAccount changes unseen for 20 s after recovery).
The jitter keeps replicas that failed together from retrying in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

INITIAL_SECONDS = 0.2
CAP_SECONDS = 3.0


@dataclass
class Backoff:
    initial: float = INITIAL_SECONDS
    cap: float = CAP_SECONDS
    factor: float = 2.0
    jitter: Callable[[], float] = random.random  # uniform in [0, 1)
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        """Between half and all of the current step; the step doubles up to the cap."""
        delay = self._next * (0.5 + self.jitter() / 2)
        self._next = min(self._next * self.factor, self.cap)
        return delay
