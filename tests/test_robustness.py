"""Failure handling found in review: each test pins a fix."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook.certs import generate_ca, generate_serving_cert, write_bundle
from webhook.cli import main
from webhook.core.identity import Lookup
from webhook.core.settings import MutationSettings
from webhook.server.app import WebhookContext, create_webhook_app
from webhook.server.grace import GraceLookup
from webhook.server.metrics import Metrics
from webhook.server.tls import CertificateReloader, server_context
from webhook.sources import kube
from webhook.sources.kube import KubeSource
from webhook.sources.store import IdentityStore

from .builders import ROLE, admission_review, pod
from .serverproc import make_certs, running_webhook, service_account, wait_until, write_objects

# -- the store ------------------------------------------------------------------------------


def test_a_direct_fetch_racing_a_relist_is_not_lost() -> None:
    store = IdentityStore(MutationSettings())

    def relist() -> Iterator[tuple[str, str, dict[str, str] | None]]:
        yield "ns", "old", None
        # A grace-period fetch lands while the relist is still being built.
        store.put_service_account("ns", "fresh", {"eks.amazonaws.com/role-arn": ROLE})
        yield "ns", "other", None

    store.replace_service_accounts(relist())
    fresh = store.lookup("ns", "fresh").service_account
    assert fresh is not None and fresh.role_arn == ROLE
    assert store.service_account_count == 3


def test_a_delete_racing_a_relist_wins() -> None:
    store = IdentityStore(MutationSettings())
    store.put_service_account("ns", "gone", None)

    def relist() -> Iterator[tuple[str, str, dict[str, str] | None]]:
        yield "ns", "gone", None
        store.delete_service_account("ns", "gone")

    store.replace_service_accounts(relist())
    assert store.lookup("ns", "gone").service_account is None


# -- TLS reload -----------------------------------------------------------------------------


def _handshake(server_ctx: ssl.SSLContext, ca_pem: bytes) -> bool:
    """A full TLS handshake in memory between a verifying client and `server_ctx`."""
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return True
    return False


def test_a_mismatched_pair_is_refused_and_the_listener_keeps_its_certificate(
    tmp_path: Path,
) -> None:
    ca = generate_ca("reload-ca", 2)
    paths = write_bundle(tmp_path, ca, generate_serving_cert(ca, ["localhost"], [], 1))
    ctx = server_context(str(paths.tls_cert), str(paths.tls_key))
    reloader = CertificateReloader(ctx, str(paths.tls_cert), str(paths.tls_key))
    # Half-rotated: a new certificate next to the old key.
    other = generate_serving_cert(ca, ["localhost"], [], 1)
    paths.tls_cert.write_bytes(other.cert_pem)
    with pytest.raises(ssl.SSLError):
        reloader.reload()
    assert _handshake(ctx, ca.cert_pem)
    paths.tls_key.write_bytes(other.key_pem)  # rotation completes
    reloader.reload()
    assert reloader.reloads == 1 and _handshake(ctx, ca.cert_pem)


# -- the request path -----------------------------------------------------------------------


class _BrokenLookup(GraceLookup):
    def lookup_now(self, namespace: str, service_account: str) -> Lookup | None:
        raise RuntimeError("simulated bug")

    async def lookup(self, namespace: str, service_account: str) -> Lookup:
        raise RuntimeError("simulated bug")


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_internal_error_is_a_500_so_the_failure_policy_applies() -> None:
    store = IdentityStore(MutationSettings())
    metrics = Metrics()
    ctx = WebhookContext(
        MutationSettings(), store, _BrokenLookup(store, 0, None), metrics, lambda: True
    )
    transport = httpx.ASGITransport(app=create_webhook_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/mutate", json=admission_review(pod()))
        assert response.status_code == 500
        assert "simulated bug" in response.text
        assert (await client.get("/healthz")).text == "ok"
    assert metrics.counters.value("http_request_count", "POST", "/mutate", "500") == 1


# -- container credentials file -------------------------------------------------------------


@pytest.mark.slow
def test_a_broken_identities_file_at_start_is_logged_and_retried_not_fatal(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs")
    objects = tmp_path / "objects.json"
    write_objects(objects, [service_account("pi")])
    identities = tmp_path / "identities.json"
    identities.write_text('{"identities": [')  # caught mid-write
    with running_webhook(
        tls_cert=files.tls_cert,
        tls_key=files.tls_key,
        ca_pem=files.ca.cert_pem,
        objects=objects,
        log_path=tmp_path / "server.log",
        extra_args=(f"--watch-container-credentials-config={identities}",),
    ) as server:
        assert "starting without identities" in server.log_text()
        identities.write_text(
            json.dumps({"identities": [{"namespace": "default", "serviceAccount": "pi"}]})
        )

        def pod_identity() -> bool:
            with server.client() as https:
                body = https.post("/mutate", json=admission_review(pod(sa="pi"))).json()
            return "patch" in body["response"]

        wait_until(pod_identity, timeout=10, what="identities picked up after the fix")


# -- replay ---------------------------------------------------------------------------------


def test_replay_names_cases_by_path_so_expected_files_never_collide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.json"
    write_objects(
        objects, [service_account("app", annotations={"eks.amazonaws.com/role-arn": ROLE})]
    )
    for sub, sa in (("a", "app"), ("b", "nobody")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        (tmp_path / "in" / sub / "review.json").write_text(json.dumps(admission_review(pod(sa=sa))))
    golden = tmp_path / "golden"
    base = ["replay", "--objects", str(objects), "--expect", str(golden)]
    assert main([*base, "--update-expected", str(tmp_path / "in")]) == 0
    assert sorted(p.relative_to(golden).as_posix() for p in golden.rglob("*.json")) == [
        "a/review.json",
        "b/review.json",
    ]
    assert main([*base, str(tmp_path / "in")]) == 0
    same_name = [
        str(tmp_path / "in" / "a" / "review.json"),
        str(tmp_path / "in" / "b" / "review.json"),
    ]
    assert main([*base, *same_name]) == 2
    assert "both named 'review'" in capsys.readouterr().err


def test_replayed_audit_events_use_the_default_service_account_as_admission_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.json"
    write_objects(
        objects, [service_account("default", annotations={"eks.amazonaws.com/role-arn": ROLE})]
    )
    unadmitted: dict[str, Any] = pod()
    del unadmitted["spec"]["serviceAccountName"]
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "a1",
        "verb": "create",
        "objectRef": {"resource": "pods", "namespace": "default"},
        "requestObject": unadmitted,
    }
    log = tmp_path / "audit.log"
    log.write_text(json.dumps(event) + "\n")
    assert main(["replay", "--objects", str(objects), str(log)]) == 0
    assert "patch" in json.loads(capsys.readouterr().out)["response"]


def test_missing_service_account_counter_is_exposed_from_the_start() -> None:
    assert b"\npod_identity_webhook_missing_sa_count 0.0\n" in Metrics().exposition()


# -- metrics --------------------------------------------------------------------------------


def test_histogram_bucket_bounds_are_written_as_go_writes_them() -> None:
    metrics = Metrics()
    metrics.observe_request("POST", "/mutate", 200, 0.002)
    text = metrics.exposition().decode()
    bounds = re.findall(r'http_request_latencies_bucket\{le="([^"]+)"', text)
    # prometheus.ExponentialBuckets(125000, 2, 7) as client_golang formats them.
    assert bounds == ["125000", "250000", "500000", "1e+06", "2e+06", "4e+06", "8e+06", "+Inf"]
    seconds = re.findall(
        r'pod_identity_webhook_request_duration_seconds_bucket\{le="([^"]+)"', text
    )
    assert seconds[-2:] == ["1", "+Inf"] and "0.00025" in seconds
    assert '.0"' not in "".join(re.findall(r'le="[^"]*"', text))


REQUESTS = [
    ("POST", "/mutate", 200, 0.0003),
    ("POST", "/mutate", 200, 0.25),  # on a bound: counted in its bucket (le)
    ("GET", "/mutate", 415, 0.00001),
    ("POST", "/mutate", 200, 9.0),  # past every bound: +Inf only
    ("GET", "/healthz", 200, 0.001),
]


def test_request_latency_families_match_prometheus_clients_histograms_and_summary() -> None:
    """One observation per request feeds upstream's three families; a scrape shows what
    prometheus_client's Histogram and Summary would for the same requests, without their
    `_created` series (client_golang, and so upstream, has none)."""
    from prometheus_client import CollectorRegistry, Histogram, Summary, generate_latest

    reference = CollectorRegistry()
    micro = Histogram(
        "http_request_latencies", "Response latency distribution in microseconds for each "
        "verb and path", ("verb", "path"), buckets=[125000.0 * 2**i for i in range(7)],
        registry=reference,
    )  # fmt: skip
    summary = Summary(
        "http_request_duration_microseconds",
        "Response latency summary in microseconds for each verb and path.",
        ("verb", "path"), registry=reference,
    )  # fmt: skip
    seconds = Histogram(
        "pod_identity_webhook_request_duration_seconds",
        "Time from request received to response written, in seconds, for each path",
        ("path",), registry=reference,
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    )  # fmt: skip
    metrics = Metrics()
    for verb, path, code, elapsed in REQUESTS:
        metrics.observe_request(verb, path, code, elapsed)
        micro.labels(verb, path).observe(elapsed * 1e6)
        summary.labels(verb, path).observe(elapsed * 1e6)
        seconds.labels(path).observe(elapsed)

    def families(text: str) -> list[str]:
        names = ("http_request_latencies", "http_request_duration_microseconds",
                 "pod_identity_webhook_request_duration_seconds")  # fmt: skip
        return [
            re.sub(r'le="(\d+)\.0"', r'le="\1"', line)
            for line in text.splitlines()
            if any(name in line for name in names) and "_created" not in line
        ]

    expected = families(generate_latest(reference).decode())
    # 3 (verb, path) x (8 buckets + count + sum), 3 x (count + sum), 2 paths x (13 + 2), HELP/TYPE
    assert len(expected) == 3 * 10 + 3 * 2 + 2 * 15 + 6
    assert families(metrics.exposition().decode()) == expected
    assert "_created" not in metrics.exposition().decode().replace("loop_lag_seconds_created", "")


# -- the Kubernetes watch after an outage ---------------------------------------------------


def test_the_watch_backoff_is_jittered_and_never_waits_more_than_3s() -> None:
    from webhook.sources.backoff import Backoff

    low, high = Backoff(jitter=lambda: 0.0), Backoff(jitter=lambda: 0.999)
    lows = [low.next_delay() for _ in range(30)]
    highs = [high.next_delay() for _ in range(30)]
    assert lows[0] == pytest.approx(0.1) and highs[0] == pytest.approx(0.2, abs=0.001)
    assert lows[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(highs) <= 3.0 and min(lows[10:]) >= 1.5  # capped, and still backing off
    low.reset()
    assert low.next_delay() == pytest.approx(0.1)


class _FakeTime:
    """The retry loops' clock and sleep: each wait returns at once and moves the clock on by
    its length. Once the clock has reached `hold_at`, the next wait first blocks (in real
    time) until `release` is set, so a test can change the world at that instant."""

    def __init__(self, hold_at: float = float("inf")) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.hold_at = hold_at
        self.holding = threading.Event()
        self.release = threading.Event()
        self.stopped = False

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        if self.now >= self.hold_at and not self.release.is_set():
            self.holding.set()
            self.release.wait(10)
        self.waits.append(seconds)
        self.now += seconds
        return self.stopped


class _RefusingAPI:
    """Refuses the ServiceAccount list `outage` times, then lists nothing and stops `source`."""

    def __init__(self, time: _FakeTime, outage: int) -> None:
        self.time, self.outage = time, outage
        self.source: KubeSource | None = None

    def get_chunks(self, path: str, query: Any = None, timeout: float = 30.0) -> Iterator[bytes]:
        if len(self.time.waits) < self.outage:
            raise ConnectionRefusedError("connection refused")
        assert self.source is not None
        self.source.stop()  # back: the list runs, the watch would follow; end the test here
        return iter(
            [b'{"kind":"ServiceAccountList","metadata":{"resourceVersion":"9"},"items":[]}']
        )


def test_after_a_long_api_server_outage_retries_stay_seconds_apart_and_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube, "_give_up_gil", lambda: None)
    fake = _FakeTime()
    outage = 40  # attempts refused while the API server is down
    api = _RefusingAPI(fake, outage)
    source = KubeSource(
        IdentityStore(MutationSettings()),
        api,  # type: ignore[arg-type]
        None,
        60.0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    api.source = source
    source.run("serviceaccounts")  # returns once stopped
    assert len(fake.waits) == outage
    assert max(fake.waits) <= 3.0, "a recovered API server would go unseen for too long"
    assert fake.now > 60  # a long outage, passed without sleeping
    assert source.reconnects == {"serviceaccounts": outage}
    metrics = Metrics()
    metrics.track_reconnects(lambda: dict(source.reconnects))
    assert (
        'pod_identity_webhook_kube_reconnects_total{resource="serviceaccounts"} 40.0'
        in metrics.exposition().decode()
    )


class _OutageAPI:
    """Just enough of the API server for the ServiceAccount list and watch, which can go
    away (listener and open watches cut) and come back on the same port."""

    def __init__(self) -> None:
        self.accounts: list[str] = ["app"]
        self.port = 0
        self._open: set[Any] = set()
        self._server: Any = None

    def _handler(self) -> Any:
        from http.server import BaseHTTPRequestHandler

        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if "watch=true" in self.path:  # nothing changes: hold it open until cut
                    api._open.add(self.connection)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.flush()
                    self.connection.recv(1)  # returns once the outage cuts the socket
                    return
                items = [
                    {"metadata": {"namespace": "default", "name": name, "resourceVersion": "1"}}
                    for name in api.accounts
                ]
                body = json.dumps({"metadata": {"resourceVersion": "1"}, "items": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def up(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        import socket

        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._open):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._open.clear()


@pytest.mark.slow
def test_after_an_api_server_outage_a_new_service_account_is_seen_within_seconds() -> None:
    # 12 s of outage on the injected clock: long enough for a 30s-capped exponential backoff
    # (upstream's) to reach ~10s steps. Ours is capped at 3 s, so the first retry after the
    # API server is back comes at most 3 s later (the real time taken is a fraction of that).
    fake = _FakeTime(hold_at=12.0)
    api = _OutageAPI()
    api.up()
    store = IdentityStore(MutationSettings())
    source = KubeSource.connect(
        store,
        kubeconfig="",
        api_url=f"http://127.0.0.1:{api.port}",
        config_map_namespace=None,
        resync_seconds=60,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    source.start()
    try:
        wait_until(source.synced, 10, "the first list")
        api.down()
        assert fake.holding.wait(10), "the watch did not retry through 12 s of outage"
        api.accounts.append("created-during-the-outage")
        api.up()
        back = fake.now
        fake.release.set()
        wait_until(
            lambda: store.lookup("default", "created-during-the-outage").service_account,
            10,
            "the ServiceAccount created during the outage",
        )
        assert fake.now - back <= 3.0, "the watch came back too late after the outage"
        assert source.reconnects["serviceaccounts"] >= 4  # counted for the metric
    finally:
        fake.stopped = True
        fake.release.set()
        source.stop()
        api.down()
