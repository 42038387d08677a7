"""A network namespace of the test's own, for tests that need a kernel setting the host lacks.

`own_network_namespace()` moves the calling thread into a fresh network namespace (loopback up,
the given `net.*` sysctls written) and moves it back when the block ends. Threads and
subprocesses started inside the block inherit the namespace from the thread that starts them,
so servers, clients and their sockets all live there; the namespace disappears with its last
process. Linux only, and it needs CAP_SYS_ADMIN (the suite's CI runs as root): elsewhere it
raises `NamespaceUnavailable`, which tests turn into a skip that names the reason.

Python 3.11 has no os.unshare/os.setns, so the two system calls go through ctypes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
THIS_THREADS_NETWORK = Path("/proc/thread-self/ns/net")

# The `network_namespace` fixture (tests/conftest.py): call it with the settings to enter one.
EnterNetworkNamespace = Callable[[Mapping[str, str]], None]


class NamespaceUnavailable(RuntimeError):
    """This process cannot create a network namespace here (not Linux, or not privileged)."""


def _libc() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError as err:  # pragma: no cover - not a Linux libc
        raise NamespaceUnavailable(f"no libc to call unshare(2): {err}") from err


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(sock, SIOCSIFFLAGS, request)


def _write_sysctls(sysctls: Mapping[str, str]) -> None:
    # /proc/sys/net shows the namespace of the thread that opens the file: this one, now.
    for name, value in sysctls.items():
        if not name.startswith("net."):
            raise ValueError(f"{name}: only net.* settings belong to a network namespace")
        Path("/proc/sys", *name.split(".")).write_text(value)


@contextmanager
def own_network_namespace(sysctls: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run the block in a new network namespace with loopback up and `sysctls` set."""
    if not THIS_THREADS_NETWORK.exists():
        raise NamespaceUnavailable(f"no {THIS_THREADS_NETWORK}: not Linux")
    libc = _libc()
    original = os.open(THIS_THREADS_NETWORK, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NamespaceUnavailable(
                f"unshare(CLONE_NEWNET): {os.strerror(errno)} (needs CAP_SYS_ADMIN)"
            )
        try:
            _loopback_up()
            _write_sysctls(sysctls or {})
            yield
        finally:
            if libc.setns(original, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(
                    errno, f"setns back to the original network namespace: {os.strerror(errno)}"
                )
    finally:
        os.close(original)
