"""Finding and killing a node run's processes, and unmounting what it mounted.

Used at teardown and, at start, on the leftovers of a run that was killed: a
containerd-shim and its containers outlive a SIGKILLed test process (they are
reparented to init), and so do the kubelet's tmpfs volume mounts and the overlay root
filesystems. Everything here is found from the kernel's own view (/proc and
/proc/self/mountinfo), not from what the run remembers having started.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "CONTAINER_LOG_LINKS",
    "container_log_links",
    "kill_processes",
    "mountinfo",
    "mountpoints_under",
    "pids_in_netns",
    "pids_mentioning",
    "unmount_under",
]

_MNT_DETACH = 2
# The kubelet links every container's log here, whatever its podLogsDir (a constant
# in its source), so a run's links outlive the run's state dir.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040-style octal escapes.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mountinfo() -> Iterator[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process can see."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            yield _unescape(fields[4]), fields[sep + 1]


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def pids_in_netns(inode: int) -> set[int]:
    """Processes whose network namespace is the one with nsfs inode `inode`."""
    wanted = f"net:[{inode}]"
    found: set[int] = set()
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == wanted:
                found.add(pid)
        except OSError:
            pass  # exited meanwhile, or a kernel thread
    return found


def pids_mentioning(text: str) -> set[int]:
    """Processes whose command line contains `text` (e.g. a run's state directory)."""
    needle = text.encode()
    found: set[int] = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    found.add(pid)
        except OSError:
            pass
    return found


def kill_processes(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILLs `pids` (never this process) and waits until they are gone."""
    pending = set(pids) - {os.getpid()}
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
                continue
            # Dead: reap it if it is our own child (it may have died just now, after an
            # earlier look); someone else's zombie lingers until init reaps it, holding nothing.
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            pending.discard(pid)
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def mountpoints_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = {mp for mp, _ in mountinfo() if mp == str(root) or mp.startswith(prefix)}
    return sorted(points, key=lambda mp: -mp.count("/"))


def unmount_under(root: Path, attempts: int = 5) -> None:
    """Lazily unmounts everything at or below `root` (the kubelet's projected-token
    tmpfs mounts, overlay root filesystems, sandbox /dev/shm, its shared bind mount)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(attempts):
        points = mountpoints_under(root)
        if not points:
            return
        for mp in points:
            if libc.umount2(mp.encode(), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):  # already gone
                    raise OSError(err, f"umount {mp}: {os.strerror(err)}")
    left = mountpoints_under(root)
    if left:
        raise OSError(f"still mounted under {root}: {left[:5]}")


def container_log_links(target_dir: Path) -> list[Path]:
    """The kubelet's /var/log/containers links that point into `target_dir`."""
    prefix = str(target_dir).rstrip("/") + "/"
    if not CONTAINER_LOG_LINKS.is_dir():
        return []
    links = []
    for entry in CONTAINER_LOG_LINKS.iterdir():
        try:
            if os.readlink(entry).startswith(prefix):
                links.append(entry)
        except OSError:
            pass  # not a link, or gone meanwhile
    return links
