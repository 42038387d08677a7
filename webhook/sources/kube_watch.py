"""The list + watch loop every Kubernetes source runs, and the one place watch events are read.

A source lists, then watches from the list's resourceVersion for as long as watches work,
resuming each watch request from the last version seen (bookmarks included). An error or
410 Gone ends the round; `run_with_backoff` starts the next one (a fresh list) after a capped,
jittered backoff, counting each retry for pod_identity_webhook_kube_reconnects_total.
The loop runs in a daemon thread at a lower priority than the event loop's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from webhook.sources.backoff import Backoff
from webhook.sources.kube_client import WATCH_TIMEOUT_SECONDS, KubeClient, KubeSourceError

log = logging.getLogger("webhook.kube")

# The list and watch threads run this much nicer than the process (Linux: per thread).
THREAD_NICENESS = 10
# A round that worked this long before failing starts the backoff afresh.
HEALTHY_SECONDS = 30.0

# Waits up to the given seconds; True once the source is stopping (threading.Event.wait).
Sleep = Callable[[float], bool]
Clock = Callable[[], float]
ObjectHandler = Callable[[dict[str, Any]], None]


class Gone(Exception):
    """410: our resourceVersion is too old; relist."""


def lower_priority() -> None:
    """Make the calling thread nicer, so that when it and the event loop's thread both want the
    CPU the kernel runs the loop first: reading and decrypting a 100 MB list needs no GIL but
    would otherwise take half of a one-CPU pod while reviews wait. Where it cannot (another OS),
    nothing changes; nor on the main thread, the event loop's."""
    if threading.current_thread() is threading.main_thread():
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + THREAD_NICENESS)
        )
    except (AttributeError, OSError):
        pass


def apply_watch_event(
    event: dict[str, Any], put: ObjectHandler, delete: ObjectHandler
) -> str | None:
    """Hand one watch event's object to `put` (ADDED, MODIFIED) or `delete` (DELETED); raise
    Gone for 410 and KubeSourceError for any other ERROR. Returns the object's resourceVersion
    (BOOKMARKs carry only that), or None when it has none."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise Gone()
        raise KubeSourceError(f"watch error: {obj.get('message', obj)}")
    if kind in ("ADDED", "MODIFIED"):
        put(obj)
    elif kind == "DELETED":
        delete(obj)
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def watch_from(
    client: KubeClient,
    path: str,
    query: list[tuple[str, str]],
    version: str,
    stop: threading.Event,
    put: ObjectHandler,
    delete: ObjectHandler,
    watch_seconds: int = WATCH_TIMEOUT_SECONDS,
) -> None:
    """Watch `path` from `version` until `stop`, one request of at most `watch_seconds` after
    the other, each resumed from the last version seen; errors and 410 Gone propagate."""
    while not stop.is_set():
        request = [
            *query,
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(watch_seconds)),
        ]
        for event in client.watch(path, request, stop):
            version = apply_watch_event(event, put, delete) or version


def run_with_backoff(
    once: Callable[[], None],
    resource: str,
    stop: threading.Event,
    reconnects: dict[str, int],
    sleep: Sleep | None = None,
    clock: Clock = time.monotonic,
) -> None:
    """Run `once` (a list, then watches) until `stop`: again at once after 410 Gone, after a
    backoff (0.2 s doubling to 3 s, jittered) after an error, which is logged and counted in
    `reconnects[resource]`. `sleep` and `clock` are the seams tests drive time through."""
    wait = stop.wait if sleep is None else sleep
    lower_priority()
    backoff = Backoff()
    while not stop.is_set():
        started = clock()
        try:
            once()
            backoff.reset()
        except Gone:
            log.info("watch expired (410 Gone), relisting")
            continue
        except Exception as err:
            if clock() - started > HEALTHY_SECONDS:
                backoff.reset()  # it worked for a while: start the backoff afresh
            delay = backoff.next_delay()
            log.warning("kubernetes watch failed, retrying in %.1fs: %s", delay, err)
            reconnects[resource] += 1
            if wait(delay):
                return
