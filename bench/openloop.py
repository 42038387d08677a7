"""Open-loop latency against offered rate: vegeta at fixed rates, ours and upstream interleaved.

The API server does not wait for one admission review to finish before sending the next pod's,
so the load is a fixed offered rate whatever the webhook's latency (open loop), not N clients
each waiting for its answer. For each CPU budget (`Budget`), each rate of `RATES` goes to both
webhooks in turn, the order alternating from one rate to the next (ours first, then upstream
first: ABBA), so that drift on the machine hits both. Each point is a warm-up second (same
connections, not recorded) and then `duration` measured seconds; a point is `windows` of
those per server, pooled, taken in ABBA order within the rate too. A server whose point is
saturated (achieved < 95% of offered, errors > 1%, or p99 > 100 ms) gets no higher rate; the
other goes on alone.

`run.py` starts the webhooks and calls `sweep`; `render_markdown` and `plot` turn the points
into bench/results/openloop.md and openloop.png.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import vegeta
from bench.stats import process_cpu

__all__ = [
    "BUDGETS",
    "RATES",
    "Budget",
    "Limits",
    "Target",
    "plot",
    "render_markdown",
    "render_text",
    "saturation",
    "sweep",
]

RATES = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000, 10000, 12000, 16000)
SERVERS = ("ours", "upstream")


@dataclass(frozen=True)
class Budget:
    name: str
    server_cpus: str | None  # taskset -c for the webhooks, from exec on
    vegeta_cpus: str | None  # taskset -c for vegeta
    title: str  # what the figure and the table say about it


PINNED = Budget(
    "pinned",
    "1",
    "0",
    "each server pinned to one core (taskset -c 1, so GOMAXPROCS=1), vegeta on core 0",
)
UNPINNED = Budget(
    "unpinned",
    None,
    None,
    "no pinning: server, vegeta and the API server share both cores",
)
BUDGETS = {b.name: b for b in (PINNED, UNPINNED)}


@dataclass(frozen=True)
class Limits:
    """When a point counts as saturated (and its server gets no higher rate)."""

    min_achieved: float = 0.95  # of the offered rate
    max_errors: float = 0.01  # of the requests sent
    max_p99_ms: float = 100.0


@dataclass(frozen=True)
class Target:
    """A running webhook: where to send, whom to trust, which process's CPU to read."""

    url: str
    ca: Path
    pid: int


def saturation(result: vegeta.AttackResult, limits: Limits) -> str | None:
    """Why this point is saturated, or None."""
    reasons = []
    if result.achieved_rps < limits.min_achieved * result.rate:
        reasons.append(f"achieved {result.achieved_rps:.0f}/s < {limits.min_achieved:.0%}")
    if result.sent and result.errors > limits.max_errors * result.sent:
        reasons.append(f"errors {result.errors}/{result.sent}")
    if result.p(99) > limits.max_p99_ms:
        reasons.append(f"p99 {result.p(99):.0f} ms > {limits.max_p99_ms:.0f}")
    expected = result.rate * result.duration_s
    if reasons and result.sent < limits.min_achieved * expected:
        # vegeta itself fell behind (its CPU, or max-workers reached with the server stalled)
        reasons.append(f"vegeta sent {result.sent / expected:.0%} of the offered requests")
    return "; ".join(reasons) or None


def point(
    server: str, budget: Budget, order: int, result: vegeta.AttackResult, limits: Limits
) -> dict[str, Any]:
    out: dict[str, Any] = {"budget": budget.name, "server": server, "order": order}
    out.update(result.summary())
    expected = result.rate * result.duration_s
    out["sent_of_offered"] = round(result.sent / expected, 3) if expected else 0.0
    out["saturated"] = saturation(result, limits)
    out["loadavg"] = round(os.getloadavg()[0], 2)
    return out


def sweep(
    targets: Mapping[str, Target],
    bodies: Sequence[bytes],
    budget: Budget,
    *,
    workdir: Path,
    rates: Sequence[float] = RATES,
    duration: float = 5.0,
    warmup: float = 1.0,
    windows: int = 2,
    limits: Limits = Limits(),
    retries: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every rate to every target until each saturates. Each point is `windows` measured
    windows per server, pooled, the servers taking turns in ABBA order within the rate (and
    the first server alternating from one rate to the next), so that a burst of outside load
    or drift on the machine lands on both. A saturated point is measured again (up to
    `retries` times) before its server is stopped: one burst can push a p99 over the limit."""
    names = list(targets)
    active = set(names)
    points: list[dict[str, Any]] = []

    def measure(name: str, rate: float, attempt: int) -> vegeta.AttackResult:
        target = targets[name]
        result = vegeta.attack(
            target.url,
            target.ca,
            bodies,
            rate,
            duration,
            workdir=workdir,
            cpus=budget.vegeta_cpus,
            warmup_s=warmup,
            server_cpu=process_cpu(target.pid),
            name=f"{budget.name}-{name}",
        )
        log(_line(budget, name, rate, point(name, budget, 0, result, limits), attempt))
        time.sleep(0.3)  # let the last connections close
        return result

    for index, rate in enumerate(rates):
        if not active:
            break
        order = [n for n in (names if index % 2 == 0 else names[::-1]) if n in active]
        measured: dict[str, list[vegeta.AttackResult]] = {name: [] for name in order}
        for window in range(windows):
            for name in order if window % 2 == 0 else order[::-1]:
                measured[name].append(measure(name, rate, 0))
        for position, name in enumerate(order):
            p = point(name, budget, position, vegeta.AttackResult.pooled(measured[name]), limits)
            for attempt in range(1, 1 + retries):
                if not p["saturated"]:
                    break
                # Saturated, then measured again: the point is the new measurement, and the
                # server stops only if that one is saturated too.
                first = {k: v for k, v in p.items() if k not in ("budget", "server")}
                again = [measure(name, rate, attempt) for _ in range(windows)]
                p = point(name, budget, position, vegeta.AttackResult.pooled(again), limits)
                p["first_attempt"] = first
            if windows > 1:
                log(_line(budget, name, rate, p, 0, windows=windows))
            points.append(p)
            if p["saturated"]:
                active.discard(name)
    return points


def _line(
    budget: Budget, name: str, rate: float, p: dict[str, Any], attempt: int, windows: int = 1
) -> str:
    again = f" (again, {attempt + 1})" if attempt else ""
    again += f", {windows} windows" if windows > 1 else ""
    return (
        f"{budget.name:<8} {name:<8} {rate:>6.0f}/s{again}: achieved {p['achieved_rps']:>7.0f}/s "
        f"p50 {p['p50_ms']:>7.2f} p99 {p['p99_ms']:>8.2f} p99.9 {p['p999_ms']:>8.2f} "
        f"max {p['max_ms']:>8.2f} ms, errors {p['errors']}, server CPU "
        f"{p.get('server_cpu_us_per_review', 0):.0f} µs/review "
        f"({p.get('server_cpu_pct', 0):.0f}%), "
        f"vegeta {p['attacker_cpu_pct']:.0f}%, load {p['loadavg']:.1f}"
        + (f"  SATURATED: {p['saturated']}" if p["saturated"] else "")
    )


# --------------------------------------------------------------------------- tables


def _by_rate(points: Sequence[dict[str, Any]], budget: str) -> dict[float, dict[str, Any]]:
    rows: dict[float, dict[str, Any]] = {}
    for p in points:
        if p["budget"] == budget:
            rows.setdefault(p["rate"], {})[p["server"]] = p
    return dict(sorted(rows.items()))


COLUMNS = (
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("p99.9 ms", "p999_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("achieved req/s", "achieved_rps", "{:.0f}"),
    ("errors", "errors", "{:d}"),
    ("server CPU µs/review", "server_cpu_us_per_review", "{:.0f}"),
)


def _cell(p: dict[str, Any] | None, key: str, fmt: str) -> str:
    if p is None or key not in p:
        return "—"
    text = fmt.format(p[key])
    if key == "p99_ms":  # the point's marks, once per row and server
        text += ("*" if p["saturated"] else "") + ("†" if "first_attempt" in p else "")
    return text


def cpu_ratio(row: dict[str, Any]) -> float | None:
    a = row.get("ours", {}).get("server_cpu_us_per_review")
    b = row.get("upstream", {}).get("server_cpu_us_per_review")
    return a / b if a and b else None


def render_markdown(report: dict[str, Any]) -> str:
    """One table per CPU budget: each cell is `ours / upstream`."""
    m, s = report["machine"], report["settings"]
    windows = s.get("windows", 1)
    measured = (
        f"{windows} windows of {s['duration_s']:g} s measured per point and server, each after a "
        f"{s['warmup_s']:g} s warm-up, pooled; ours and upstream {m['upstream']} taking turns "
        "within each rate (ABBA) and the first alternating from rate to rate"
        if windows > 1
        else f"{s['duration_s']:g} s measured per point after a {s['warmup_s']:g} s warm-up, "
        f"ours and upstream {m['upstream']} interleaved per rate (ABBA)"
    )
    out = [
        f"Open loop (vegeta {s['vegeta']}, HTTPS keep-alive HTTP/1.1), {measured}; "
        f"v1beta1 mix of {s['distinct_reviews']} "
        f"reviews (median {s['body_bytes_median']} B) against a real kube-apiserver "
        f"{m['kubernetes']}. {m['date']}, {m['cpus']} x {m['cpu_model']}, Python {m['python']}, "
        f"load average {m['loadavg_start'][0]:.1f} at start. Each cell is **ours / upstream**. "
        "A * after a p99 marks a saturated point (achieved < 95% of offered, errors > 1% or p99 "
        "> 100 ms: no higher rate for that server; a CPU ratio involving one is starred too), a "
        "† one measured again because its first attempt was saturated (both attempts are in "
        "latest.json); — is a rate that server was not given. Server CPU per review is the "
        "process's utime+stime over the measured window ÷ successful reviews.",
        "",
    ]
    for budget in s["budgets"]:
        title = BUDGETS[budget].title if budget in BUDGETS else budget
        out += [f"**{budget}**: {title}.", ""]
        header = ["offered req/s", *(c[0] for c in COLUMNS), "CPU ours/upstream"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---:|" * len(header))
        for rate, row in _by_rate(report["points"], budget).items():
            cells = [f"{rate:,.0f}"]
            for _, key, fmt in COLUMNS:
                cells.append(
                    f"{_cell(row.get('ours'), key, fmt)} / {_cell(row.get('upstream'), key, fmt)}"
                )
            ratio = cpu_ratio(row)
            saturated = any(p["saturated"] for p in row.values())
            cells.append(f"{ratio:.2f}{'*' if saturated else ''}" if ratio is not None else "—")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    micro = report.get("microbench")
    if micro:
        out.append(
            f"In-process `review()` (no HTTP/TLS, `bench/microbench.py`): median "
            f"{micro['median_us']} µs, p99 {micro['p99_us']} µs wall / {micro['cpu']['p99_us']} µs "
            f"CPU over {micro['calls']:,} calls of the mix."
        )
        out.append("")
    return "\n".join(out)


def render_text(report: dict[str, Any]) -> str:
    """The same as a plain table, one line per server and rate."""
    lines = []
    for budget in report["settings"]["budgets"]:
        title = BUDGETS[budget].title if budget in BUDGETS else budget
        lines.append(f"{budget}: {title}")
        lines.append(
            f"  {'rate':>6} {'server':<8} {'achieved':>8} {'p50':>7} {'p99':>8} {'p99.9':>8} "
            f"{'max':>8} {'errors':>6} {'CPU µs':>7} {'ratio':>6}"
        )
        for rate, row in _by_rate(report["points"], budget).items():
            ratio = cpu_ratio(row)
            for name in SERVERS:
                p = row.get(name)
                if p is None:
                    continue
                mark = " *" if p["saturated"] else ""
                r = f"{ratio:.2f}" if ratio is not None and name == "ours" else ""
                lines.append(
                    f"  {rate:>6.0f} {name:<8} {p['achieved_rps']:>8.0f} {p['p50_ms']:>7.2f} "
                    f"{p['p99_ms']:>8.2f} {p['p999_ms']:>8.2f} {p['max_ms']:>8.1f} "
                    f"{p['errors']:>6} {p.get('server_cpu_us_per_review', 0):>7.0f} {r:>6}{mark}"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the figure


def plot(report: dict[str, Any], path: Path) -> None:
    """p99 (solid) and p50 (dashed) latency against offered rate, log-log, one panel per CPU
    budget; saturated points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    budgets = report["settings"]["budgets"]
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(6.4 * len(budgets), 4.8), sharey=True, squeeze=False
    )
    colors = {"ours": "tab:blue", "upstream": "tab:orange"}
    labels = {"ours": "ours (Python)", "upstream": f"upstream {report['machine']['upstream']} (Go)"}
    for ax, budget in zip(axes[0], budgets, strict=True):
        rows = _by_rate(report["points"], budget)
        for name in SERVERS:
            pts = [row[name] for row in rows.values() if name in row]
            if not pts:
                continue
            x = [p["rate"] for p in pts]
            for key, style, label in (("p99_ms", "-", "p99"), ("p50_ms", "--", "p50")):
                y = [max(p[key], 1e-3) for p in pts]
                ax.plot(x, y, style, color=colors[name], label=f"{labels[name]} {label}")
                for xi, yi, p in zip(x, y, pts, strict=True):
                    ax.plot(
                        xi, yi, "o", color=colors[name], markersize=5,
                        markerfacecolor="white" if p["saturated"] else colors[name],
                    )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({p["rate"] for row in rows.values() for p in row.values()})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_xlabel("offered rate, req/s (open loop)")
        ax.set_title(BUDGETS[budget].title if budget in BUDGETS else budget, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        limit = report["settings"]["limits"]["max_p99_ms"]
        ax.axhline(limit, color="grey", lw=0.8, ls=":")
        ax.annotate(
            f"saturation: p99 > {limit:g} ms", (0.01, limit), xycoords=("axes fraction", "data"),
            fontsize=7, color="grey", va="bottom",
        )  # fmt: skip
    axes[0][0].set_ylabel("latency, ms (log)")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    m = report["machine"]
    fig.suptitle(
        f"AdmissionReview latency vs offered rate: p99 solid, p50 dashed; hollow = saturated\n"
        f"{m['cpus']} x {m['cpu_model']}, {m['date']}, vegeta, HTTPS keep-alive, v1beta1 mix",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
