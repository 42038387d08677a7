"""vegeta (github.com/tsenart/vegeta, built and cached by e2e/tools/build.sh) as a typed
open-loop load generator: a constant request rate whatever the server's latency, over HTTPS
keep-alive HTTP/1.1, each request's result decoded here (so percentiles such as p99.9 are our
own nearest-rank ones, over every successful request).

    from bench import vegeta
    result = vegeta.attack(url, ca, bodies, rate=1000, duration=5, workdir=tmp, cpus="0")
    result.p(99), result.ok, result.errors, result.achieved_rps

Run as a script for a one-off attack against any webhook:

    python bench/vegeta.py --url https://127.0.0.1:8443/mutate --ca certs/out/ca.crt \\
        --rate 1000 --duration 5 [--api-version v1] [--cpus 0]
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import percentile
from e2e.controlplane import BUILD_SCRIPT, EXIT_TOOLS_UNAVAILABLE, ToolsUnavailable

__all__ = [
    "AttackResult",
    "ToolsUnavailable",
    "VegetaError",
    "attack",
    "percentile",
    "vegeta_binary",
]

BINARY = "vegeta"
MAX_ERROR_SAMPLES = 5
# Above this many workers (each one a request in flight) vegeta stops adding more: a stalled
# server then has at most this many requests outstanding rather than rate x timeout.
DEFAULT_MAX_WORKERS = 2000
# At most this many connections (-max-connections); a request finding them all busy waits for
# one, and the wait is part of its latency. Without a cap, vegeta opens a new TLS connection
# whenever no idle one is at hand: at 800/s against ours that was ~650 handshakes in the
# first second, latency climbing to 500 ms before the pool settled (and then ~20 in use).
DEFAULT_MAX_CONNECTIONS = 100


class VegetaError(RuntimeError):
    """vegeta failed to run (not: requests failed; those are counted in AttackResult.errors)."""


@functools.cache
def vegeta_binary() -> Path:
    """The vegeta executable: $PIW_VEGETA, else $PIW_E2E_TOOLS_DIR/vegeta, else the directory
    e2e/tools/build.sh prints (building vegeta, and whatever else is missing, on first use),
    else vegeta on PATH. Raises ToolsUnavailable when none of them has it (no Go)."""
    env = os.environ.get("PIW_VEGETA")
    if env:
        if not os.access(env, os.X_OK):
            raise VegetaError(f"PIW_VEGETA={env} is not an executable file")
        return Path(env)
    tools = os.environ.get("PIW_E2E_TOOLS_DIR")
    if tools and os.access(Path(tools) / BINARY, os.X_OK):
        return Path(tools) / BINARY
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )  # stderr streams through: a first build shows its progress
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and os.access(Path(lines[-1]) / BINARY, os.X_OK):
        return Path(lines[-1]) / BINARY
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    if proc.returncode not in (0, EXIT_TOOLS_UNAVAILABLE):
        raise VegetaError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
    raise ToolsUnavailable(
        f"no vegeta: {BUILD_SCRIPT} builds it with Go (exit {proc.returncode} here); "
        "or set PIW_VEGETA"
    )


@dataclass(frozen=True)
class AttackResult:
    rate: float  # offered requests per second
    duration_s: float  # asked attack duration
    latencies_ms: list[float]  # sorted, successful requests only
    sent: int  # requests vegeta issued (every result it reported)
    ok: int
    errors: int  # non-200, transport errors, or a body without response.allowed
    error_samples: list[str]  # up to 5 distinct messages
    achieved_rps: float  # ok / (ended - started)
    started: float  # time.time() at which the first request was sent
    ended: float  # time.time() at which the last response was complete
    codes: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (0: no answer)
    server_cpu_s: float | None = None  # the server's CPU seconds in the window, if probed
    attacker_cpu_s: float = 0.0  # vegeta's own CPU seconds, warm-up included
    warmup_s: float = 0.0  # attacked before the measured window, left out of everything else
    windows: int = 1  # measured windows pooled into this result (`pooled`)
    measured_s: float | None = None  # their summed length; None: ended - started

    @property
    def window_s(self) -> float:
        """Seconds measured: from first request to last answer, summed over pooled windows."""
        return self.measured_s if self.measured_s is not None else self.ended - self.started

    @staticmethod
    def pooled(results: Sequence[AttackResult]) -> AttackResult:
        """Several windows at the same rate against the same server as one point: every
        request's latency in one distribution, counts and CPU summed, rates over the summed
        measured time. Windows interleaved with another server's (ABBA) share the machine's
        drift between both, which one window cannot."""
        if not results:
            raise ValueError("nothing to pool")
        if len(results) == 1:
            return results[0]
        if len({r.rate for r in results}) != 1:
            raise ValueError("windows at different rates")
        ok = sum(r.ok for r in results)
        measured = sum(r.window_s for r in results)
        cpu = [r.server_cpu_s for r in results]
        samples: list[str] = []
        for r in results:
            samples += [m for m in r.error_samples if m not in samples]
        codes: dict[int, int] = {}
        for r in results:
            for code, count in r.codes.items():
                codes[code] = codes.get(code, 0) + count
        return AttackResult(
            rate=results[0].rate,
            duration_s=sum(r.duration_s for r in results),
            latencies_ms=sorted(x for r in results for x in r.latencies_ms),
            sent=sum(r.sent for r in results),
            ok=ok,
            errors=sum(r.errors for r in results),
            error_samples=samples[:5],
            achieved_rps=ok / measured if measured > 0 else 0.0,
            started=min(r.started for r in results),
            ended=max(r.ended for r in results),
            codes=codes,
            server_cpu_s=None if any(c is None for c in cpu) else sum(c or 0.0 for c in cpu),
            attacker_cpu_s=sum(r.attacker_cpu_s for r in results),
            warmup_s=sum(r.warmup_s for r in results),
            windows=sum(r.windows for r in results),
            measured_s=measured,
        )

    @property
    def server_cpu_us_per_review(self) -> float | None:
        """Server CPU µs per successful review (the probe's window ÷ ok)."""
        if self.server_cpu_s is None or not self.ok:
            return None
        return 1e6 * self.server_cpu_s / self.ok

    def p(self, q: float) -> float:
        """Nearest-rank percentile of the successful requests' latency, in ms (q in 0..100)."""
        return percentile(self.latencies_ms, q)

    @property
    def max_ms(self) -> float:
        return self.latencies_ms[-1] if self.latencies_ms else 0.0

    def summary(self) -> dict[str, Any]:
        """The usual figures, rounded, for reports and JSON."""
        out: dict[str, Any] = {
            "rate": self.rate,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(self.p(50), 3),
            "p90_ms": round(self.p(90), 3),
            "p99_ms": round(self.p(99), 3),
            "p999_ms": round(self.p(99.9), 3),
            "max_ms": round(self.max_ms, 3),
        }
        cpu = self.server_cpu_us_per_review
        if cpu is not None and self.server_cpu_s is not None:
            out["server_cpu_us_per_review"] = round(cpu, 1)
            window = self.window_s
            out["server_cpu_pct"] = round(100 * self.server_cpu_s / window, 1) if window else 0.0
        out["attacker_cpu_pct"] = round(
            100 * self.attacker_cpu_s / max(self.warmup_s + self.duration_s, 1e-9), 1
        )
        if self.windows > 1:
            out["windows"] = self.windows
        if self.error_samples:
            out["error_samples"] = self.error_samples
        return out


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (vegeta, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rate_flag(rate: float) -> str:
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    if float(rate).is_integer():
        return f"{int(rate)}/1s"
    return f"{round(rate * 1000)}/1000s"


def write_targets(path: Path, url: str, bodies: Sequence[bytes]) -> Path:
    """vegeta's JSON targets format: one POST per line, body base64; vegeta cycles them."""
    header = {"Content-Type": ["application/json"]}
    with path.open("wb") as out:
        for body in bodies:
            target = {"method": "POST", "url": url, "body": base64.b64encode(body).decode(),
                      "header": header}  # fmt: skip
            out.write(orjson.dumps(target) + b"\n")
    return path


def _problem(code: int, error: str, body: bytes, check_body: bool) -> str | None:
    """None for a 200 carrying an AdmissionReview response, else what was wrong."""
    if error or code != 200:
        return error or f"HTTP {code}"
    if not check_body:
        return None
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        return f"unparsable body: {err}"
    response = review.get("response") if isinstance(review, dict) else None
    if not isinstance(response, dict) or not isinstance(response.get("allowed"), bool):
        return f"no response.allowed in {body[:120]!r}"
    return None


def decode(
    rows: Iterable[Sequence[str]],
    rate: float,
    duration: float,
    check_bodies: bool,
    *,
    since_ns: int = 0,
    server_cpu_s: float | None = None,
) -> AttackResult:
    """An AttackResult from `vegeta encode -to csv` rows (timestamp ns, code, latency ns,
    bytes out, bytes in, error, base64 body, attack, seq, method, url, base64 headers), leaving
    out requests sent before `since_ns` (the warm-up)."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    samples: list[str] = []
    sent = errors = 0
    first = last = 0
    for row in rows:
        start, code, latency = int(row[0]), int(row[1]), int(row[2])
        if start < since_ns:
            continue
        sent += 1
        codes[code] = codes.get(code, 0) + 1
        if sent == 1 or start < first:
            first = start
        last = max(last, start + latency)
        problem = _problem(
            code, row[5], base64.b64decode(row[6]) if check_bodies else b"", check_bodies
        )
        if problem is None:
            latencies.append(latency / 1e6)
        else:
            errors += 1
            if len(samples) < MAX_ERROR_SAMPLES and problem not in samples:
                samples.append(problem)
    latencies.sort()
    window = (last - first) / 1e9
    return AttackResult(
        rate=rate,
        duration_s=duration,
        latencies_ms=latencies,
        sent=sent,
        ok=len(latencies),
        errors=errors,
        error_samples=samples,
        achieved_rps=len(latencies) / window if window > 0 else 0.0,
        started=first / 1e9,
        ended=last / 1e9,
        codes=codes,
        server_cpu_s=server_cpu_s,
    )


def attack(
    url: str,
    ca: Path,
    bodies: Sequence[bytes],
    rate: float,
    duration: float,
    *,
    workdir: Path,
    cpus: str | None = None,
    check_bodies: bool = True,
    timeout_s: float = 10.0,
    warmup_s: float = 0.0,
    server_cpu: Callable[[], float] | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    name: str = "attack",
) -> AttackResult:
    """POST `bodies` (cycled, application/json) to `url` at `rate` per second for `duration`
    seconds, over HTTPS trusting `ca`, keep-alive HTTP/1.1. `cpus` runs vegeta under
    `taskset -c CPUS`. Every request vegeta sent is in the result, however late its answer (up
    to `timeout_s`, after which it counts as an error).

    `warmup_s`: attack that much longer first, on the same connections, and leave those
    requests out. `server_cpu`: a probe of the server's CPU seconds (bench.stats.process_cpu),
    read when the measured window starts and once vegeta has exited; the difference is
    `server_cpu_s`. The raw results stay in `workdir` (NAME.targets, NAME.bin, NAME.err)."""
    if not bodies:
        raise ValueError("no bodies to send")
    workdir.mkdir(parents=True, exist_ok=True)
    targets = write_targets(workdir / f"{name}.targets", url, bodies)
    output, stderr_path = workdir / f"{name}.bin", workdir / f"{name}.err"
    binary = str(vegeta_binary())
    argv = [
        binary, "attack", f"-targets={targets}", "-format=json", f"-rate={_rate_flag(rate)}",
        f"-duration={warmup_s + duration:.3f}s", f"-timeout={timeout_s}s", f"-root-certs={ca}",
        "-http2=false", "-keepalive=true", f"-max-workers={max_workers}",
        f"-max-connections={max_connections}", f"-output={output}",
    ]  # fmt: skip
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    limit = warmup_s + duration + timeout_s + 60
    since_ns = 0
    cpu_start = None
    children = _children_cpu()
    with stderr_path.open("wb") as err, subprocess.Popen(argv, stdout=err, stderr=err) as proc:
        try:
            if warmup_s > 0 or server_cpu is not None:
                try:
                    proc.wait(warmup_s)  # returns early only if vegeta failed
                except subprocess.TimeoutExpired:
                    pass
                # The measured window: requests sent from here on, server CPU from here on.
                since_ns = time.time_ns()
                cpu_start = server_cpu() if server_cpu is not None else None
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise VegetaError(f"vegeta attack ran over {limit:.0f}s: {argv}") from None
        cpu_s = (
            server_cpu() - cpu_start if server_cpu is not None and cpu_start is not None else None
        )
    attacker_cpu_s = _children_cpu() - children
    if proc.returncode != 0:
        message = stderr_path.read_text(errors="replace").strip()[-2000:]
        raise VegetaError(f"vegeta attack exited {proc.returncode}: {message}")
    with (
        stderr_path.open("wb") as err,
        subprocess.Popen(
            [binary, "encode", "-to=csv", str(output)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as enc,
    ):
        assert enc.stdout is not None
        result = decode(
            csv.reader(enc.stdout),
            rate,
            duration,
            check_bodies,
            since_ns=since_ns,
            server_cpu_s=cpu_s,
        )
    result = dataclasses.replace(result, attacker_cpu_s=attacker_cpu_s, warmup_s=warmup_s)
    if enc.returncode != 0:
        message = stderr_path.read_text(errors="replace").strip()[-2000:]
        raise VegetaError(f"vegeta encode exited {enc.returncode}: {message}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from bench import mix

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--api-version", choices=sorted(mix.API_VERSIONS), default="v1beta1")
    parser.add_argument("--cpus", help="run vegeta under taskset -c CPUS")
    args = parser.parse_args(argv)
    bodies = mix.bodies(mix.generate(200, mix.API_VERSIONS[args.api_version]))
    with tempfile.TemporaryDirectory(prefix="piw-vegeta-") as tmp:
        result = attack(
            args.url, args.ca, bodies, args.rate, args.duration, workdir=Path(tmp), cpus=args.cpus
        )
    print(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
