"""The ServiceAccount cache at scale: how long `KubeSource` takes to list N ServiceAccounts
and how much memory the `IdentityStore` then holds.

    python bench/cache_sync.py                               # synthetic API, 100,000 SAs
    python bench/cache_sync.py --source apiserver --count 20000   # real kube-apiserver + etcd

synthetic: a loopback stdlib HTTP server (a thread of a child process, so neither its CPU
nor its memory is counted against ours) serves /api/v1/serviceaccounts lists of realistic
ServiceAccounts (~1 KB: labels, Helm annotations, managedFields, uid, secrets; 5% carry a
role): all of them at once for resourceVersion=0, as kube-apiserver answers that list from its
watch cache whatever the limit, else pages of 500; and an empty watch stream. A kubeconfig
points KubeSource at it, unmodified.

apiserver: a real ControlPlane; the ServiceAccounts are created through `cp.request` by a
bounded thread pool (creation time is reported too).

Two syncs: the first, untraced, gives the sync time and process RSS; the second runs under
tracemalloc and measures what the store retains (snapshot with the store minus snapshot after
dropping it).
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from webhook.core.settings import MutationSettings
from webhook.sources.kube import PAGE_SIZE, KubeSource
from webhook.sources.kube_client import QPS
from webhook.sources.store import IdentityStore

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MAX_COUNT = 500_000
PER_NAMESPACE = 100
ANNOTATED_EVERY = 20  # 5%
WATCH_HOLD_SECONDS = 2.0  # the synthetic watch stays open this long, then ends empty
SYNC_TIMEOUT = 600.0
RESOURCE_VERSION = 4_200_000

# --------------------------------------------------------------------------- objects


def namespace_of(index: int) -> str:
    return f"team-{index // PER_NAMESPACE:04d}"


def service_account(index: int) -> dict[str, Any]:
    """The part of a ServiceAccount a client writes (labels, annotations, secrets)."""
    namespace, name = namespace_of(index), f"svc-{index:06d}"
    release = f"{name}-release"
    annotations = {
        "meta.helm.sh/release-name": release,
        "meta.helm.sh/release-namespace": namespace,
    }
    if index % ANNOTATED_EVERY == 0:
        annotations["eks.amazonaws.com/role-arn"] = (
            f"arn:aws:iam::111122223333:role/{namespace}-{name}"
        )
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/instance": release,
                "app.kubernetes.io/managed-by": "Helm",
                "helm.sh/chart": "service-1.4.2",
            },
            "annotations": annotations,
        },
        "secrets": [{"name": f"{name}-token-{_digest(index)[:5]}"}],
        "imagePullSecrets": [{"name": "ecr-pull"}],
    }


def _digest(index: int) -> str:
    return hashlib.blake2b(index.to_bytes(8, "big"), digest_size=16).hexdigest()


def stored_service_account(index: int) -> dict[str, Any]:
    """As the API server lists it: plus uid, resourceVersion, timestamp and managedFields."""
    item = service_account(index)
    del item["apiVersion"], item["kind"]  # list items carry neither
    meta = item["metadata"]
    d = _digest(index)
    meta["uid"] = f"{d[:8]}-{d[8:12]}-4{d[13:16]}-a{d[17:20]}-{d[20:32]}"
    meta["resourceVersion"] = str(1000 + index)
    meta["creationTimestamp"] = "2024-11-05T14:03:27Z"
    meta["managedFields"] = [
        {
            "manager": "helm",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2024-11-05T14:03:27Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:imagePullSecrets": {".": {}, 'k:{"name":"ecr-pull"}': {}},
                "f:metadata": {
                    "f:annotations": {
                        ".": {},
                        **{f"f:{key}": {} for key in meta["annotations"]},
                    },
                    "f:labels": {".": {}, **{f"f:{key}": {} for key in meta["labels"]}},
                },
            },
        }
    ]
    return item


# --------------------------------------------------------------------------- synthetic API


def _token(offset: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": RESOURCE_VERSION, "start": offset})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _offset(token: str) -> int:
    return int(json.loads(base64.urlsafe_b64decode(token.encode()))["start"])


def render_pages(count: int, limit: int = PAGE_SIZE) -> dict[int, bytes]:
    """Every list page, by start offset, rendered up front so serving costs no CPU."""
    pages = {}
    for start in range(0, count, limit):
        end = min(count, start + limit)
        metadata: dict[str, Any] = {"resourceVersion": str(RESOURCE_VERSION)}
        if end < count:
            metadata["continue"] = _token(end)
            metadata["remainingItemCount"] = count - end
        page = {
            "kind": "ServiceAccountList",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": [stored_service_account(i) for i in range(start, end)],
        }
        pages[start] = orjson.dumps(page)
    return pages


def _handler(pages: dict[int, bytes], whole: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API server

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path != "/api/v1/serviceaccounts":
                self._send(404, b'{"kind":"Status","code":404}')
            elif query.get("watch") == "true":
                self._watch(float(query.get("timeoutSeconds", WATCH_HOLD_SECONDS)))
            elif query.get("resourceVersion") == "0" and "continue" not in query:
                # As kube-apiserver: a list from its watch cache ignores limit.
                self._send(200, whole)
            elif int(query.get("limit", 0)) != PAGE_SIZE:
                self._send(400, b'{"kind":"Status","code":400,"message":"unexpected limit"}')
            else:
                token = query.get("continue", "")
                page = pages.get(_offset(token) if token else 0)
                if page is None:
                    self._send(410, b'{"kind":"Status","code":410,"reason":"Expired"}')
                else:
                    self._send(200, page)

        def _watch(self, timeout: float) -> None:
            # An empty stream: no events, then a clean end (as after timeoutSeconds).
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(min(timeout, WATCH_HOLD_SECONDS))
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def serve_synthetic(count: int, port_file: Path) -> None:
    """Child-process entry point: serve until stdin closes (the parent exited or stopped us)."""
    whole = render_pages(count, limit=count)[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(render_pages(count), whole))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="synthetic-api", daemon=True).start()
    port_file.write_text(str(server.server_address[1]))
    sys.stdin.read()
    server.shutdown()


class SyntheticApi:
    def __init__(self, count: int, workdir: Path) -> None:
        self.count = count
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.kubeconfig = workdir / "kubeconfig"

    def __enter__(self) -> SyntheticApi:
        port_file = self.workdir / "port"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-synthetic", str(self.count), str(port_file)],
            stdin=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120  # rendering 100k ServiceAccounts takes a few seconds
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("synthetic API server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "synthetic", "cluster": {"server": url}}],
            "users": [{"name": "anonymous", "user": {}}],
            "contexts": [
                {"name": "synthetic", "context": {"cluster": "synthetic", "user": "anonymous"}}
            ],
            "current-context": "synthetic",
        }
        self.kubeconfig.write_text(json.dumps(config))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- apiserver mode


def create_in_apiserver(cp: Any, count: int, workers: int, timeout: float) -> dict[str, Any]:
    """Namespaces, then `count` ServiceAccounts through cp.request with `workers` threads."""
    namespaces = sorted({namespace_of(i) for i in range(count)})
    started = time.monotonic()
    deadline = started + timeout
    failures: list[str] = []

    def create_namespace(name: str) -> None:
        cp.apply(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )

    def create(index: int) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("creation timeout")
        obj = service_account(index)
        path = f"/api/v1/namespaces/{obj['metadata']['namespace']}/serviceaccounts"
        status, body = cp.request("POST", path, obj, timeout=30)
        if status not in (200, 201, 409) and len(failures) < 10:
            failures.append(f"HTTP {status}: {body[:200]!r}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(create_namespace, namespaces))
        ns_seconds = time.monotonic() - started
        done = 0
        for done, _ in enumerate(pool.map(create, range(count)), 1):
            if done % 10_000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  created {done}/{count} ({rate:.0f}/s)", flush=True)
    seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"creating ServiceAccounts failed: {failures}")
    return {
        "namespaces": len(namespaces),
        "namespace_seconds": round(ns_seconds, 1),
        "create_seconds": round(seconds, 1),
        "create_per_second": round(count / seconds, 1),
        "workers": workers,
    }


def create_in_child(cp: Any, count: int, workers: int, timeout: float) -> dict[str, Any]:
    """`create_in_apiserver` in a forked child, so that 100k requests' worth of garbage does not
    inflate the RSS we measure afterwards. (Forked, not spawned: the child inherits `cp`.)"""
    context = multiprocessing.get_context("fork")
    results: multiprocessing.SimpleQueue[dict[str, Any] | str] = context.SimpleQueue()

    def child() -> None:
        try:
            results.put(create_in_apiserver(cp, count, workers, timeout))
        except Exception as err:
            results.put(f"{type(err).__name__}: {err}")

    process = context.Process(target=child, name="create-service-accounts")
    process.start()
    process.join(timeout + 60)
    if process.is_alive():
        process.kill()
        process.join()
        raise RuntimeError("creating ServiceAccounts did not finish in time")
    outcome = results.get() if not results.empty() else f"child exited with {process.exitcode}"
    if isinstance(outcome, str):
        raise RuntimeError(f"creating ServiceAccounts failed: {outcome}")
    return outcome


# --------------------------------------------------------------------------- measurement


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _wait_threads_gone(names: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.name in names and t.is_alive() for t in threading.enumerate()):
            return
        time.sleep(0.05)


def sync_once(kubeconfig: Path) -> tuple[IdentityStore, KubeSource, float]:
    store = IdentityStore(MutationSettings())
    source = KubeSource.connect(
        store, kubeconfig=str(kubeconfig), api_url="", config_map_namespace=None, resync_seconds=0
    )
    started = time.perf_counter()
    source.start()
    if not source.wait_synced(SYNC_TIMEOUT):
        source.stop()
        raise RuntimeError(f"not synced after {SYNC_TIMEOUT:.0f}s")
    return store, source, time.perf_counter() - started


def _stop(source: KubeSource, wake: Callable[[], None] | None) -> None:
    """Stop the source and wait for its watch thread, which holds the store, to end: it ends
    with its watch response (the synthetic one is short) or, given `wake`, at the next event."""
    source.stop()
    if wake is not None:
        wake()
    _wait_threads_gone(("sa-watch",), WATCH_HOLD_SECONDS + 30)


def measure(
    kubeconfig: Path, expected: int, wake: Callable[[], None] | None = None
) -> dict[str, Any]:
    import kubernetes.client  # imported before the baseline: RSS deltas are the sync's own

    del kubernetes.client
    gc.collect()
    rss_before, _ = rss_mb()
    store, source, seconds = sync_once(kubeconfig)
    gc.collect()
    rss_after, rss_peak = rss_mb()
    count, identities = store.service_account_count, store.identity_count
    _stop(source, wake)
    del store, source
    gc.collect()

    # Second sync under tracemalloc: what the store retains.
    tracemalloc.start(1)
    traced_base = tracemalloc.get_traced_memory()[0]
    store, source, traced_seconds = sync_once(kubeconfig)
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_base
    _stop(source, wake)
    del source
    gc.collect()
    with_store = tracemalloc.take_snapshot()
    del store
    gc.collect()
    without_store = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = with_store.compare_to(without_store, "filename")
    store_bytes = sum(d.size_diff for d in diff)
    by_file = [
        {
            "file": os.path.relpath(d.traceback[0].filename, REPO),
            "mb": round(d.size_diff / 2**20, 2),
        }
        for d in diff[:4]
        if d.size_diff > 0
    ]

    pages = 1  # the resourceVersion=0 list comes whole, from the real API server too
    return {
        "service_accounts": count,
        "expected": expected,
        "with_identity": identities,
        "sync_seconds": round(seconds, 2),
        "pages": pages,
        "rate_limiter_floor_seconds": round(max(0, pages - QPS) / QPS, 2),
        "store_mb": round(store_bytes / 2**20, 2),
        "bytes_per_sa": round(store_bytes / max(1, count), 1),
        "store_by_file": by_file,
        "traced_peak_mb": round(traced_peak / 2**20, 1),  # Python allocations at the worst moment
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_delta_mb": round(rss_after - rss_before, 1),
        "rss_peak_mb": round(rss_peak, 1),
        "traced_sync_seconds": round(traced_seconds, 2),
    }


def report(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"{r['service_accounts']:,} ServiceAccounts ({r['with_identity']:,} with a role) from "
        f"{r['source']}: synced in {r['sync_seconds']} s (one list response: the "
        "resourceVersion=0 list is served whole, whatever the limit)",
        f"store: {r['store_mb']} MB = {r['bytes_per_sa']} bytes per ServiceAccount (tracemalloc; "
        f"peak of Python allocations while listing: {r['traced_peak_mb']} MB)",
        f"process RSS: {r['rss_before_mb']} MB before, {r['rss_after_mb']} MB after "
        f"(+{r['rss_delta_mb']} MB), peak {r['rss_peak_mb']} MB",
    ]
    if "create_seconds" in r:
        lines.insert(
            0,
            f"created {r['expected']:,} ServiceAccounts in {r['namespaces']} namespaces in "
            f"{r['create_seconds']} s ({r['create_per_second']}/s, {r['workers']} threads)",
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--serve-synthetic"]:
        serve_synthetic(int(args_list[1]), Path(args_list[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("synthetic", "apiserver"), default="synthetic")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=16, help="apiserver: creating threads")
    parser.add_argument(
        "--create-timeout", type=float, default=1200, help="apiserver: creation deadline, s"
    )
    args = parser.parse_args(args_list)
    if not 0 < args.count <= MAX_COUNT:
        parser.error(f"--count must be in 1..{MAX_COUNT}")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="piw-cache-") as tmp:
        workdir = Path(tmp)
        if args.source == "synthetic":
            with SyntheticApi(args.count, workdir) as api:
                result = {"source": "synthetic loopback API", **measure(api.kubeconfig, args.count)}
        else:
            from e2e.controlplane import ControlPlane, tools_dir

            with ControlPlane(tools_dir(), workdir=workdir / "cp") as cp:
                print(f"creating {args.count:,} ServiceAccounts in {cp.url} ...", flush=True)
                created = create_in_child(cp, args.count, args.workers, args.create_timeout)
                wakes = iter(range(1_000))

                def wake() -> None:  # an event for the watch, so its thread sees the stop
                    name = f"bench-wake-{next(wakes)}"
                    cp.ensure_service_account(namespace_of(0), name)

                result = {
                    "source": "kube-apiserver + etcd",
                    **created,
                    **measure(cp.kubeconfig, args.count, wake),
                }
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["cpus"] = os.cpu_count()
    print(report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cache_sync-{args.source}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
