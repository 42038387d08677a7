"""Prometheus metrics with upstream's names, so existing dashboards and alerts keep working.

prometheus_client appends `_total` to counters; upstream (client_golang) does not. The
upstream counters are therefore exposed by a small collector that writes their exact names.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.server.looplag import BUCKETS as LOOP_LAG_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST
# prometheus_client writes bucket bounds as Python floats (`le="125000.0"`); client_golang
# writes the shortest form (`le="125000"`), and dashboards and recording rules match on it.
_INTEGRAL_BOUND = re.compile(rb'le="(\d+)\.0"')

_UPSTREAM_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "http_request_count": (
        "Counter of requests broken out for each verb, path, and response code.",
        ("verb", "path", "code"),
    ),
    "pod_identity_webhook_pod_count": (
        "Indicator to how many pods are using sts web identity or container credentials",
        ("method",),
    ),
    "pod_identity_webhook_missing_sa_count": (
        "Service account did not have the right annotations or was not found in the cache.",
        (),
    ),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _ExactNameCounters:
    """Counters written in the text format by hand: prometheus_client would declare them
    as `<name>_total` in HELP/TYPE, which changes their family name for every parser."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in _UPSTREAM_COUNTERS}

    def inc(self, name: str, *labels: str) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0.0) + 1.0

    def value(self, name: str, *labels: str) -> float:
        return self._values[name].get(labels, 0.0)

    def exposition(self) -> bytes:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        lines: list[str] = []
        for name, (doc, label_names) in _UPSTREAM_COUNTERS.items():
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} counter")
            series = snapshot[name] or ({(): 0.0} if not label_names else {})
            for labels, value in sorted(series.items()):
                # Label names sorted, as client_golang writes them.
                pairs = ",".join(
                    f'{key}="{_escape(val)}"'
                    for key, val in sorted(zip(label_names, labels, strict=True))
                )
                lines.append(f"{name}{{{pairs}}} {value!r}" if pairs else f"{name} {value!r}")
        return ("\n".join(lines) + "\n").encode()


class _Reconnects(Collector):
    """Kubernetes list/watch retries after an error, read from the source when scraped."""

    def __init__(self, count: Callable[[], dict[str, int]]) -> None:
        self._count = count

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "pod_identity_webhook_kube_reconnects",
            "Times a Kubernetes list or watch was retried after an error, per resource",
            labels=("resource",),
        )
        for resource, count in sorted(self._count().items()):
            family.add_metric((resource,), float(count))
        yield family


@dataclass(frozen=True, slots=True)
class _Layout:
    """A histogram's bucket bounds and their `le` labels as prometheus_client writes them
    (the exposition trims `.0` afterwards)."""

    bounds: tuple[float, ...]
    le: tuple[str, ...]

    @classmethod
    def of(cls, *bounds: float) -> _Layout:
        labels = (floatToGoString(b) for b in (*bounds, float("inf")))  # type: ignore[no-untyped-call]
        return cls(bounds, tuple(labels))


_LATENCY_US = _Layout.of(*(125000.0 * 2**i for i in range(7)))
_LATENCY_S = _Layout.of(
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
)


@dataclass(slots=True)
class _Buckets:
    """One histogram series: observations per bucket (not cumulative; the last is +Inf)."""

    layout: _Layout
    counts: list[int]
    count: int = 0
    total: float = 0.0

    @classmethod
    def over(cls, layout: _Layout) -> _Buckets:
        return cls(layout, [0] * len(layout.le))

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        # bisect_left: the first bound >= the value, as `le` counts (+Inf past the last).
        self.counts[bisect_left(self.layout.bounds, value)] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip(self.layout.le, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class _RequestLatencies(Collector):
    """Upstream's three request-latency families from one call per request: a histogram and
    a summary in microseconds per verb and path (the summary is that histogram's count and
    sum), a histogram in seconds per path. prometheus_client's Histogram and Summary would
    take a lock per value, three times per review; the event loop is the only writer here."""

    def __init__(self) -> None:
        self._micros: dict[tuple[str, str], _Buckets] = {}
        self._seconds: dict[str, _Buckets] = {}

    def observe(self, verb: str, path: str, seconds: float) -> None:
        micros = self._micros.get((verb, path))
        if micros is None:
            micros = self._micros[(verb, path)] = _Buckets.over(_LATENCY_US)
        per_path = self._seconds.get(path)
        if per_path is None:
            per_path = self._seconds[path] = _Buckets.over(_LATENCY_S)
        micros.observe(seconds * 1e6)
        per_path.observe(seconds)

    def collect(self) -> Iterator[HistogramMetricFamily | SummaryMetricFamily]:
        histogram = HistogramMetricFamily(
            "http_request_latencies",
            "Response latency distribution in microseconds for each verb and path",
            labels=("verb", "path"),
        )
        summary = SummaryMetricFamily(
            "http_request_duration_microseconds",
            "Response latency summary in microseconds for each verb and path.",
            labels=("verb", "path"),
        )
        # first observed first, as prometheus_client writes its children
        for labels, series in list(self._micros.items()):
            histogram.add_metric(labels, series.cumulative(), series.total)
            summary.add_metric(labels, series.count, series.total)
        seconds = HistogramMetricFamily(
            "pod_identity_webhook_request_duration_seconds",
            "Time from request received to response written, in seconds, for each path",
            labels=("path",),
        )
        for path, series in list(self._seconds.items()):
            seconds.add_metric((path,), series.cumulative(), series.total)
        yield histogram
        yield summary
        yield seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.counters = _ExactNameCounters()
        self._latencies = _RequestLatencies()
        self.registry.register(self._latencies)
        self.used = Gauge(
            "pod_identity_webhook_used",
            "Indicator to know pod identity webhook is used",
            registry=self.registry,
        )
        self._service_accounts = Gauge(
            "pod_identity_webhook_cached_service_accounts",
            "ServiceAccounts in the identity cache",
            registry=self.registry,
        )
        self._synced = Gauge(
            "pod_identity_webhook_cache_synced",
            "1 once every identity source has completed its initial sync",
            registry=self.registry,
        )
        self._loop_lag = Histogram(
            "pod_identity_webhook_event_loop_lag_seconds",
            "How much later than due the event loop ran a 100 ms timer, in seconds: the time "
            "every review arriving then waited for the loop",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )

    def track_cache(self, count: Callable[[], float], synced: Callable[[], bool]) -> None:
        self._service_accounts.set_function(count)
        self._synced.set_function(lambda: 1.0 if synced() else 0.0)

    def track_reconnects(self, count: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Reconnects(count))

    def observe_request(self, verb: str, path: str, code: int, seconds: float) -> None:
        self.counters.inc("http_request_count", verb, path, str(code))
        self._latencies.observe(verb, path, seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)

    def pod_identity_applied(self, method: str) -> None:
        self.counters.inc("pod_identity_webhook_pod_count", method)

    def service_account_missing(self) -> None:
        self.counters.inc("pod_identity_webhook_missing_sa_count")

    def exposition(self) -> bytes:
        return self.counters.exposition() + _INTEGRAL_BOUND.sub(
            rb'le="\1"', generate_latest(self.registry)
        )
