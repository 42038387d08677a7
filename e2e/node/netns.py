"""A network namespace of our own that carries the node's addresses.

Nothing routes out of it: it has no default route, and its devices are `lo`, a bridge with no
ports (the node's addresses) and what the CNI plugins add inside (cni.py), so every connection
made inside stays on this machine. The test process itself enters
it (`enter()`), so it reaches the node at its real IP, not through a port forward.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BRIDGE", "NETNS_DIR", "NetNamespace", "netns_inode"]

NETNS_DIR = Path("/var/run/netns")
BRIDGE = "piw0"
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    # os.setns exists only from Python 3.12; the project targets 3.11.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns(CLONE_NEWNET): {os.strerror(errno)}")


def netns_inode(path: Path) -> int:
    """The nsfs inode that names a namespace, as in `/proc/PID/ns/net` -> `net:[INODE]`."""
    return os.stat(path).st_ino


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class NetNamespace:
    """`ip netns add NAME`, with `lo` up and `addresses` (as /32) on a bridge device, and
    `routes` (CIDRs) to that device: addresses no interface holds but netfilter rewrites
    (Service IPs: a local connection needs a route before kube-proxy's OUTPUT DNAT applies)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        self._original_fd: int | None = None

    @classmethod
    def create(
        cls, name: str, addresses: Sequence[str], routes: Sequence[str] = ()
    ) -> NetNamespace:
        ns = cls(name)
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            # This kernel has no `dummy` link type; a bridge without ports is as inert.
            _ip("-n", name, "link", "add", BRIDGE, "type", "bridge")
            for address in addresses:
                _ip("-n", name, "addr", "add", f"{address}/32", "dev", BRIDGE)
            _ip("-n", name, "link", "set", BRIDGE, "up")
            for cidr in routes:
                _ip("-n", name, "route", "add", cidr, "dev", BRIDGE)
        except BaseException:
            ns.delete()
            raise
        return ns

    def nsenter(self) -> list[str]:
        """Command prefix running a program inside (`nsenter`, not `ip netns exec`: the
        latter remounts /sys, which hides the cgroup mounts from the kubelet and runc)."""
        return ["nsenter", f"--net={self.path}"]

    def enter(self) -> None:
        """Moves this process into the namespace; `leave()` moves it back.

        setns changes only the calling thread: with no other thread alive, every thread
        and child started afterwards inherits the namespace.
        """
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            raise RuntimeError(f"cannot enter {self.name}: other threads are running ({names})")
        if self._original_fd is not None:
            return
        original = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        except BaseException:
            os.close(original)
            raise
        finally:
            os.close(target)
        self._original_fd = original

    def leave(self) -> None:
        fd, self._original_fd = self._original_fd, None
        if fd is not None:
            try:
                _setns(fd)
            finally:
                os.close(fd)

    def inode(self) -> int:
        return netns_inode(self.path)

    def delete(self) -> None:
        """`ip netns delete` (idempotent); the namespace dies with its last process."""
        self.leave()
        if self.path.exists():
            _ip("netns", "delete", self.name)
