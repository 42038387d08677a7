"""Where `review()` spends its time: pyinstrument over the review mix, in-process.

    .venv/bin/python bench/profile.py [--calls 50000] [--kind annotated] [--html]

Prints the call tree (functions under 1% folded away) and, with --html, writes
bench/results/profile.html. A statistical profiler samples every millisecond, so it adds
little to the calls it watches; use microbench.py for the figures themselves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinstrument import Profiler

from bench import mix
from bench.microbench import make_store
from webhook.core.settings import MutationSettings
from webhook.review import review

RESULTS = Path(__file__).resolve().parent / "results"


def profile(calls: int, kind: str | None, api_version: str) -> Profiler:
    settings = MutationSettings(aws_default_region=mix.REGION)
    store = make_store(settings)
    reviews = [r for r in mix.generate(200, api_version) if kind is None or r.kind == kind]
    if not reviews:
        raise SystemExit(f"no reviews of kind {kind!r} in the mix ({', '.join(mix.KINDS)})")
    bodies = [r.body for r in reviews]
    for body in bodies * 5:  # warm the caches a server would have warm
        review(body, store, settings)
    profiler = Profiler(interval=0.0005)
    with profiler:
        for i in range(calls):
            review(bodies[i % len(bodies)], store, settings)
    return profiler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--kind", choices=mix.KINDS, help="only this kind of review")
    parser.add_argument("--api-version", choices=sorted(mix.API_VERSIONS), default="v1")
    parser.add_argument("--html", action="store_true", help="also write results/profile.html")
    args = parser.parse_args(argv)
    profiler = profile(args.calls, args.kind, mix.API_VERSIONS[args.api_version])
    print(profiler.output_text(unicode=True, show_all=False, time="percent_of_total"))
    if args.html:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "profile.html"
        out.write_text(profiler.output_html())
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
