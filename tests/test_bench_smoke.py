"""Smoke tests for bench/: the review mix is answered by our pipeline, and vegeta (built and
cached by e2e/tools/build.sh; skipped without Go, as the e2e suites are) drives our real server
over TLS and its per-request results decode. No timing assertions."""

from __future__ import annotations

import base64
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

from bench import mix, openloop
from bench import vegeta as vegeta_tool
from bench.stats import percentile
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


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0, 50, 99, 99.9, 100)] == [1, 50, 99, 100, 100]
    assert percentile([], 50) == 0.0


def test_decode_counts_errors_and_checks_bodies() -> None:
    good = base64.b64encode(b'{"response":{"uid":"u","allowed":true}}').decode()
    bad = base64.b64encode(b'{"kind":"AdmissionReview"}').decode()
    rows = [
        ["1000000000", "200", "2000000", "10", "40", "", good],
        ["1001000000", "200", "1000000", "10", "40", "", good],
        ["1002000000", "200", "1000000", "10", "20", "", bad],
        ["1003000000", "500", "1000000", "10", "0", "500 Internal Server Error", ""],
        ["1004000000", "0", "0", "0", "0", "dial tcp: connection refused", ""],
    ]
    result = vegeta_tool.decode(rows, rate=1000, duration=0.005, check_bodies=True)
    assert (result.sent, result.ok, result.errors) == (5, 2, 3)
    assert result.latencies_ms == [1.0, 2.0] and result.p(50) == 1.0 and result.p(100) == 2.0
    assert result.error_samples[0].startswith("no response.allowed")
    assert result.error_samples[1:] == ["500 Internal Server Error", "dial tcp: connection refused"]
    assert result.codes == {200: 3, 500: 1, 0: 1}
    assert result.started == 1.0 and result.ended == 1.004
    unchecked = vegeta_tool.decode(rows, rate=1000, duration=0.005, check_bodies=False)
    assert (unchecked.ok, unchecked.errors) == (3, 2)


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


@pytest.mark.slow
def test_vegeta_against_our_server(vegeta: Path, server: tuple[str, Path], tmp_path: Path) -> None:
    url, ca = server
    bodies = mix.bodies(mix.generate(20, mix.V1))
    result = vegeta_tool.attack(url, ca, bodies, rate=50, duration=1, workdir=tmp_path / "vegeta")
    assert result.errors == 0, result.error_samples
    assert result.ok > 0 and result.sent == result.ok == len(result.latencies_ms)
    assert result.latencies_ms == sorted(result.latencies_ms)
    assert result.ended >= result.started


def _result(rate: float, latencies: list[float], errors: int = 0) -> vegeta_tool.AttackResult:
    ok = len(latencies)
    return vegeta_tool.AttackResult(
        rate=rate, duration_s=1.0, latencies_ms=sorted(latencies), sent=ok + errors, ok=ok,
        errors=errors, error_samples=["HTTP 500"] if errors else [], achieved_rps=float(ok),
        started=0.0, ended=1.0, server_cpu_s=ok * 300e-6,
    )  # fmt: skip


@pytest.mark.slow
def test_openloop_saturation_table_and_figure(tmp_path: Path) -> None:
    limits = openloop.Limits()
    fine = _result(100, [1.0] * 100)
    assert openloop.saturation(fine, limits) is None
    assert "achieved" in (openloop.saturation(_result(100, [1.0] * 90), limits) or "")
    assert "errors" in (openloop.saturation(_result(100, [1.0] * 97, errors=3), limits) or "")
    slow = _result(100, [1.0] * 98 + [150.0] * 2)
    assert "p99" in (openloop.saturation(slow, limits) or "")
    points = []
    for budget in (openloop.PINNED, openloop.UNPINNED):
        for name, rates in (("ours", (250, 500)), ("upstream", (250,))):
            for rate in rates:
                r = _result(
                    rate, [0.5] * rate if rate == 250 else [0.5] * (rate - 10) + [200.0] * 10
                )
                points.append(openloop.point(name, budget, 0, r, limits))
    report = {
        "machine": {"date": "d", "cpus": 2, "cpu_model": "cpu", "python": "3", "upstream": "v0",
                    "kubernetes": "v1", "loadavg_start": [0.1, 0.1, 0.1]},
        "settings": {"vegeta": "v12", "duration_s": 1.0, "warmup_s": 1.0, "distinct_reviews": 2,
                     "body_bytes_median": 10, "budgets": ["pinned", "unpinned"],
                     "limits": {"max_p99_ms": 100.0}},
        "points": points,
    }  # fmt: skip
    markdown = openloop.render_markdown(report)
    assert markdown.count("| 250 | 0.50 / 0.50 |") == 2  # one row per budget
    assert "| 500 | 0.50 / — | 200.00* / — |" in markdown  # ours saturated; upstream not sent
    assert "| 0.60 |" not in markdown and "| 1.00 |" in markdown  # equal CPU per review
    assert "250" in openloop.render_text(report)
    openloop.plot(report, tmp_path / "openloop.png")
    assert (tmp_path / "openloop.png").read_bytes().startswith(b"\x89PNG")


def test_pooled_windows_are_one_distribution_with_summed_counts_and_cpu() -> None:
    first = _result(100, [1.0] * 98 + [50.0] * 2)  # one window with a burst
    second = _result(100, [1.0] * 100)
    pooled = vegeta_tool.AttackResult.pooled([first, second])
    assert pooled.latencies_ms == sorted(first.latencies_ms + second.latencies_ms)
    assert (pooled.ok, pooled.sent, pooled.windows, pooled.window_s) == (200, 200, 2, 2.0)
    assert pooled.achieved_rps == 100.0
    assert pooled.server_cpu_us_per_review == pytest.approx(300.0)
    assert pooled.p(99) == 1.0 < first.p(99)  # 2 slow of 200 is 1%; 2 of 100 is 2%
    assert pooled.summary()["windows"] == 2
    assert vegeta_tool.AttackResult.pooled([second]) is second
    with pytest.raises(ValueError):
        vegeta_tool.AttackResult.pooled([first, _result(200, [1.0])])


def test_the_sweep_takes_turns_abba_within_a_rate_and_alternates_the_first_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    attacks: list[tuple[str, float]] = []

    def attack(url: str, *args: object, **kwargs: object) -> vegeta_tool.AttackResult:
        rate = float(args[2])  # type: ignore[arg-type]
        attacks.append((url, rate))
        return _result(rate, [1.0] * int(rate))

    monkeypatch.setattr(vegeta_tool, "attack", attack)
    monkeypatch.setattr(openloop, "process_cpu", lambda pid: lambda: 0.0)
    monkeypatch.setattr(openloop.time, "sleep", lambda seconds: None)
    targets = {name: openloop.Target(name, tmp_path, 0) for name in ("ours", "upstream")}
    points = openloop.sweep(
        targets, [b"{}"], openloop.PINNED, workdir=tmp_path, rates=(100, 200), windows=2,
        log=lambda line: None,
    )  # fmt: skip
    assert attacks == [
        ("ours", 100), ("upstream", 100), ("upstream", 100), ("ours", 100),
        ("upstream", 200), ("ours", 200), ("ours", 200), ("upstream", 200),
    ]  # fmt: skip
    assert [(p["server"], p["rate"], p["windows"], p["ok"]) for p in points] == [
        ("ours", 100, 2, 200), ("upstream", 100, 2, 200),
        ("upstream", 200, 2, 400), ("ours", 200, 2, 400),
    ]  # fmt: skip
