"""Polling file watcher that survives what inotify misses.

Kubernetes updates mounted Secrets and ConfigMaps by swapping a `..data` symlink, and editors
replace files by rename; both change the inode that `os.stat` (following links) reports. We
compare (inode, size, mtime) every interval and re-read on any change.
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
) -> None:
    """Call `on_change` whenever any of `paths` changes; runs until cancelled."""
    last = signatures(paths)
    while True:
        await asyncio.sleep(interval)
        current = signatures(paths)
        if current == last:
            continue
        last = current
        try:
            on_change()
        except Exception as err:  # keep serving with the previous contents
            log.error("reload of %s failed, keeping the previous version: %s", what, err)
