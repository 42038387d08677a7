"""The node's top-level cgroup, in every hierarchy the machine mounts.

The kubelet (cgroupfs driver, `cgroupRoot: /NAME`) puts every pod below `/NAME`, and runc
creates each container's cgroup in every v1 controller and, on this hybrid layout, in
the unified hierarchy too. One name to create, search and remove.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from e2e.node.cleanup import kill_processes, mountinfo

__all__ = ["create", "mountpoints", "pids_in", "remove"]


def mountpoints() -> list[Path]:
    """Every cgroup v1 controller hierarchy and the unified (v2) one, if mounted."""
    return [Path(mp) for mp, fstype in mountinfo() if fstype in ("cgroup", "cgroup2")]


def create(name: str) -> None:
    """Creates `/name` everywhere (the kubelet refuses a cgroupRoot that does not exist)."""
    for mountpoint in mountpoints():
        top = mountpoint / name
        top.mkdir(exist_ok=True)
        # A new v1 cpuset has no CPUs or memory nodes, and nothing can join it or a child.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (top / knob).exists() and not (top / knob).read_text().strip():
                (top / knob).write_text((mountpoint / knob).read_text())


def _dirs(name: str) -> Iterator[Path]:
    for mountpoint in mountpoints():
        top = mountpoint / name
        if top.is_dir():
            # Deepest first, so parents are empty when their turn comes.
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                yield Path(dirpath)


def pids_in(name: str) -> set[int]:
    """Processes in `/name` (or below it) of any hierarchy."""
    found: set[int] = set()
    for path in _dirs(name):
        try:
            found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return found


def remove(name: str, timeout: float = 10.0) -> None:
    """Removes `/name` and its children in every hierarchy.

    Kills whatever still runs in them first: rmdir fails with EBUSY on a cgroup with
    members, and a freshly killed process leaves its cgroup a moment later.
    """
    kill_processes(pids_in(name))
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for path in _dirs(name):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                busy.append(f"{path}: {e.strerror}")
        if not busy:
            return
        if time.monotonic() > deadline:
            raise OSError(f"cannot remove cgroups: {busy[:5]}")
        time.sleep(0.1)
