"""`make bench`: our webhook against the upstream Go webhook (v0.6.17), same machine, same run.

Starts a real etcd + kube-apiserver on loopback, creates the mix's namespaces and
ServiceAccounts, starts both webhooks against it (same flags), checks that both answer each
kind of review alike, then loads each in turn with the same v1beta1 mix (upstream decodes only
v1beta1): 1 connection for N requests (latency), then C connections for D seconds
(throughput), alternating ours/upstream twice (ABBA) to spread drift. Adds the in-process
microbenchmark, prints a table and a markdown table, writes bench/results/latest.json.

    .venv/bin/python bench/run.py [--rounds 2] [--duration 10] [--latency-requests 1500]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, microbench, mix
from e2e.controlplane import ControlPlane, ToolsUnavailable, tools_dir
from e2e.webhooks import WebhookProcess, ours, upstream

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
FLAGS = (f"--aws-default-region={mix.REGION}", "-v=0")  # given to both webhooks
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = ("ours", "upstream")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- helpers


def process_cpu(pid: int) -> Callable[[], float]:
    """A probe for the CPU seconds (user + system) a process has used so far."""

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    return read


def post(server: WebhookProcess, body: bytes) -> dict[str, Any]:
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    request = urllib.request.Request(
        server.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5, context=ctx) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def patch_ops(answer: dict[str, Any]) -> int:
    patch = (answer.get("response") or {}).get("patch")
    return len(json.loads(base64.b64decode(patch))) if patch else 0


def wait_for(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def check_agreement(
    servers: dict[str, WebhookProcess], reviews: Sequence[mix.Review]
) -> dict[str, Any]:
    """One review of each kind to both: allowed and the number of patch operations."""
    table: dict[str, Any] = {}
    for kind in mix.KINDS:
        sample = next(r for r in reviews if r.kind == kind)
        row = {}
        for name, server in servers.items():
            answer = post(server, sample.body)
            row[name] = {
                "allowed": (answer.get("response") or {}).get("allowed"),
                "patch_ops": patch_ops(answer),
            }
        table[kind] = row
    return table


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = dict(
        line.split("=", 1)
        for line in (REPO / "e2e" / "tools" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    try:
        uvloop_version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        uvloop_version = "-"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "upstream": versions.get("UPSTREAM_WEBHOOK_VERSION", "?"),
        "kubernetes": versions.get("KUBERNETES_VERSION", "?"),
    }


# --------------------------------------------------------------------------- aggregation


def combine(results: Sequence[loadgen.LoadResult]) -> dict[str, Any]:
    """Pool the rounds: percentiles over all samples, rates over the summed windows."""
    merged = loadgen.LoadResult(connections=results[0].connections)
    for r in results:
        merged.requests += r.requests
        merged.errors += r.errors
        merged.elapsed += r.elapsed
        merged.latencies += r.latencies
        merged.body_indices += r.body_indices
        merged.client_cpu += r.client_cpu
        merged.error_samples += r.error_samples
        if r.server_cpu is not None:
            merged.server_cpu = (merged.server_cpu or 0.0) + r.server_cpu
    summary = merged.summary()
    summary["rounds_rps"] = [round(r.rps, 1) for r in results]
    summary["rounds_p50_ms"] = [round(r.latency_ms(50), 3) for r in results]
    summary["rounds_p99_ms"] = [round(r.latency_ms(99), 3) for r in results]
    return summary


def by_kind(results: Sequence[loadgen.LoadResult], reviews: Sequence[mix.Review]) -> dict[str, Any]:
    samples: dict[str, list[float]] = {kind: [] for kind in mix.KINDS}
    for r in results:
        for latency, index in zip(r.latencies, r.body_indices, strict=True):
            samples[reviews[index].kind].append(latency * 1000)
    out = {}
    for kind, values in samples.items():
        values.sort()
        out[kind] = {
            "p50_ms": round(loadgen.percentile(values, 50), 3),
            "p99_ms": round(loadgen.percentile(values, 99), 3),
        }
    return out


ROWS = (
    ("latency", "p50_ms", "latency, 1 connection: p50 ms"),
    ("latency", "p99_ms", "latency, 1 connection: p99 ms"),
    ("latency", "rps", "latency, 1 connection: req/s"),
    ("throughput", "p50_ms", "throughput, {c} connections: p50 ms"),
    ("throughput", "p99_ms", "throughput, {c} connections: p99 ms"),
    ("throughput", "rps", "throughput, {c} connections: req/s"),
    ("throughput", "server_cpu_us_per_req", "server CPU per review, µs (throughput)"),
    ("throughput", "server_cpu_pct", "server CPU, % of one core (throughput)"),
)


def table_rows(report: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    rows = []
    connections = report["settings"]["connections"]
    for phase, key, label in ROWS:
        a = report["phases"][phase]["ours"].get(key, 0.0)
        b = report["phases"][phase]["upstream"].get(key, 0.0)
        rows.append((label.format(c=connections), a, b, a / b if b else float("nan")))
    return rows


def render(report: dict[str, Any]) -> tuple[str, str]:
    rows = table_rows(report)
    width = max(len(r[0]) for r in rows)
    text = [f"{'':<{width}}  {'ours':>10}  {'upstream':>10}  {'ours/upstream':>13}"]
    text += [
        f"{label:<{width}}  {a:>10.3f}  {b:>10.3f}  {ratio:>13.2f}" for label, a, b, ratio in rows
    ]
    md = ["| | ours | upstream | ours/upstream |", "|---|---:|---:|---:|"]
    md += [f"| {label} | {a:.3f} | {b:.3f} | {ratio:.2f} |" for label, a, b, ratio in rows]
    micro = report["microbench"]
    note = (
        f"In-process review() (no HTTP/TLS): median {micro['median_us']} µs, p99 "
        f"{micro['p99_us']} µs wall / {micro['cpu']['p99_us']} µs CPU "
        f"({micro['calls']} calls over the mix)."
    )
    return "\n".join(text) + "\n" + note, "\n".join(md) + "\n\n" + note


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        tools = tools_dir()
    except ToolsUnavailable as err:
        raise SystemExit(f"bench needs the e2e binaries: {err}") from None
    workdir = Path(tempfile.mkdtemp(prefix="piw-bench-"))
    reviews = mix.generate(args.distinct, mix.V1BETA1)
    bodies = mix.bodies(reviews)
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    log(f"{info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_start']}")
    log(f"workdir {workdir}; starting etcd + kube-apiserver {info['kubernetes']}")
    phases: dict[str, dict[str, list[loadgen.LoadResult]]] = {
        "latency": {name: [] for name in SERVERS},
        "throughput": {name: [] for name in SERVERS},
    }
    ok = False
    with ControlPlane(tools, workdir=workdir / "cp") as cp:
        count = mix.create_objects(cp)
        log(f"created {len(mix.NAMESPACES)} namespaces and {count} ServiceAccounts")
        servers = {
            "ours": ours(cp, workdir, FLAGS),
            "upstream": upstream(cp, workdir, FLAGS),
        }
        try:
            for name, server in servers.items():
                server.start()
                log(f"{name} started: {' '.join(server.argv[:3])} ... (log {server.log_path})")
            wait_for(servers["ours"].ready, 30, "ours /readyz")
            # Upstream has no readiness for its informer: wait until a review gets a patch.
            annotated = next(r for r in reviews if r.kind == "annotated")
            wait_for(
                lambda: patch_ops(post(servers["upstream"], annotated.body)) > 0,
                30,
                "upstream to mutate (ServiceAccount informer synced)",
            )
            agreement = check_agreement(servers, reviews)
            for kind, row in agreement.items():
                log(f"check {kind:<10} " + "  ".join(f"{n}: {v}" for n, v in row.items()))
            order = [SERVERS, SERVERS[::-1]] * ((args.rounds + 1) // 2)
            for round_number, names in enumerate(order[: args.rounds], 1):
                for name in names:
                    server = servers[name]
                    assert server.proc is not None
                    cpu = process_cpu(server.proc.pid)
                    lat = loadgen.run_load(
                        server.url,
                        None,
                        bodies,
                        connections=1,
                        requests=args.latency_requests,
                        duration=60,
                        warmup=200,
                        server_cpu=cpu,
                        ca_pem=server.ca_pem,
                    )
                    thr = loadgen.run_load(
                        server.url,
                        None,
                        bodies,
                        connections=args.connections,
                        duration=args.duration,
                        warmup=400,
                        server_cpu=cpu,
                        ca_pem=server.ca_pem,
                    )
                    phases["latency"][name].append(lat)
                    phases["throughput"][name].append(thr)
                    ls, ts = lat.summary(), thr.summary()
                    log(
                        f"round {round_number} {name:<8} latency p50 {ls['p50_ms']:.3f} ms "
                        f"p99 {ls['p99_ms']:.3f} ms {ls['rps']:.0f}/s | {args.connections} conns "
                        f"{ts['rps']:.0f}/s p50 {ts['p50_ms']:.2f} ms p99 {ts['p99_ms']:.2f} ms "
                        f"server CPU {ts.get('server_cpu_pct', '?')}% "
                        f"loadgen CPU {ts['client_cpu_pct']}% errors {ls['errors'] + ts['errors']} "
                        f"(load average {os.getloadavg()[0]:.1f})"
                    )
            ok = True
        finally:
            for server in servers.values():
                server.stop()
            if not ok:
                print(f"bench failed; logs kept in {workdir}", file=sys.stderr)
    log(f"microbenchmark: {args.micro_calls} review() calls in-process")
    micro = microbench.run(args.micro_calls, mix.V1BETA1)
    info["loadavg_end"] = os.getloadavg()
    report: dict[str, Any] = {
        "machine": info,
        "settings": {
            "flags": list(FLAGS),
            "api_version": mix.V1BETA1,
            "distinct_reviews": len(bodies),
            "body_bytes_median": sorted(len(b) for b in bodies)[len(bodies) // 2],
            "mix_percent": mix.MIX,
            "rounds": args.rounds,
            "latency_requests": args.latency_requests,
            "connections": args.connections,
            "duration_s": args.duration,
        },
        "agreement": agreement,
        "phases": {
            phase: {name: combine(results) for name, results in per_server.items()}
            for phase, per_server in phases.items()
        },
        "latency_by_kind": {
            name: by_kind(results, reviews) for name, results in phases["latency"].items()
        },
        "microbench": micro,
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="ours/upstream alternations")
    parser.add_argument("--latency-requests", type=int, default=1500)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="throughput seconds")
    parser.add_argument("--distinct", type=int, default=200, help="distinct reviews in the mix")
    parser.add_argument("--micro-calls", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(args)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text, markdown = render(report)
    m = report["machine"]
    print()
    print(text)
    errors = {n: sum(report["phases"][p][n]["errors"] for p in report["phases"]) for n in SERVERS}
    print(f"errors: {errors}; latency (1 connection) p50/p99 ms by kind of review:")
    for kind in mix.KINDS:
        row = "  ".join(
            f"{n} {report['latency_by_kind'][n][kind]['p50_ms']:.3f}/"
            f"{report['latency_by_kind'][n][kind]['p99_ms']:.3f}"
            for n in SERVERS
        )
        print(f"  {kind:<10} {row}")
    print(
        "Patches differ by design (see agreement in the JSON): upstream replaces whole container "
        "lists and also answers UPDATEs and already-mutated pods with a (no-op) patch; ours adds "
        "single items and answers those with no patch."
    )
    print()
    print(
        f"NOTE: {m['cpus']} CPUs ({m['cpu_model']}) shared by the load generator (Python, this "
        "process), the webhook under test, etcd and kube-apiserver; load average "
        f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end. Absolute "
        "figures are this machine's; the ratio is the comparable number. Upstream (Go) can use "
        "both cores, ours is one Python process (one core)."
    )
    print()
    print("Markdown:")
    print()
    print(
        f"{m['date']}, {m['cpus']} x {m['cpu_model']}, Python {m['python']}, upstream "
        f"{m['upstream']}, kube-apiserver {m['kubernetes']}; v1beta1 mix of "
        f"{report['settings']['distinct_reviews']} reviews "
        f"(median {report['settings']['body_bytes_median']} B), {report['settings']['rounds']} "
        "rounds pooled.\n"
    )
    print(markdown)
    print()
    print(f"wrote {RESULTS / 'latest.json'} ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
