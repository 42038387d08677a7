"""`make bench`: our webhook against the upstream Go webhook (v0.6.17), same machine, same run,
open loop (bench/openloop.py) at fixed offered rates with vegeta, under two CPU budgets.

Starts a real etcd + kube-apiserver on loopback, creates the mix's namespaces and
ServiceAccounts, and per CPU budget (each server pinned to one core, then unpinned) starts both
webhooks against it (same flags), checks that both answer each kind of review alike, and sweeps
the offered rates 250, 500, 1000, 2000, ... req/s with the v1beta1 mix (upstream decodes only
v1beta1), ours and upstream interleaved per rate, until each saturates. Adds the in-process
microbenchmark; prints the table; writes bench/results/latest.json (git-ignored),
bench/results/openloop.md (the table) and bench/results/openloop.png (the figure).

    .venv/bin/python bench/run.py [--duration 5] [--warmup 1] [--budgets pinned,unpinned]
        [--rates 250,500,...] [--keep]
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
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import microbench, mix, openloop, vegeta
from bench.stats import process_cpu as process_cpu  # re-exported: bench.run.process_cpu
from e2e.controlplane import ControlPlane, ToolsUnavailable, tools_dir
from e2e.webhooks import WebhookProcess, ours, upstream

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
FLAGS = (f"--aws-default-region={mix.REGION}", "-v=0")  # given to both webhooks
SERVERS = ("ours", "upstream")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- helpers


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
    versions = machine_versions()
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
        "vegeta": versions.get("VEGETA_VERSION", "?"),
    }


# --------------------------------------------------------------------------- the run


def start_pair(
    cp: ControlPlane, workdir: Path, budget: openloop.Budget, reviews: Sequence[mix.Review]
) -> dict[str, WebhookProcess]:
    """Both webhooks started under `budget`, ours ready and upstream's informer synced."""
    servers = {
        "ours": ours(cp, workdir, FLAGS, f"ours-{budget.name}", cpus=budget.server_cpus),
        "upstream": upstream(
            cp, workdir, FLAGS, f"upstream-{budget.name}", cpus=budget.server_cpus
        ),
    }
    try:
        for name, server in servers.items():
            server.start()
            pinned = f" under taskset -c {budget.server_cpus}" if budget.server_cpus else ""
            log(f"{name} started{pinned}: {' '.join(server.argv[:3])} ... (log {server.log_path})")
        wait_for(servers["ours"].ready, 30, "ours /readyz")
        # Upstream has no readiness for its informer: wait until a review gets a patch.
        annotated = next(r for r in reviews if r.kind == "annotated")
        wait_for(
            lambda: patch_ops(post(servers["upstream"], annotated.body)) > 0,
            30,
            "upstream to mutate (ServiceAccount informer synced)",
        )
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        tools = tools_dir()
        vegeta_path = vegeta.vegeta_binary()
    except ToolsUnavailable as err:
        raise SystemExit(f"bench needs the e2e binaries and vegeta: {err}") from None
    budgets = [openloop.BUDGETS[name] for name in args.budgets]
    if any(b.server_cpus or b.vegeta_cpus for b in budgets) and (os.cpu_count() or 1) < 2:
        raise SystemExit("the pinned budget needs 2 CPUs (server on 1, vegeta on 0)")
    workdir = Path(tempfile.mkdtemp(prefix="piw-bench-"))
    reviews = mix.generate(args.distinct, mix.V1BETA1)
    bodies = mix.bodies(reviews)
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    log(f"{info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_start']}")
    log(f"workdir {workdir}; vegeta {vegeta_path}")
    log(f"starting etcd + kube-apiserver {info['kubernetes']}")
    points: list[dict[str, Any]] = []
    agreement: dict[str, Any] = {}
    ok = False
    try:
        with ControlPlane(tools, workdir=workdir / "cp") as cp:
            count = mix.create_objects(cp)
            log(f"created {len(mix.NAMESPACES)} namespaces and {count} ServiceAccounts")
            for budget in budgets:
                log(f"budget {budget.name}: {budget.title}")
                servers = start_pair(cp, workdir, budget, reviews)
                try:
                    agreement[budget.name] = check_agreement(servers, reviews)
                    for kind, row in agreement[budget.name].items():
                        log(f"check {kind:<10} " + "  ".join(f"{n}: {v}" for n, v in row.items()))
                    targets = {}
                    for name, server in servers.items():
                        assert server.proc is not None
                        targets[name] = openloop.Target(server.url, cp.ca_file, server.proc.pid)
                    points += openloop.sweep(
                        targets,
                        bodies,
                        budget,
                        workdir=workdir / "vegeta",
                        rates=args.rates,
                        duration=args.duration,
                        warmup=args.warmup,
                        windows=args.windows,
                        limits=openloop.Limits(max_p99_ms=args.max_p99_ms),
                        retries=args.retries,
                        log=log,
                    )
                finally:
                    for server in servers.values():
                        server.stop()
        ok = True
    finally:
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
            "vegeta": info["vegeta"],
            "budgets": [b.name for b in budgets],
            "budget_titles": {b.name: b.title for b in budgets},
            "rates": list(args.rates),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "windows": args.windows,
            "retries": args.retries,
            "limits": {"min_achieved": 0.95, "max_errors": 0.01, "max_p99_ms": args.max_p99_ms},
        },
        "agreement": agreement,
        "points": points,
        "microbench": micro,
    }
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def machine_versions() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / "e2e" / "tools" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def rate_list(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers: {text!r}")
    return rates


def budget_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in openloop.BUDGETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"budgets are {', '.join(openloop.BUDGETS)}: {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per point")
    parser.add_argument(
        "--windows", type=int, default=2, help="measured windows per point and server (ABBA)"
    )
    parser.add_argument(
        "--rates", type=rate_list, default=list(openloop.RATES), help="offered req/s, ascending"
    )
    parser.add_argument(
        "--budgets", type=budget_list, default=list(openloop.BUDGETS), help="pinned,unpinned"
    )
    parser.add_argument("--max-p99-ms", type=float, default=100.0, help="saturation: p99 above")
    parser.add_argument(
        "--retries", type=int, default=1, help="re-measure a saturated point before stopping"
    )
    parser.add_argument("--distinct", type=int, default=200, help="distinct reviews in the mix")
    parser.add_argument("--micro-calls", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs, results)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where latest.json, openloop.md/.png go"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run(args)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = openloop.render_markdown(report)
    (out / "openloop.md").write_text(markdown)
    openloop.plot(report, out / "openloop.png")
    m = report["machine"]
    print()
    print(openloop.render_text(report))
    print("(* saturated; CPU µs = server CPU per review; ratio = ours/upstream CPU per review)")
    print()
    for budget, table in report["agreement"].items():
        print(
            f"agreement before load ({budget}): "
            + "; ".join(
                f"{kind} "
                + " ".join(f"{n}={v['allowed']}/{v['patch_ops']} ops" for n, v in row.items())
                for kind, row in table.items()
            )
        )
    print(
        "Patches differ by design: upstream replaces whole container lists and also answers "
        "UPDATEs and already-mutated pods with a (no-op) patch; ours adds single items and "
        "answers those with no patch."
    )
    micro = report["microbench"]
    print(
        f"In-process review() (no HTTP/TLS): median {micro['median_us']} µs, p99 "
        f"{micro['p99_us']} µs wall / {micro['cpu']['p99_us']} µs CPU ({micro['calls']} calls)."
    )
    print(
        f"NOTE: {m['cpus']} CPUs ({m['cpu_model']}); load average {m['loadavg_start'][0]:.1f} at "
        f"start, {m['loadavg_end'][0]:.1f} at end. Pinned: each webhook on core 1 (upstream's "
        "GOMAXPROCS is 1), vegeta on core 0, etcd/kube-apiserver unpinned (idle during load). "
        "Unpinned: everything shares both cores; upstream (Go) can use both, ours is one "
        "Python process (one core)."
    )
    print()
    print(markdown)
    print(
        f"wrote {out / 'latest.json'}, {out / 'openloop.md'}, {out / 'openloop.png'} "
        f"({report['wall_seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
