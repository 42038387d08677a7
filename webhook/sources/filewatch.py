"""Polling file watcher that survives what inotify misses.

Kubernetes updates mounted Secrets and ConfigMaps by swapping a `..data` symlink, and editors
replace files by rename; both change the inode that `os.stat` (following links) reports. We
compare (inode, size, mtime) every interval and re-read on any change. A failed reload is
retried every interval until it succeeds (a permission fix changes no signature).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

log = logging.getLogger("webhook.filewatch")

Signature = tuple[int, int, int] | None


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def signatures(paths: Sequence[str]) -> tuple[Signature, ...]:
    return tuple(signature(p) for p in paths)


async def watch(
    paths: Sequence[str],
    on_change: Callable[[], None],
    interval: float,
    what: str,
    *,
    in_thread: bool = False,
    failing: bool = False,
) -> None:
    """Call `on_change` whenever any of `paths` changes, and again while it keeps failing.

    `in_thread`: run it off the event loop (a large --objects file must not stall reviews).
    `failing`: the caller's first load failed; retry from the first interval.
    """
    last = signatures(paths)
    last_error: str | None = "initial load failed" if failing else None
    while True:
        await asyncio.sleep(interval)
        current = signatures(paths)
        if current == last and last_error is None:
            continue
        try:
            if in_thread:
                await asyncio.to_thread(on_change)
            else:
                on_change()
        except Exception as err:  # keep serving with the previous contents, retry later
            if str(err) != last_error:
                log.error("reload of %s failed, keeping the previous version: %s", what, err)
            last_error = str(err)
            last = current
            continue
        if last_error is not None:
            log.info("reloaded %s", what)
        last, last_error = current, None
