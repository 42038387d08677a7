"""Staying fast while the cluster changes: our webhook's latency at a fixed offered rate while
ServiceAccounts change, while it syncs 100,000 of them at start, and during a relist; its
event-loop lag in each phase; and ours' and upstream's memory with the same 100,000.

Against a real etcd + kube-apiserver (as run.py):

1. create N ServiceAccounts (default 100,000, ~1 KB as cache_sync.py renders them, 5% with a
   role) in N/100 namespaces, plus the mix's, through the API server over keep-alive
   connections from a pool of threads (the time it took is reported);
2. sync: start our webhook (`taskset -c 1`) and, as soon as it accepts connections, load it with
   the v1beta1 mix at --rate req/s (vegeta, `taskset -c 0`); the sync window ends when /readyz
   answers 200. How it answers meanwhile (pods of role ServiceAccounts mutated or not) is
   counted from every response;
3. quiet: the same load on the synced server (twice: before churn and at the end; pooled);
4. churn: the same load while --updates-per-second annotation patches flip the role ARN of
   real ServiceAccounts between two values (half of them the mix's, so the answers stay
   mutations); afterwards every changed mix ServiceAccount, and a sample of the others, must be
   answered with its last ARN (the changes reached the cache);
5. relist: the same load while the cache is cleared and refilled from the API server (the
   debug handler `/debug/alpha/cache/clear`);
6. memory: upstream v0.6.17 (same flags, lookup grace period 0 so that its first mutation of
   the last-listed ServiceAccount proves its informer synced) started on the same API server;
   VmRSS and VmHWM of both processes.

Our webhook has core 1 to itself: etcd, kube-apiserver, vegeta and this script are moved to
core 0 once the ServiceAccounts exist (creating them uses both), etcd and kube-apiserver at
nice 10 so that the lists they serve do not delay vegeta's requests and answers. Loop lag
comes from the server's own `pod_identity_webhook_event_loop_lag_seconds`, scraped at each
phase's edges.

    .venv/bin/python bench/churn.py [--service-accounts 100000] [--rate 1000] [--duration 10]

Writes bench/results/churn.json and bench/results/churn.md.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import http.client
import itertools
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mix, vegeta
from bench.cache_sync import ANNOTATED_EVERY, namespace_of, service_account
from bench.stats import percentile, process_cpu
from e2e.controlplane import ControlPlane, ToolsUnavailable, tools_dir
from e2e.webhooks import WebhookProcess, ours, upstream

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
FLAGS = (f"--aws-default-region={mix.REGION}", "-v=0")  # as run.py gives both webhooks
SERVER_CPU, CLIENT_CPU = "1", "0"
CONTROL_PLANE_NICE = 10
WARMUP_S = 1.0  # not recorded in the steady phases: vegeta's connection ramp
LAG = "pod_identity_webhook_event_loop_lag_seconds"
SERVED = "pod_identity_webhook_request_duration_seconds"  # request read to answer written
CACHED = "pod_identity_webhook_cached_service_accounts"
ROLE = mix.ROLE_ANNOTATION
CHURN_SUFFIX = "-churned"  # the second of the two role ARNs a changed ServiceAccount flips to


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- API server client


class ApiClient:
    """Keep-alive HTTPS to the API server as admin; one connection per thread."""

    def __init__(self, cp: ControlPlane) -> None:
        self.host, self.port = "127.0.0.1", cp.port
        self.context = ssl.create_default_context(cafile=str(cp.ca_file))
        self.context.load_cert_chain(str(cp.admin_cert_file), str(cp.admin_key_file))
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=30
            )
            self._local.conn = conn
        return conn

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        data = None if body is None else orjson.dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def create_service_accounts(api: ApiClient, count: int, workers: int) -> dict[str, Any]:
    """N/100 namespaces, then N ServiceAccounts, by `workers` threads over keep-alive."""
    namespaces = sorted({namespace_of(i) for i in range(count)})
    failures: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()

    def run(jobs: Iterator[Callable[[], tuple[int, bytes]]]) -> None:
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                return
            status, body = job()
            if status not in (200, 201, 409):
                with lock:
                    failures.append(f"HTTP {status}: {body[:200]!r}")

    def pool(jobs: Iterator[Callable[[], tuple[int, bytes]]]) -> None:
        threads = [threading.Thread(target=run, args=(jobs,)) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise RuntimeError(f"creating objects failed ({len(failures)}): {failures[:5]}")

    def namespace_job(name: str) -> Callable[[], tuple[int, bytes]]:
        obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return lambda: api.request("POST", "/api/v1/namespaces", obj)

    def account_job(index: int) -> Callable[[], tuple[int, bytes]]:
        obj = service_account(index)
        path = f"/api/v1/namespaces/{obj['metadata']['namespace']}/serviceaccounts"
        return lambda: api.request("POST", path, obj)

    pool(namespace_job(n) for n in namespaces)
    namespace_seconds = time.monotonic() - started
    pool(account_job(i) for i in range(count))
    seconds = time.monotonic() - started
    return {
        "namespaces": len(namespaces),
        "namespace_seconds": round(namespace_seconds, 1),
        "create_seconds": round(seconds, 1),
        "create_per_second": round(count / max(seconds - namespace_seconds, 1e-9), 1),
        "workers": workers,
    }


# --------------------------------------------------------------------------- processes, CPUs


def children(names: Sequence[str]) -> list[int]:
    """Our child processes whose command name is one of `names`."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm in names:
            found.append(int(entry.name))
    return found


def pin(pid: int, cpus: set[int], nice: int | None = None) -> None:
    """Every thread of `pid` onto `cpus`, and to `nice` if given (threads created later
    inherit both)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        except (OSError, ValueError):
            pass


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def server_pid(server: WebhookProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class LagHistogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    total: float
    count: float

    def minus(self, earlier: LagHistogram) -> LagHistogram:
        before = dict(earlier.buckets)
        return LagHistogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def plus(self, other: LagHistogram) -> LagHistogram:
        theirs = dict(other.buckets)
        return LagHistogram(
            tuple((le, n + theirs.get(le, 0.0)) for le, n in self.buckets),
            self.total + other.total,
            self.count + other.count,
        )

    def bound(self, q: float) -> float:
        """The upper bound of the bucket holding the q-th percentile observation."""
        need = q / 100 * self.count
        for le, cumulative in self.buckets:
            if cumulative >= need - 1e-9:
                return le
        return float("inf")

    def summary(self) -> dict[str, Any]:
        top = self.bound(100)
        return {
            "observations": int(self.count),
            "mean_ms": round(1000 * self.total / self.count, 3) if self.count else 0.0,
            "p99_le_ms": round(1000 * self.bound(99), 1),
            "max_le_ms": round(1000 * top, 1) if top != float("inf") else "inf",
        }


def histogram(text: str, name: str, match: str) -> LagHistogram:
    """A histogram family's series (the one whose labels contain `match`) from /metrics."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "_") or match not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_bucket{"):
            buckets.append((float(line.split('le="', 1)[1].split('"', 1)[0]), value))
        elif line.startswith((name + "_sum ", name + "_sum{")):
            total = value
        elif line.startswith((name + "_count ", name + "_count{")):
            count = value
    return LagHistogram(tuple(sorted(buckets)), total, count)


@dataclass(frozen=True)
class Snapshot:
    """The loop lag and the server-side /mutate duration histograms at one moment."""

    lag: LagHistogram
    served: LagHistogram

    def minus(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(self.lag.minus(earlier.lag), self.served.minus(earlier.served))

    def plus(self, other: Snapshot) -> Snapshot:
        return Snapshot(self.lag.plus(other.lag), self.served.plus(other.served))


class Metrics:
    """Our server's /metrics over one keep-alive plain-HTTP connection."""

    def __init__(self, server: WebhookProcess) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)

    def text(self) -> str:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", "/metrics")
                response = self.conn.getresponse()
                return response.read().decode()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def snapshot(self) -> Snapshot:
        text = self.text()
        return Snapshot(histogram(text, LAG, ""), histogram(text, SERVED, 'path="/mutate"'))

    def gauge(self, name: str) -> float:
        for line in self.text().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")


# --------------------------------------------------------------------------- load


@dataclass
class Review:
    """What the mix is, by request uid, so every answer can be classified."""

    kind_by_uid: dict[str, str]
    bodies: list[bytes]

    @classmethod
    def of(cls, reviews: Sequence[mix.Review]) -> Review:
        kinds = {orjson.loads(r.body)["request"]["uid"]: r.kind for r in reviews}
        return cls(kinds, mix.bodies(reviews))


def role_arn_in(answer: dict[str, Any]) -> str | None:
    """The AWS_ROLE_ARN a review answer's patch sets, if any."""
    patch = (answer.get("response") or {}).get("patch")
    if not patch:
        return None
    stack: list[Any] = [orjson.loads(base64.b64decode(patch))]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("name") == "AWS_ROLE_ARN" and isinstance(item.get("value"), str):
                return str(item["value"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


@dataclass
class Rows:
    """vegeta's per-request results (CSV rows), to split by time and classify answers."""

    rows: list[list[str]]

    @classmethod
    def read(cls, workdir: Path, name: str) -> Rows:
        out = subprocess.run(
            [str(vegeta.vegeta_binary()), "encode", "-to=csv", str(workdir / f"{name}.bin")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return cls(list(csv.reader(out.splitlines())))

    def between(self, start: float, end: float) -> Rows:
        lo = int(start * 1e9)
        hi = int(end * 1e9) if end != float("inf") else sys.maxsize
        return Rows([r for r in self.rows if lo <= int(r[0]) < hi])

    def result(self, rate: float) -> vegeta.AttackResult:
        return vegeta.decode(self.rows, rate, 0.0, True)

    def p99_by_second(self, since: float) -> list[float]:
        """p99 (ms) of the requests sent in each second from `since` on."""
        seconds: dict[int, list[float]] = {}
        for row in self.rows:
            if row[1] == "200":
                second = int(int(row[0]) / 1e9 - since)
                seconds.setdefault(second, []).append(int(row[2]) / 1e6)
        return [
            round(percentile(sorted(seconds.get(s, [])), 99), 2)
            for s in range(max(seconds, default=-1) + 1)
        ]

    def answers(self, review: Review) -> dict[str, int]:
        """Of the pods of role ServiceAccounts (kind annotated): how many were mutated."""
        counts = {"annotated": 0, "annotated_mutated": 0}
        for row in self.rows:
            if row[1] != "200":
                continue
            answer = orjson.loads(base64.b64decode(row[6]))
            uid = (answer.get("response") or {}).get("uid", "")
            if review.kind_by_uid.get(uid) == "annotated":
                counts["annotated"] += 1
                counts["annotated_mutated"] += role_arn_in(answer) is not None
        return counts


class Attack:
    """vegeta in a thread, so the main thread can act (and watch) while it loads."""

    def __init__(
        self, server: WebhookProcess, review: Review, rate: float, duration: float, workdir: Path
    ) -> None:
        self.args = (server, review, rate, duration, workdir)
        self.result: vegeta.AttackResult | None = None
        self.error: BaseException | None = None
        self.name = f"attack-{time.monotonic_ns()}"
        self.thread = threading.Thread(target=self._run, name="vegeta")

    def _run(self) -> None:
        server, review, rate, duration, workdir = self.args
        try:
            self.result = vegeta.attack(
                server.url,
                workdir / "ours-ca.crt",
                review.bodies,
                rate,
                duration,
                workdir=workdir,
                cpus=CLIENT_CPU,
                name=self.name,
            )
        except BaseException as err:
            self.error = err

    def __enter__(self) -> Attack:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join()

    def run(self) -> vegeta.AttackResult:
        self.thread.start()
        return self.wait()

    def wait(self) -> vegeta.AttackResult:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def rows(self) -> Rows:
        return Rows.read(self.args[4], self.name)


def summary(result: vegeta.AttackResult) -> dict[str, Any]:
    out = result.summary()
    out.pop("duration_s", None)
    return out


# --------------------------------------------------------------------------- churn


@dataclass
class Churner:
    """PATCHes flipping role ARNs at a fixed rate, half on the mix's ServiceAccounts."""

    api: ApiClient
    rate: float
    team_roles: list[int]  # cache_sync indices of ServiceAccounts with a role
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latest: dict[tuple[str, str], str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def targets(self) -> Iterator[tuple[str, str, str]]:
        ours_ = [(ns, sa) for ns in mix.NAMESPACES for sa in mix.ANNOTATED_SAS]
        rng = random.Random(12)
        for i in itertools.count():
            if i % 2 == 0:
                ns, sa = ours_[(i // 2) % len(ours_)]
                base = mix.role_arn(ns, sa)
            else:
                index = rng.choice(self.team_roles)
                obj = service_account(index)
                ns, sa = obj["metadata"]["namespace"], obj["metadata"]["name"]
                base = obj["metadata"]["annotations"][ROLE]
            current = self.latest.get((ns, sa), base)
            yield ns, sa, base + CHURN_SUFFIX if current == base else base

    def _run(self) -> None:
        started = time.monotonic()
        for n, (ns, sa, arn) in enumerate(self.targets()):
            due = started + n / self.rate
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            patch = {"metadata": {"annotations": {ROLE: arn}}}
            path = f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}"
            self.sent += 1
            try:
                status, body = self.api.request(
                    "PATCH", path, patch, "application/merge-patch+json"
                )
            except (OSError, http.client.HTTPException) as err:
                status, body = 0, str(err).encode()
            if status == 200:
                self.ok += 1
                self.latest[(ns, sa)] = arn
            elif len(self.failures) < 5:
                self.failures.append(f"HTTP {status}: {body[:160]!r}")

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


class WebhookClient:
    """Keep-alive HTTPS to a webhook, for single reviews."""

    def __init__(self, server: WebhookProcess) -> None:
        context = ssl.create_default_context(cadata=server.ca_pem.decode())
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=context, timeout=10
        )

    def review(self, body: bytes) -> dict[str, Any]:
        self.conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        answer: dict[str, Any] = orjson.loads(response.read())
        return answer

    def get(self, path: str) -> int:
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0

    def close(self) -> None:
        self.conn.close()


def review_for(template: bytes, namespace: str, name: str) -> bytes:
    """An annotated-pod review of the mix, re-addressed to namespace/name."""
    review = orjson.loads(template)
    request = review["request"]
    request["namespace"] = namespace
    request["uid"] = f"check-{namespace}-{name}"
    pod = request["object"]
    pod["metadata"]["namespace"] = namespace
    pod["spec"]["serviceAccountName"] = pod["spec"]["serviceAccount"] = name
    return orjson.dumps(review)


def verify_churn(
    server: WebhookProcess, churn: Churner, template: bytes, sample: int, settle: float
) -> dict[str, Any]:
    """Every changed mix ServiceAccount and `sample` others answered with their last ARN."""
    mine = {(ns, sa) for ns in mix.NAMESPACES for sa in mix.ANNOTATED_SAS}
    changed = dict(churn.latest)
    chosen = [k for k in changed if k in mine]
    others = sorted(k for k in changed if k not in mine)
    chosen += random.Random(3).sample(others, min(sample, len(others)))
    client = WebhookClient(server)
    deadline = time.monotonic() + settle
    stale: list[tuple[str, str]] = list(chosen)
    try:
        while stale:
            stale = [
                (ns, sa)
                for ns, sa in stale
                if role_arn_in(client.review(review_for(template, ns, sa))) != changed[(ns, sa)]
            ]
            if not stale or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        client.close()
    return {
        "checked": len(chosen),
        "mix_checked": sum(1 for k in chosen if k in mine),
        "answered_with_last_arn": len(chosen) - len(stale),
        "stale": [f"{ns}/{sa}" for ns, sa in stale[:5]],
    }


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    result: vegeta.AttackResult
    lag: Snapshot | None
    server_cpu_s: float
    window_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self, quiet_p99: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.name, **summary(self.result)}
        out["window_s"] = round(self.window_s, 2)
        out["server_cpu_pct"] = round(100 * self.server_cpu_s / max(self.window_s, 1e-9), 1)
        if quiet_p99:
            out["p99_ratio_to_quiet"] = round(self.result.p(99) / quiet_p99, 2)
        if self.lag is not None:
            out["loop_lag"] = self.lag.lag.summary()
            out["served"] = self.lag.served.summary()  # server-side, bucket bounds
        out.update(self.extra)
        return out


def pooled(results: Sequence[vegeta.AttackResult]) -> vegeta.AttackResult:
    first = results[0]
    latencies = sorted(itertools.chain.from_iterable(r.latencies_ms for r in results))
    ok = sum(r.ok for r in results)
    window = sum(r.ended - r.started for r in results)
    return vegeta.AttackResult(
        rate=first.rate,
        duration_s=sum(r.duration_s for r in results),
        latencies_ms=latencies,
        sent=sum(r.sent for r in results),
        ok=ok,
        errors=sum(r.errors for r in results),
        error_samples=[s for r in results for s in r.error_samples][:5],
        achieved_rps=ok / window if window > 0 else 0.0,
        started=min(r.started for r in results),
        ended=max(r.ended for r in results),
    )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.review = Review.of(mix.generate(args.distinct, mix.V1BETA1))
        self.template = next(
            r.body for r in mix.generate(args.distinct, mix.V1BETA1) if r.kind == "annotated"
        )
        self.phases: dict[str, Phase] = {}
        self.report: dict[str, Any] = {}

    def attack(self, server: WebhookProcess, duration: float) -> Attack:
        return Attack(server, self.review, self.args.rate, duration, self.workdir)

    def steady(self, name: str, server: WebhookProcess, metrics: Metrics) -> Phase:
        cpu = process_cpu(server_pid(server))
        lag0, cpu0, t0 = metrics.snapshot(), cpu(), time.monotonic()
        attack = self.attack(server, self.args.duration + WARMUP_S)
        result = self.warmed(attack)
        window = time.monotonic() - t0
        phase = Phase(name, result, metrics.snapshot().minus(lag0), cpu() - cpu0, window)
        self.log_phase(phase)
        return phase

    def warmed(self, attack: Attack) -> vegeta.AttackResult:
        """The attack's requests after its first WARMUP_S: vegeta opens its connections then,
        and the TLS handshakes of that burst would otherwise be the p99 of a short phase."""
        started = attack.run().started
        return attack.rows().between(started + WARMUP_S, float("inf")).result(self.args.rate)

    def log_phase(self, phase: Phase) -> None:
        r = phase.result
        lag = phase.lag.lag.summary() if phase.lag else {}
        served = phase.lag.served.summary() if phase.lag else {}
        log(
            f"{phase.name:<14} p50 {r.p(50):.3f} p99 {r.p(99):.3f} p99.9 {r.p(99.9):.3f} "
            f"max {r.max_ms:.1f} ms; {r.ok}/{r.sent} ok at {r.achieved_rps:.0f}/s, "
            f"errors {r.errors}; loop lag p99 <= {lag.get('p99_le_ms')} ms, max <= "
            f"{lag.get('max_le_ms')} ms; server-side p99 <= {served.get('p99_le_ms')} ms; "
            "server CPU "
            f"{100 * phase.server_cpu_s / max(phase.window_s, 1e-9):.0f}% "
            f"(load average {os.getloadavg()[0]:.1f})"
        )

    # -- the initial sync under load ------------------------------------------------------

    def sync(self, server: WebhookProcess) -> tuple[Metrics, dict[str, Any]]:
        server.start()  # returns once /healthz answers: it accepts connections
        accepting = time.time()
        metrics = Metrics(server)
        cpu = process_cpu(server_pid(server))
        cpu0 = cpu()
        client = WebhookClient(server)
        ready_at = None
        lag_at_ready: Snapshot | None = None
        cpu_at_ready = 0.0
        with self.attack(server, self.args.sync_duration) as attack:
            while attack.thread.is_alive():
                if client.get("/readyz") == 200:
                    ready_at = time.time()
                    lag_at_ready, cpu_at_ready = metrics.snapshot(), cpu()
                    break
                time.sleep(0.05)
        client.close()
        result = attack.wait()
        rows = attack.rows()
        end = ready_at if ready_at is not None else result.ended + 1
        during, after = rows.between(0, end), rows.between(end, float("inf"))
        warm = rows.between(result.started + WARMUP_S, end).result(1.0)
        phase = Phase(
            "sync",
            during.result(self.args.rate),
            lag_at_ready,  # the monitor started with the server: all of it is the sync's
            cpu_at_ready - cpu0,
            end - accepting,
            {
                "synced": ready_at is not None,
                "ready_after_accepting_s": round(end - accepting, 2),
                "load_started_after_accepting_s": round(result.started - accepting, 2),
                "answers": during.answers(self.review),
                "p99_ms_by_second": rows.p99_by_second(accepting),
                "after_first_second": {"p99_ms": round(warm.p(99), 3), "ok": warm.ok},
            },
        )
        self.phases["sync"] = phase
        self.log_phase(phase)
        after_answers = after.answers(self.review)
        info = {"after_sync": {**summary(after.result(self.args.rate)), "answers": after_answers}}
        log(
            f"sync: ready {end - accepting:.2f} s after accepting connections; during it "
            f"{phase.extra['answers']}, after it {after_answers}; p99 ms by second "
            f"{phase.extra['p99_ms_by_second']}"
        )
        return metrics, info

    # -- a cold start without a sync, the sync's control --------------------------------

    def cold(self, server: WebhookProcess, seconds: float) -> Phase:
        """The same load from the moment a server accepts connections, for as long as the sync
        window lasted, but with --objects (nothing to sync): what a fresh process and fresh
        connections cost by themselves."""
        server.start()
        accepting = time.time()
        metrics = Metrics(server)
        cpu = process_cpu(server_pid(server))
        cpu0, t0 = cpu(), time.monotonic()
        attack = self.attack(server, seconds)
        result = attack.run()
        phase = Phase("cold start", result, metrics.snapshot(), cpu() - cpu0, time.monotonic() - t0)
        phase.extra["load_started_after_accepting_s"] = round(result.started - accepting, 2)
        later = attack.rows().between(result.started + WARMUP_S, float("inf")).result(1.0)
        phase.extra["after_first_second"] = {"p99_ms": round(later.p(99), 3), "ok": later.ok}
        self.log_phase(phase)
        return phase

    # -- relist ----------------------------------------------------------------------------

    def relist(self, server: WebhookProcess, metrics: Metrics, expected: int) -> Phase:
        cpu = process_cpu(server_pid(server))
        clear = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
        with self.attack(server, self.args.relist_duration) as attack:
            time.sleep(min(2.0, self.args.relist_duration / 4))
            lag0, cpu0, cleared_at = metrics.snapshot(), cpu(), time.time()
            clear.request("POST", "/debug/alpha/cache/clear")
            clear.getresponse().read()
            clear.close()
            refilled_at = None
            while attack.thread.is_alive():
                if metrics.gauge(CACHED) >= expected:
                    refilled_at = time.time()
                    break
                time.sleep(0.05)
            lag1, cpu1, end = metrics.snapshot(), cpu(), time.time()
        attack.wait()
        rows = attack.rows()
        during = rows.between(cleared_at, end)
        phase = Phase(
            "relist",
            during.result(self.args.rate),
            lag1.minus(lag0),
            cpu1 - cpu0,
            end - cleared_at,
            {
                "refilled": refilled_at is not None,
                "refill_s": round(end - cleared_at, 2),
                "answers": during.answers(self.review),
            },
        )
        self.log_phase(phase)
        log(f"relist: refilled in {phase.extra['refill_s']} s; {phase.extra['answers']}")
        return phase

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        try:
            tools = tools_dir()
            vegeta.vegeta_binary()
        except ToolsUnavailable as err:
            raise SystemExit(f"churn bench needs the e2e binaries and vegeta: {err}") from None
        log(f"workdir {self.workdir}; starting etcd + kube-apiserver")
        with ControlPlane(tools, workdir=self.workdir / "cp") as cp:
            api = ApiClient(cp)
            mix.create_objects(cp)
            log(f"creating {args.service_accounts:,} ServiceAccounts ({args.workers} threads)")
            created = create_service_accounts(api, args.service_accounts, args.workers)
            log(
                f"created in {created['create_seconds']} s ({created['create_per_second']}/s "
                f"after {created['namespaces']} namespaces in {created['namespace_seconds']} s)"
            )
            self.report["creation"] = created
            expected = args.service_accounts + len(mix.service_accounts())
            pin(os.getpid(), {int(CLIENT_CPU)})
            for pid in children(("etcd", "kube-apiserver")):
                # Niced, so that serving our lists and the patches never starves vegeta, which
                # shares core 0 with them: latency measured late at the client is not ours.
                pin(pid, {int(CLIENT_CPU)}, nice=CONTROL_PLANE_NICE)
            servers = {
                "ours": ours(
                    cp,
                    self.workdir,
                    (*FLAGS, "--enable-debugging-handlers"),
                    cpus=SERVER_CPU,
                ),
            }
            if args.server_path is not None:
                servers["ours"].argv[:3] = from_path(args.server_path)
            (self.workdir / "ours-ca.crt").write_bytes(servers["ours"].ca_pem)

            def late_upstream() -> WebhookProcess:
                # Made (ports chosen) only now: vegeta's client ports come and go meanwhile.
                servers["upstream"] = upstream(
                    cp,
                    self.workdir,
                    (*FLAGS, "--service-account-lookup-grace-period=0"),
                    cpus=SERVER_CPU,
                )
                return servers["upstream"]

            def cold_server() -> WebhookProcess:
                objects = self.workdir / "objects.json"
                objects.write_bytes(mix.objects_document())
                server = ours(cp, self.workdir, FLAGS, name="cold", cpus=SERVER_CPU)
                server.argv = [a for a in server.argv if not a.startswith("--kubeconfig=")]
                server.argv.append(f"--objects={objects}")
                if args.server_path is not None:
                    server.argv[:3] = from_path(args.server_path)
                return server

            def fresh_server() -> WebhookProcess:
                server = ours(cp, self.workdir, FLAGS, name="ours-fresh", cpus=SERVER_CPU)
                if args.server_path is not None:
                    server.argv[:3] = from_path(args.server_path)
                return server

            try:
                self.phases_on(
                    servers["ours"], cold_server, fresh_server, late_upstream, api, expected
                )
            finally:
                for server in servers.values():
                    server.stop()
        return self.report

    def phases_on(
        self,
        mine: WebhookProcess,
        make_cold: Callable[[], WebhookProcess],
        make_fresh: Callable[[], WebhookProcess],
        make_upstream: Callable[[], WebhookProcess],
        api: ApiClient,
        expected: int,
    ) -> None:
        args = self.args
        log("sync: starting ours under load")
        metrics, sync_info = self.sync(mine)
        if not self.phases["sync"].extra["synced"]:
            raise RuntimeError(f"ours did not sync within {args.sync_duration} s")
        cached = metrics.gauge(CACHED)
        self.report["sync"] = {**sync_info, "cached_service_accounts": cached}
        rss: dict[str, Any] = {"ours_after_sync": memory(server_pid(mine))}
        cold = make_cold()
        try:
            window = self.phases["sync"].window_s
            self.phases["cold start"] = self.cold(cold, max(3.0, round(window + 0.5)))
        finally:
            cold.stop()
        quiet = [self.steady("quiet", mine, metrics)]

        team_roles = list(range(0, args.service_accounts, ANNOTATED_EVERY))
        churn = Churner(api, args.updates_per_second, team_roles)
        cpu = process_cpu(server_pid(mine))
        lag0, cpu0, t0 = metrics.snapshot(), cpu(), time.monotonic()
        churn.start()
        time.sleep(0.5)  # the patches flowing before the load starts
        result = self.warmed(self.attack(mine, args.duration + WARMUP_S))
        churn.finish()
        window = time.monotonic() - t0
        seen = verify_churn(mine, churn, self.template, 50, settle=10)
        phase = Phase(
            "churn",
            result,
            metrics.snapshot().minus(lag0),
            cpu() - cpu0,
            window,
            {
                "updates_sent": churn.sent,
                "updates_ok": churn.ok,
                "updates_per_second": round(churn.ok / window, 1),
                "update_failures": churn.failures,
                "changes_reached_cache": seen,
            },
        )
        self.phases["churn"] = phase
        self.log_phase(phase)
        log(f"churn: {churn.ok}/{churn.sent} patches; {seen}")

        if args.relist_duration > 0:
            self.phases["relist"] = self.relist(mine, metrics, expected)
        quiet.append(self.steady("quiet (end)", mine, metrics))
        rss["ours_end"] = memory(server_pid(mine))

        mine.stop()  # the memory phase runs on core 1 without it
        fresh, other = make_fresh(), make_upstream()
        log("memory: a fresh ours and upstream, both syncing from the same API server, no load")
        last = max(team_roles) if team_roles else 0
        last_obj = service_account(last)
        probe = review_for(
            self.template, last_obj["metadata"]["namespace"], last_obj["metadata"]["name"]
        )
        started = time.monotonic()
        try:
            fresh.start()
            other.start()
            client = WebhookClient(other)
            try:
                while role_arn_in(client.review(probe)) is None:
                    if time.monotonic() - started > 120:
                        raise RuntimeError("upstream did not mutate the last-listed account")
                    time.sleep(0.1)
            finally:
                client.close()
            rss["upstream_synced_after_s"] = round(time.monotonic() - started, 1)
            checker = WebhookClient(fresh)
            try:
                while checker.get("/readyz") != 200:
                    if time.monotonic() - started > 120:
                        raise RuntimeError("a fresh ours did not sync")
                    time.sleep(0.1)
            finally:
                checker.close()
            time.sleep(2)
            rss["ours_fresh_after_sync"] = memory(server_pid(fresh))
            rss["upstream_after_sync"] = memory(server_pid(other))
        finally:
            fresh.stop()
        log(f"memory: {rss}")
        self.report["memory_mb"] = rss

        self.phases["quiet"] = Phase(
            "quiet",
            pooled([p.result for p in quiet]),
            None,
            sum(p.server_cpu_s for p in quiet),
            sum(p.window_s for p in quiet),
            {"runs_p99_ms": [round(p.result.p(99), 3) for p in quiet]},
        )
        lags = [p.lag for p in quiet if p.lag is not None]
        if lags:
            total = lags[0]
            for more in lags[1:]:
                total = total.plus(more)
            self.phases["quiet"].lag = total


# --------------------------------------------------------------------------- output

ORDER = ("quiet", "churn", "sync", "cold start", "relist")


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def render(report: dict[str, Any]) -> tuple[str, str]:
    rows = [report["phases"][name] for name in ORDER if name in report["phases"]]
    header = (
        "phase",
        "requests",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "p99 / quiet",
        "server-side p99 ms",
        "loop lag p99 ms",
        "loop lag max ms",
        "errors",
        "role pods mutated",
    )
    table: list[tuple[str, ...]] = []
    for row in rows:
        lag = row.get("loop_lag", {})
        served = row.get("served", {})
        answers = row.get("answers")
        table.append(
            (
                row["phase"],
                str(row["ok"] + row["errors"]),
                f"{row['p50_ms']:.3f}",
                f"{row['p99_ms']:.3f}",
                f"{row['p999_ms']:.3f}",
                f"{row.get('p99_ratio_to_quiet', 1.0):.2f}",
                f"<= {served.get('p99_le_ms', '-')}",
                f"<= {lag.get('p99_le_ms', '-')}",
                f"<= {lag.get('max_le_ms', '-')}",
                str(row["errors"]),
                f"{answers['annotated_mutated']}/{answers['annotated']}" if answers else "all",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    text = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    text += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    mem = report["memory_mb"]
    synced, end, theirs = mem["ours_after_sync"], mem["ours_end"], mem["upstream_after_sync"]
    fresh = mem["ours_fresh_after_sync"]
    created = report["creation"]
    notes = [
        f"RSS with {report['settings']['service_accounts']:,} ServiceAccounts, both synced from "
        f"the same API server, no load: ours {fresh['VmRSS']} MB (peak {fresh['VmHWM']} MB), "
        f"upstream {theirs['VmRSS']} MB (peak {theirs['VmHWM']} MB). Ours under the runs' load: "
        f"{synced['VmRSS']} MB after its sync (peak {synced['VmHWM']} MB), {end['VmRSS']} MB "
        f"(peak {end['VmHWM']} MB) after churn and a relist.",
        f"Created {report['settings']['service_accounts']:,} ServiceAccounts in "
        f"{created['create_seconds']} s ({created['create_per_second']}/s, {created['workers']} "
        "keep-alive connections).",
    ]
    churn = report["phases"].get("churn", {})
    if churn:
        seen = churn["changes_reached_cache"]
        notes.append(
            f"Churn: {churn['updates_ok']} role-ARN patches ({churn['updates_per_second']}/s); "
            f"{seen['answered_with_last_arn']}/{seen['checked']} changed ServiceAccounts "
            f"({seen['mix_checked']} of the mix) answered with their last ARN afterwards."
        )
    sync = report["phases"].get("sync", {})
    cold = report["phases"].get("cold start", {})
    if sync:
        versus_cold = (
            f"; p99 {sync['p99_ms'] / cold['p99_ms']:.2f}x that of a cold start without a sync "
            f"(the same load on a fresh --objects server for {cold['window_s']:.0f} s)"
            if cold.get("p99_ms")
            else ""
        )
        warm = sync.get("after_first_second", {})
        cold_warm = cold.get("after_first_second", {})
        quiet = report["phases"]["quiet"]
        if warm.get("p99_ms") and quiet.get("p99_ms"):
            notes.append(
                f"Sync without its first second of load (vegeta's connection ramp): p99 "
                f"{warm['p99_ms']} ms over {warm['ok']} requests = "
                f"{warm['p99_ms'] / quiet['p99_ms']:.2f}x quiet"
                + (
                    f"; a cold start without a sync, likewise: {cold_warm['p99_ms']} ms"
                    if cold_warm.get("p99_ms")
                    else ""
                )
                + "."
            )
        notes.append(
            f"Sync: /readyz 200 {sync['ready_after_accepting_s']} s after the server accepted "
            "connections; 'role pods mutated' counts the answers to pods of ServiceAccounts with "
            f"a role during that window{versus_cold}."
        )
    return "\n".join(text) + "\n" + "\n".join(notes), "\n".join(md) + "\n\n" + "\n".join(
        f"- {n}" for n in notes
    )


def from_path(directory: Path) -> list[str]:
    """`python -m webhook`, but the package imported from `directory` (a copy: before/after)."""
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(directory.resolve())!r}); "
        "runpy.run_module('webhook', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


def synthetic_sync(args: argparse.Namespace, workdir: Path) -> int:
    """--synthetic: only the sync phase (and a quiet one after it), against cache_sync.py's
    loopback API instead of a control plane: a quick before/after for changes to the cache."""
    from bench.cache_sync import SyntheticApi
    from e2e.controlplane import free_port
    from webhook import certs

    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the synthetic API (our child) inherits it
    ca = certs.generate_ca("churn-bench-ca", 2)
    paths = certs.write_bundle(
        workdir / "certs", ca, certs.generate_serving_cert(ca, ["localhost"], ["127.0.0.1"], 1)
    )
    (workdir / "ours-ca.crt").write_bytes(ca.cert_pem)
    bench = Bench(args, workdir)
    with SyntheticApi(args.service_accounts, workdir) as api:
        port, metrics_port = free_port(), free_port()
        argv = [
            sys.executable, "-m", "webhook", "serve", "--bind-address=127.0.0.1",
            f"--port={port}", f"--metrics-port={metrics_port}", f"--tls-cert={paths.tls_cert}",
            f"--tls-key={paths.tls_key}", f"--kubeconfig={api.kubeconfig}", *FLAGS,
        ]  # fmt: skip
        if args.server_path is not None:
            argv[:3] = from_path(args.server_path)
        server = WebhookProcess(
            "ours", argv, port, metrics_port, ca.cert_pem, workdir / "ours.log",
            paths.tls_cert, paths.tls_key, cpus=SERVER_CPU,
        )  # fmt: skip
        try:
            metrics, info = bench.sync(server)
            quiet = bench.steady("quiet", server, metrics)
            memory_mb = memory(server_pid(server))
        finally:
            server.stop()
    sync = bench.phases["sync"].report(quiet.result.p(99))
    out = {
        "source": "synthetic",
        "sync": sync,
        **info,
        "quiet": quiet.report(None),
        "memory_mb": memory_mb,
    }
    print(json.dumps(out, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service-accounts", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered req/s")
    parser.add_argument("--duration", type=float, default=10.0, help="quiet and churn seconds")
    parser.add_argument("--updates-per-second", type=float, default=50.0)
    parser.add_argument(
        "--sync-duration", type=float, default=25.0, help="load while syncing, at most, s"
    )
    parser.add_argument("--relist-duration", type=float, default=12.0, help="0: no relist")
    parser.add_argument("--workers", type=int, default=24, help="threads creating objects")
    parser.add_argument("--distinct", type=int, default=200, help="distinct reviews in the mix")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    parser.add_argument(
        "--server-path",
        type=Path,
        help="run ours from the webhook package in this directory (a copy, for before/after)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="only sync + quiet, against cache_sync.py's synthetic API (no control plane)",
    )
    args = parser.parse_args(argv)
    if args.synthetic:
        with tempfile.TemporaryDirectory(prefix="piw-churn-") as tmp:
            return synthetic_sync(args, Path(tmp))
    if args.service_accounts < ANNOTATED_EVERY:
        parser.error(f"--service-accounts must be at least {ANNOTATED_EVERY}")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="piw-churn-"))
    info = machine()
    bench = Bench(args, workdir)
    ok = False
    try:
        report = bench.run()
        ok = True
    finally:
        if not ok or args.keep:
            print(f"workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    quiet_p99 = bench.phases["quiet"].result.p(99)
    report["phases"] = {
        name: phase.report(quiet_p99 if name != "quiet" else None)
        for name, phase in bench.phases.items()
    }
    info["loadavg_end"] = os.getloadavg()
    report["machine"] = info
    report["settings"] = {
        "service_accounts": args.service_accounts,
        "rate": args.rate,
        "duration_s": args.duration,
        "updates_per_second": args.updates_per_second,
        "flags": list(FLAGS),
        "server_cpu": SERVER_CPU,
        "client_and_control_plane_cpu": CLIENT_CPU,
        "control_plane_nice": CONTROL_PLANE_NICE,
    }
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    text, markdown = render(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "churn.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "churn.md").write_text(
        f"{info['date']}, {info['cpus']} CPUs, load average {info['loadavg_start'][0]:.1f} -> "
        f"{info['loadavg_end'][0]:.1f}; {args.rate:.0f} req/s of the v1beta1 mix, ours on core "
        f"{SERVER_CPU}, vegeta and the control plane (nice {CONTROL_PLANE_NICE}) on core "
        f"{CLIENT_CPU}.\n\n" + markdown + "\n"
    )
    print()
    print(text)
    print(f"\nwrote {RESULTS / 'churn.json'} and churn.md ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
