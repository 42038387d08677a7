"""Our own work per review, in-process: `webhook.review.review(body, store, settings)` over the
mix (JSON decode, lookup, plan, patch, encode), no HTTP, TLS or event loop.

    python bench/microbench.py --calls 20000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mix
from bench.stats import percentile
from webhook.core.settings import MutationSettings
from webhook.review import review
from webhook.sources.store import IdentityStore


def make_store(settings: MutationSettings) -> IdentityStore:
    store = IdentityStore(settings)
    for item in mix.service_accounts():
        meta = item["metadata"]
        store.put_service_account(meta["namespace"], meta["name"], meta.get("annotations"))
    return store


def run(
    calls: int = 20_000,
    api_version: str = mix.V1,
    distinct: int = 200,
    warmup: int = 1_000,
) -> dict[str, Any]:
    """µs per review(): median/p99 per kind and overall, cycling over `distinct` reviews."""
    settings = MutationSettings(aws_default_region=mix.REGION)
    store = make_store(settings)
    reviews = mix.generate(distinct, api_version)
    for i in range(warmup):
        review(reviews[i % len(reviews)].body, store, settings)
    # Wall time, and this thread's CPU time: on a shared machine the wall-clock tail is mostly
    # other processes' timeslices; the CPU-time tail is ours (allocation, GC).
    wall: dict[str, list[float]] = {kind: [] for kind in mix.KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in mix.KINDS}
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    # As the server does before serving (webhook/server/runner.py): collect, then freeze what
    # exists, so that collections walk only what reviews allocate. The collector stays on.
    gc.collect()
    gc.freeze()
    started = clock()
    for i in range(calls):
        r = reviews[i % len(reviews)]
        c0 = cpu_clock()
        t0 = clock()
        review(r.body, store, settings)
        t1 = clock()
        c1 = cpu_clock()
        wall[r.kind].append((t1 - t0) / 1000)
        cpu[r.kind].append((c1 - c0) / 1000)
    elapsed = (clock() - started) / 1e9
    gc.unfreeze()

    def stats(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        return {
            "median_us": round(percentile(values, 50), 1),
            "p99_us": round(percentile(values, 99), 1),
            "mean_us": round(sum(values) / len(values), 1) if values else 0.0,
        }

    kinds = {
        kind: {"calls": len(wall[kind]), **stats(wall[kind]), "cpu": stats(cpu[kind])}
        for kind in mix.KINDS
    }
    every_wall = [v for values in wall.values() for v in values]
    every_cpu = [v for values in cpu.values() for v in values]
    sizes = sorted(len(r.body) for r in reviews)
    return {
        "calls": calls,
        "api_version": api_version,
        "body_bytes_median": sizes[len(sizes) // 2],
        **stats(every_wall),
        "cpu": stats(every_cpu),
        "reviews_per_second": round(calls / elapsed),
        "kinds": kinds,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"review() over the mix: {result['calls']} calls, {result['api_version']}, median body "
        f"{result['body_bytes_median']} B, {result['reviews_per_second']} reviews/s on one core",
        f"  {'kind':<10} {'calls':>6} {'median µs':>10} {'p99 µs':>8} {'CPU median':>11} "
        f"{'CPU p99':>8}",
    ]
    rows = [("all", result), *result["kinds"].items()]
    for kind, k in rows:
        calls = k.get("calls", result["calls"])
        lines.append(
            f"  {kind:<10} {calls:>6} {k['median_us']:>10} {k['p99_us']:>8} "
            f"{k['cpu']['median_us']:>11} {k['cpu']['p99_us']:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--api-version", choices=sorted(mix.API_VERSIONS), default="v1")
    args = parser.parse_args(argv)
    print(format_table(run(args.calls, mix.API_VERSIONS[args.api_version])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
