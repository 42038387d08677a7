"""The event-loop lag monitor: a deliberate stall of the loop is recorded in
`pod_identity_webhook_event_loop_lag_seconds`, and the real server exposes it.

No assertion here is about our speed: a stall we inject must show up at least as large as it
was (a slower machine only makes it larger), and the served histogram must be counting.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import uvloop

from tests.serverproc import (
    make_certs,
    metric_value,
    running_webhook,
    service_account,
    wait_until,
    write_objects,
)
from webhook.server import looplag
from webhook.server.metrics import Metrics

NAME = "pod_identity_webhook_event_loop_lag_seconds"


def bucket(metrics: Metrics, le: str) -> float:
    value = metrics.registry.get_sample_value(f"{NAME}_bucket", {"le": le})
    assert value is not None, f"no {NAME} bucket le={le}"
    return value


def count(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(f"{NAME}_count") or 0.0


async def stall_once(metrics: Metrics, block_seconds: float) -> None:
    # A short interval, so the stall starts at most that long after the monitor's sleep did and
    # its wake-up is late by at least block_seconds - interval.
    task = asyncio.create_task(looplag.monitor(metrics.observe_loop_lag, interval=0.01))
    give_up = time.monotonic() + 30  # only against a broken monitor hanging the test
    try:
        while count(metrics) < 3 and time.monotonic() < give_up:  # running, and observing
            await asyncio.sleep(0.005)
        seen = count(metrics)
        time.sleep(block_seconds)  # blocks the loop, as a GIL-holding thread or a slow callback
        while count(metrics) <= seen and time.monotonic() < give_up:
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_injected_300ms_stall_is_recorded_at_or_above_the_quarter_second_bucket(
    loop: str,
) -> None:
    metrics = Metrics()
    assert bucket(metrics, "+Inf") == 0
    if loop == "uvloop":
        uvloop.run(stall_once(metrics, 0.3))
    else:
        asyncio.run(stall_once(metrics, 0.3))
    above_quarter = bucket(metrics, "+Inf") - bucket(metrics, "0.25")
    assert above_quarter >= 1, metrics.exposition().decode()
    assert NAME + "_bucket" in metrics.exposition().decode()


@pytest.mark.slow
def test_the_served_metrics_include_the_loop_lag_histogram(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs")
    objects = tmp_path / "objects.json"
    write_objects(objects, [service_account("app")])
    with running_webhook(
        tls_cert=files.tls_cert,
        tls_key=files.tls_key,
        ca_pem=files.ca.cert_pem,
        objects=objects,
        log_path=tmp_path / "server.log",
    ) as server:
        wait_until(lambda: metric_value(server, NAME + "_count") >= 2, 30, "lag observations")
        with server.metrics_client() as plain:
            text = plain.get("/metrics").text
        assert f"# TYPE {NAME} histogram" in text
        assert f'{NAME}_bucket{{le="0.25"}}' in text
