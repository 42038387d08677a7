"""Where a review's server CPU goes: the same load against progressively fuller servers.

    raw-fixed / http    an asyncio protocol on uvloop + httptools answering a fixed body: the
                        event loop, sockets and HTTP parsing, without uvicorn's request cycle
    raw-fixed / https   the same over TLS (uvloop's SSL transport)
    asgi-fixed / http   uvicorn (uvloop + httptools) + a bare ASGI app with a fixed answer
    asgi-fixed / https  the same over TLS
    asgi-review / https a bare ASGI app calling webhook.review.review()
    webhook / https     `python -m webhook serve --objects` (FastAPI, metrics, the real handler)

Each step's extra server CPU per review is what that layer costs. The load is vegeta at a
fixed rate (default 1,000 req/s, open loop, keep-alive HTTP/1.1) with the v1beta1 mix; each
server runs pinned to core 1 (taskset -c 1), vegeta on core 0. Server CPU per review is the
process's utime+stime over the measured window (after a warm-up second) ÷ successful reviews.

    python bench/stack.py [--rate 1000] [--duration 5] [--unpinned]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mix, vegeta
from bench.stats import process_cpu
from webhook import certs

REPO = Path(__file__).resolve().parent.parent


def serve_asgi(variant: str, port: int, cert: str, key: str) -> None:
    """Child-process entry point: a bare ASGI app under uvicorn, configured like ours."""
    import uvicorn

    from bench.microbench import make_store
    from webhook.core.settings import MutationSettings
    from webhook.review import review

    settings = MutationSettings(aws_default_region=mix.REGION)
    store = make_store(settings)
    fixed = b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}'  # noqa: E501
    headers = [(b"content-type", b"application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        answer = fixed if variant == "asgi-fixed" else review(body, store, settings).body
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    tls = {"ssl_certfile": cert, "ssl_keyfile": key} if cert else {}
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        **tls,  # type: ignore[arg-type]
    )


def serve_raw(port: int, cert: str, key: str) -> None:
    """Child-process entry point: no ASGI, no request objects, one write per answer. What a
    server costs below uvicorn's per-request machinery (task, scope, receive/send, events)."""
    import asyncio

    import httptools
    import uvloop

    fixed = b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}'  # noqa: E501
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (
            len(fixed),
            fixed,
        )
    )

    class Raw(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport  # uvloop's, not an asyncio.Transport subclass
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            b"".join(self.body)
            self.body = []
            self.transport.write(answer)

    async def main() -> None:
        context = None
        if cert:
            import ssl as ssl_module

            context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        server = await asyncio.get_running_loop().create_server(Raw, "127.0.0.1", port, ssl=context)
        await server.serve_forever()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str, ca: Path, body: bytes) -> bool:
    context = ssl.create_default_context(cafile=str(ca)) if url.startswith("https") else None
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return int(response.status) == 200
    except OSError:
        return False


def measure(
    argv: list[str], url: str, ca: Path, bodies: Sequence[bytes], args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:  # fmt: skip
    if not args.unpinned:
        argv = ["taskset", "-c", "1", *argv]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _answers(url, ca, bodies[0]):  # until it answers
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {argv}")
            time.sleep(0.1)
        result = vegeta.attack(
            url,
            ca,
            bodies,
            args.rate,
            args.duration,
            workdir=work / "vegeta",
            cpus=None if args.unpinned else "0",
            warmup_s=1.0,
            server_cpu=process_cpu(proc.pid),
        )
        return result.summary()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--serve"]:
        if arguments[1] == "raw-fixed":
            serve_raw(int(arguments[2]), arguments[3], arguments[4])
        else:
            serve_asgi(arguments[1], int(arguments[2]), arguments[3], arguments[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="offered req/s")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument(
        "--unpinned", action="store_true", help="do not pin (server on 1, vegeta on 0)"
    )
    args = parser.parse_args(arguments)
    bodies = mix.bodies(mix.generate(200, mix.V1BETA1))
    with tempfile.TemporaryDirectory(prefix="piw-stack-") as tmp:
        work = Path(tmp)
        ca = certs.generate_ca("bench-stack-ca", 1)
        paths = certs.write_bundle(
            work, ca, certs.generate_serving_cert(ca, ["localhost"], ["127.0.0.1"], 1)
        )
        objects = work / "objects.json"
        objects.write_bytes(mix.objects_document())
        cert, key = str(paths.tls_cert), str(paths.tls_key)
        rows = []
        variants = (
            ("raw-fixed", False),
            ("raw-fixed", True),
            ("asgi-fixed", False),
            ("asgi-fixed", True),
            ("asgi-review", True),
        )
        for variant, tls in variants:
            port = _free_port()
            child = [sys.executable, __file__, "--serve", variant, str(port)]
            child += [cert, key] if tls else ["", ""]
            scheme = "https" if tls else "http"
            url = f"{scheme}://127.0.0.1:{port}/mutate"
            rows.append((variant, scheme, measure(child, url, paths.ca_cert, bodies, args, work)))
        port = _free_port()
        serve = [
            sys.executable, "-m", "webhook", "serve", "--bind-address", "127.0.0.1",
            "--port", str(port), "--metrics-port", str(_free_port()), "--tls-cert", cert,
            "--tls-key", key, "--objects", str(objects), f"--aws-default-region={mix.REGION}",
        ]  # fmt: skip
        url = f"https://127.0.0.1:{port}/mutate"
        rows.append(("webhook", "https", measure(serve, url, paths.ca_cert, bodies, args, work)))
    where = "unpinned" if args.unpinned else "server on core 1, vegeta on core 0"
    print(f"vegeta at {args.rate:.0f} req/s for {args.duration:g} s, {where}")
    print(
        f"{'server':<12} {'':<6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/review':>14} "
        f"{'step':>6}  errors"
    )
    previous = 0.0
    for variant, scheme, s in rows:
        cpu = s.get("server_cpu_us_per_review", 0.0)
        print(
            f"{variant:<12} {scheme:<6} {s['achieved_rps']:>7.0f} {s['p50_ms']:>7.2f} "
            f"{s['p99_ms']:>7.2f} {cpu:>14.1f} {cpu - previous:>+6.0f}  {s['errors']}"
            + (f" {s['error_samples']}" if s.get("error_samples") else "")
        )
        previous = cpu
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
