"""Event-loop lag: how late the loop runs a timer that is due.

Every review is answered on the one event loop, so anything that keeps the loop from running
— a long callback, or another thread of ours holding the GIL (the Kubernetes list and watch
threads decode JSON and fill the cache) — delays every review that arrives meanwhile by as
much. This task sleeps `INTERVAL_SECONDS` at a time and records how much longer than that it
actually slept in `pod_identity_webhook_event_loop_lag_seconds`. It is always on and cheap: ten
wake-ups and histogram observations a second.

The figure is a sample: a stall shows up in full only if a wake-up falls due during it (a
300 ms stall always does; one of 1 ms does one time in a hundred), so read its high buckets and
its rate of change, not single observations. Timers have millisecond resolution on uvloop, so
the lowest bucket is the idle floor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL_SECONDS = 0.1
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Observe = Callable[[float], None]


async def monitor(observe: Observe, interval: float = INTERVAL_SECONDS) -> None:
    """Run until cancelled, calling `observe(oversleep_seconds)` after every sleep."""
    clock = time.perf_counter
    while True:
        started = clock()
        await asyncio.sleep(interval)
        observe(max(0.0, clock() - started - interval))
