"""Listening sockets: dual stack by default, optionally shared with SO_REUSEPORT.

Upstream listens on `:443`, which Go opens as one IPv6 socket that also accepts IPv4
(IPv4-mapped addresses). The default here does the same, and falls back to IPv4 alone where
the host has no IPv6. `--reuse-port` lets two processes on one host (two replicas with
hostNetwork) listen on the same port; the kernel spreads new connections over them.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
# Linux 5.14+: 1 hands the connections queued on a closing listener to another listener of its
# SO_REUSEPORT group; 0 (the default) resets them. Read in the server's network namespace,
# which with hostNetwork is the node's.
MIGRATE_SETTING = Path("/proc/sys/net/ipv4/tcp_migrate_req")
# What "no IPv6 here" looks like: no IPv6 in the kernel, or no IPv6 address to bind.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


class ListenError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What one listener binds: `host` empty means every address, both families."""

    host: str
    port: int
    reuse_port: bool = False


def queued_connections_migrate(setting: Path = MIGRATE_SETTING) -> bool | None:
    """Whether this kernel hands a closing listener's queued connections to the rest of its
    SO_REUSEPORT group; None when it cannot tell (not Linux, a kernel before 5.14)."""
    try:
        return setting.read_text().strip() != "0"
    except OSError:
        return None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socket(family: int, address: tuple[str, int], reuse_port: bool, dual: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except socket.gaierror as err:
        raise ListenError(f"cannot resolve --bind-address {host!r}: {err.strerror}") from None
    unique: dict[tuple[int, str], tuple[int, tuple[str, int]]] = {}
    for family, _, _, _, sockaddr in infos:
        unique.setdefault((family, str(sockaddr[0])), (family, (str(sockaddr[0]), port)))
    return list(unique.values())


def bind(endpoint: Endpoint) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for `endpoint`; ListenError says why not."""
    port, reuse = endpoint.port, endpoint.reuse_port
    try:
        if not endpoint.host:
            try:
                return [_socket(socket.AF_INET6, ("::", port), reuse, dual=True)]
            except OSError as err:
                if err.errno not in _NO_IPV6:
                    raise
            return [_socket(socket.AF_INET, ("0.0.0.0", port), reuse, dual=False)]
        sockets: list[socket.socket] = []
        try:
            for family, address in _addresses(endpoint.host, port):
                # "::" is every address of both families, as Go opens "[::]:port".
                dual = family == socket.AF_INET6 and address[0] == "::"
                sockets.append(_socket(family, address, reuse, dual))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets
    except OSError as err:
        where = format_address(endpoint.host or "::", port)
        raise ListenError(f"cannot listen on {where}: {err.strerror or err}") from None


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return format_address(str(host), int(port))
