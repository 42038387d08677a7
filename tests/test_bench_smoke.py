"""Smoke tests for bench/: the review mix is answered by our pipeline, and the load generator
talks to a real server over TLS. No timing assertions."""

from __future__ import annotations

import collections
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import loadgen, mix
from webhook import certs
from webhook.core.settings import MutationSettings
from webhook.review import review
from webhook.sources.store import IdentityStore

REPO = Path(__file__).resolve().parent.parent


def _store(settings: MutationSettings) -> IdentityStore:
    store = IdentityStore(settings)
    for item in mix.service_accounts():
        meta = item["metadata"]
        store.put_service_account(meta["namespace"], meta["name"], meta.get("annotations"))
    return store


@pytest.mark.parametrize("api_version", [mix.V1, mix.V1BETA1])
def test_mix_is_answered_by_our_pipeline(api_version: str) -> None:
    settings = MutationSettings(aws_default_region=mix.REGION)
    store = _store(settings)
    reviews = mix.generate(100, api_version, seed=7)
    assert collections.Counter(r.kind for r in reviews) == mix.MIX  # exact shares at 100
    assert mix.generate(100, api_version, seed=7) == reviews  # deterministic
    for r in reviews:
        outcome = review(r.body, store, settings)
        assert outcome.allowed, (r.kind, outcome.reason)
        assert outcome.body.startswith(b"{") and api_version.encode() in outcome.body
        assert outcome.mutated == (r.kind == "annotated"), (r.kind, outcome.reason)
        if r.kind == "identity":
            assert outcome.reason == "already has its identity"


def test_objects_document_lists_every_service_account() -> None:
    import orjson

    doc = orjson.loads(mix.objects_document())
    assert doc["kind"] == "List"
    assert len(doc["items"]) == len(mix.NAMESPACES) * (len(mix.ANNOTATED_SAS) + len(mix.PLAIN_SAS))


def test_parse_response_content_length_and_chunked() -> None:
    plain = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1")
    assert loadgen.parse_response(plain) == (200, b"{}", len(plain) - 8, False)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    for cut in range(len(chunked)):  # incomplete until the last byte
        assert loadgen.parse_response(bytearray(chunked[:cut])) is None
    assert loadgen.parse_response(bytearray(chunked)) == (200, b"abcde", len(chunked), False)
    closing = bytearray(b"HTTP/1.1 500 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert loadgen.parse_response(closing) == (500, b"", len(closing), True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = certs.generate_ca("bench-smoke-ca", 1)
    serving = certs.generate_serving_cert(ca, ["localhost"], ["127.0.0.1"], 1)
    paths = certs.write_bundle(tmp_path / "certs", ca, serving)
    objects = tmp_path / "objects.json"
    objects.write_bytes(mix.objects_document())
    port = _free_port()
    argv = [
        sys.executable, "-m", "webhook", "serve", "--bind-address", "127.0.0.1",
        "--port", str(port), "--metrics-port", str(_free_port()),
        "--tls-cert", str(paths.tls_cert), "--tls-key", str(paths.tls_key),
        "--objects", str(objects), f"--aws-default-region={mix.REGION}",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(paths.ca_cert))
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=1, context=context):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}/mutate", paths.ca_cert
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_loadgen_against_our_server(server: tuple[str, Path]) -> None:
    url, ca = server
    bodies = mix.bodies(mix.generate(20, mix.V1))
    result = loadgen.run_load(url, ca, bodies, connections=2, requests=20, warmup=4, duration=30)
    summary = result.summary()
    assert result.errors == 0, summary
    assert result.requests == 20 and len(result.latencies) == 20
    assert sorted(set(result.body_indices)) == list(range(20))  # cycled over every body
