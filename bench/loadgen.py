"""HTTPS keep-alive load generator for `POST /mutate`: asyncio protocols, hand-written HTTP/1.1.

Each connection sends one request at a time over a persistent TLS connection (as the API
server does); requests are pre-encoded, responses parsed with a minimal HTTP/1.1 reader
(Content-Length or chunked). Every run is bounded in both requests and time.

    python bench/loadgen.py --url https://127.0.0.1:8443/mutate --ca certs/out/ca.crt \\
        --bodies /tmp/mix/reviews --connections 8 --duration 10

As a library: `run_load(url, ca_file, bodies, connections=..., duration=..., requests=...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

MAX_SECONDS = 600.0  # hard cap on any run, whatever was asked
MAX_REQUESTS = 5_000_000
DEFAULT_DURATION = 10.0
CONNECT_TIMEOUT = 10.0
GRACE_SECONDS = 10.0  # after the deadline, in-flight requests get this long before cancelling


class LoadError(RuntimeError):
    pass


# --------------------------------------------------------------------------- results


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    connections: int
    requests: int = 0  # completed in the measured window, errors included
    errors: int = 0
    elapsed: float = 0.0  # seconds of the measured window
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    body_indices: list[int] = field(default_factory=list)  # parallel to latencies
    error_samples: list[str] = field(default_factory=list)
    client_cpu: float = 0.0  # CPU seconds this process spent in the window
    server_cpu: float | None = None  # from the caller's probe, if given
    reconnects: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) * 1000

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        ms = [percentile(ordered, q) * 1000 for q in (50, 90, 99)]
        out: dict[str, Any] = {
            "connections": self.connections,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(ms[0], 3),
            "p90_ms": round(ms[1], 3),
            "p99_ms": round(ms[2], 3),
            "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
            "client_cpu_pct": round(100 * self.client_cpu / self.elapsed, 1) if self.elapsed else 0,
            "reconnects": self.reconnects,
        }
        if self.server_cpu is not None and self.requests:
            out["server_cpu_pct"] = round(100 * self.server_cpu / self.elapsed, 1)
            out["server_cpu_us_per_req"] = round(1e6 * self.server_cpu / self.requests, 1)
        if self.error_samples:
            out["error_samples"] = self.error_samples[:5]
        return out


# --------------------------------------------------------------------------- HTTP/1.1


def parse_response(buf: bytearray) -> tuple[int, bytes, int, bool] | None:
    """(status, body, bytes consumed, server closes) of one complete response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise LoadError(f"bad status line {lines[0][:80]!r}") from None
    length = 0
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    pos = end + 4
    if not chunked:
        if len(buf) < pos + length:
            return None
        return status, bytes(buf[pos : pos + length]), pos + length, close
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":  # no trailers
                return status, b"".join(parts), pos + 2, close
            trailer_end = buf.find(b"\r\n\r\n", pos)
            if trailer_end < 0:
                return None
            return status, b"".join(parts), trailer_end + 4, close
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def encode_requests(url: str, bodies: Sequence[bytes]) -> list[bytes]:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        "Accept: application/json\r\nUser-Agent: piw-loadgen\r\n"
    ).encode()
    return [head + f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and awaits its response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self.buffer)
        except (LoadError, ValueError) as err:
            waiter.set_exception(LoadError(f"unparsable response: {err}"))
            return
        if parsed is not None:
            status, body, consumed, close = parsed
            del self.buffer[:consumed]
            if close:
                self.closed = True
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def exchange(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# --------------------------------------------------------------------------- the run


def _valid(status: int, body: bytes) -> str | None:
    """None for a 200 carrying an AdmissionReview response, else what was wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        return f"unparsable body: {err}"
    response = review.get("response") if isinstance(review, dict) else None
    if not isinstance(response, dict) or not isinstance(response.get("allowed"), bool):
        return f"no response.allowed in {body[:120]!r}"
    return None


@dataclass
class _Phase:
    """Shared by the workers of one phase: hands out request numbers until a bound is hit."""

    limit: int
    deadline: float
    record: bool
    result: LoadResult
    issued: int = 0

    def take(self) -> int | None:
        if self.issued >= self.limit or time.perf_counter() >= self.deadline:
            return None
        self.issued += 1
        return self.issued - 1


class _Client:
    def __init__(self, url: str, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LoadError(f"unsupported URL {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl_context if parts.scheme == "https" else None

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(loop),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            ),
            CONNECT_TIMEOUT,
        )
        return protocol


async def _worker(
    client: _Client, conns: list[_Connection], slot: int, requests: Sequence[bytes], phase: _Phase
) -> None:
    """Send requests on conns[slot] (replacing it when the server closed it) until the phase
    hands out no more."""
    conn = conns[slot]
    result = phase.result
    count = len(requests)
    clock = time.perf_counter
    while (n := phase.take()) is not None:
        index = n % count
        if conn.closed:
            try:
                conn = await client.connect()
            except (OSError, TimeoutError) as err:
                if phase.record:
                    result.requests += 1
                    result.errors += 1
                    if len(result.error_samples) < 20:
                        result.error_samples.append(f"connect: {err!r}")
                await asyncio.sleep(0.05)
                continue
            conns[slot] = conn
            result.reconnects += 1
        started = clock()
        try:
            status, body = await conn.exchange(requests[index])
        except (OSError, LoadError) as err:
            problem: str | None = str(err)
            conn.close()
            conn.closed = True
        else:
            problem = _valid(status, body)
        if not phase.record:
            continue
        result.requests += 1
        if problem is None:
            result.latencies.append(clock() - started)
            result.body_indices.append(index)
        else:
            result.errors += 1
            if len(result.error_samples) < 20:
                result.error_samples.append(problem)


async def _run_phase(
    client: _Client,
    conns: list[_Connection],
    requests: Sequence[bytes],
    phase: _Phase,
) -> None:
    tasks = [
        asyncio.ensure_future(_worker(client, conns, slot, requests, phase))
        for slot in range(len(conns))
    ]
    timeout = max(0.0, phase.deadline - time.perf_counter()) + GRACE_SECONDS
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:  # a stuck request: an error, and the connection is replaced
        task.cancel()
        if phase.record:
            phase.result.errors += 1
            phase.result.requests += 1
            phase.result.error_samples.append(f"no response {GRACE_SECONDS:g}s after the deadline")
    if pending:
        await asyncio.wait(pending)
    for slot, task in enumerate(tasks):
        if task in pending or task.exception() is not None or conns[slot].closed:
            conns[slot].close()
            conns[slot] = await client.connect()


async def run_load_async(
    url: str,
    ca_file: str | os.PathLike[str] | None,
    bodies: Sequence[bytes],
    *,
    connections: int = 1,
    duration: float | None = None,
    requests: int | None = None,
    warmup: int = 0,
    server_cpu: Callable[[], float] | None = None,
    ca_pem: bytes | None = None,
) -> LoadResult:
    """Open `connections`, send `warmup` unrecorded requests, then measure until `requests`
    are done or `duration` seconds pass (whichever first; both capped).

    The server is verified against `ca_file` or `ca_pem`; `server_cpu` (cumulative CPU
    seconds of the server) is sampled at the edges of the measured window."""
    if not bodies:
        raise LoadError("no request bodies")
    if connections < 1:
        raise LoadError("connections must be at least 1")
    if duration is None and requests is None:
        duration = DEFAULT_DURATION
    seconds = min(duration if duration is not None else MAX_SECONDS, MAX_SECONDS)
    limit = min(requests if requests is not None else MAX_REQUESTS, MAX_REQUESTS)
    context = None
    if ca_file or ca_pem:
        context = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None,
            cadata=ca_pem.decode() if ca_pem else None,
        )
    client = _Client(url, context)
    encoded = encode_requests(url, bodies)
    conns = list(await asyncio.gather(*(client.connect() for _ in range(connections))))
    result = LoadResult(connections=connections)
    try:
        if warmup > 0:
            warm = _Phase(warmup, time.perf_counter() + min(60.0, seconds), False, result)
            await _run_phase(client, conns, encoded, warm)
        cpu0 = time.process_time()
        server0 = server_cpu() if server_cpu else 0.0
        start = time.perf_counter()
        await _run_phase(client, conns, encoded, _Phase(limit, start + seconds, True, result))
        result.elapsed = time.perf_counter() - start
        result.client_cpu = time.process_time() - cpu0
        if server_cpu:
            result.server_cpu = server_cpu() - server0
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports close
    return result


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_load(
    url: str,
    ca_file: str | os.PathLike[str] | None,
    bodies: Sequence[bytes],
    **kwargs: Any,
) -> LoadResult:
    """Synchronous wrapper (its own event loop, uvloop when installed)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_load_async(url, ca_file, bodies, **kwargs))


def read_bodies(paths: Sequence[Path]) -> list[bytes]:
    """The files given, and the *.json files of directories (sorted)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return [f.read_bytes() for f in files]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="e.g. https://127.0.0.1:8443/mutate")
    parser.add_argument("--ca", help="CA certificate to verify the server with (https)")
    parser.add_argument(
        "--bodies", type=Path, nargs="+", required=True, help="review files or directories"
    )
    parser.add_argument("--connections", "-c", type=int, default=1)
    parser.add_argument(
        "--duration", "-d", type=float, help=f"seconds (default {DEFAULT_DURATION:g})"
    )
    parser.add_argument("--requests", "-n", type=int, help="stop after this many requests")
    parser.add_argument("--warmup", type=int, default=100, help="unrecorded requests first")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    bodies = read_bodies(args.bodies)
    result = run_load(
        args.url,
        args.ca,
        bodies,
        connections=args.connections,
        duration=args.duration,
        requests=args.requests,
        warmup=args.warmup,
    )
    summary = result.summary()
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"{summary['requests']} requests, {summary['errors']} errors in "
            f"{summary['seconds']:.2f}s over {args.connections} connection(s): "
            f"{summary['rps']:.0f} req/s; latency ms p50 {summary['p50_ms']:.3f} "
            f"p90 {summary['p90_ms']:.3f} p99 {summary['p99_ms']:.3f} max {summary['max_ms']:.3f} "
            f"(load generator CPU {summary['client_cpu_pct']}%)"
        )
        for sample in summary.get("error_samples", ()):
            print(f"  error: {sample}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
