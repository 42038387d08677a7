"""What a `replay` run found, per review and in total: the records the summary, `-o wide`,
`-o json` and the `--report` page are rendered from.

Statuses: mutated (a patch), unchanged (allowed without one), denied, not sent (the API server
would not call the webhook for it), error (an input that could not be replayed, or a
differential run that could not ask the other webhook).
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from webhook.toolkit.differences import Verdict

STATUSES = ("mutated", "unchanged", "denied", "not sent", "error")
VERDICTS = ("identical", "documented", "differs", "error")


def pod_yaml(pod: Any, sort_keys: bool = False) -> list[str]:
    dumped = yaml.safe_dump(pod, sort_keys=sort_keys, default_flow_style=False)
    return dumped.splitlines(keepends=True)


def unified(
    before: Any, after: Any, from_label: str, to_label: str, sort_keys: bool = False
) -> str:
    """A unified diff of two pods as YAML; empty when they are equal. `sort_keys` for pods
    from different encoders (Go writes struct order), so only real differences show."""
    a, b = pod_yaml(before, sort_keys), pod_yaml(after, sort_keys)
    diff = "".join(difflib.unified_diff(a, b, from_label, to_label))
    return diff if not diff or diff.endswith("\n") else diff + "\n"


@dataclass(slots=True)
class CaseResult:
    key: str
    label: str  # namespace/pod, as every message names it
    namespace: str
    status: str
    reason: str = ""
    warnings: tuple[str, ...] = ()
    diff: str = ""  # original -> ours
    verdict: Verdict | None = None  # with --against
    their_warnings: tuple[str, ...] = ()  # the --against webhook's admission warnings

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "key": self.key,
            "pod": self.label,
            "namespace": self.namespace,
            "status": self.status,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "diff": self.diff,
        }
        if self.verdict is not None:
            document["against"] = {
                "verdict": self.verdict.kind,
                "documented": [
                    {"name": d.name, "readme": d.readme} for d in self.verdict.documented
                ],
                "detail": self.verdict.detail,
                "warnings": list(self.their_warnings),
            }
        return document


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a report came from, so a page read days later says what it is about."""

    command_line: tuple[str, ...]
    version: str
    time: str  # RFC 3339, UTC
    inputs: tuple[InputFile, ...] = ()  # INPUT files, and `-` for stdin (size/hash unknown)
    objects: tuple[InputFile, ...] = ()  # --objects files
    flags: tuple[tuple[str, str], ...] = ()  # the mutation settings in effect, by flag


@dataclass(slots=True)
class Results:
    cases: list[CaseResult] = field(default_factory=list)
    input_errors: int = 0  # inputs that were not reviews (they have no case)
    against: str | None = None  # the other webhook's URL
    provenance: Provenance | None = None

    def add(self, result: CaseResult) -> CaseResult:
        self.cases.append(result)
        return result

    def counts(self, namespace: str | None = None) -> Counter[str]:
        counts: Counter[str] = Counter({s: 0 for s in STATUSES})
        counts.update(c.status for c in self.cases if namespace in (None, c.namespace))
        if namespace is None:
            counts["error"] += self.input_errors
        return counts

    def verdicts(self) -> Counter[str]:
        counts: Counter[str] = Counter({v: 0 for v in VERDICTS})
        counts.update(c.verdict.kind for c in self.cases if c.verdict is not None)
        return counts

    def namespaces(self) -> list[str]:
        return sorted({c.namespace for c in self.cases})

    @property
    def undocumented(self) -> int:
        return sum(1 for c in self.cases if c.verdict is not None and c.verdict.undocumented)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "summary": dict(self.counts()),
            "namespaces": {ns: dict(self.counts(ns)) for ns in self.namespaces()},
            "cases": [c.to_json() for c in self.cases],
        }
        if self.against is not None:
            document["against"] = {"url": self.against, "verdicts": dict(self.verdicts())}
        return document


def _counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{counts[s]} {s}" + ("(s)" if s == "error" else "") for s in STATUSES)


def summary_lines(results: Results) -> list[str]:
    """The lines every run ends with (on stderr)."""
    total = len(results.cases)
    lines = [f"replay: {total} review(s): {_counts_text(results.counts())}"]
    if results.against is not None:
        verdicts = results.verdicts()
        lines.append(
            f"replay: against {results.against}: {verdicts['identical']} identical, "
            f"{verdicts['documented']} differ as documented, {verdicts['differs']} differ, "
            f"{verdicts['error']} error(s)"
        )
    return lines


def wide_table(results: Results) -> str:
    """`-o wide`: one row per review, then the counts per namespace (kubectl's table style)."""
    rows: list[tuple[str, ...]] = [("NAMESPACE", "POD", "STATUS", "AGAINST", "REASON")]
    for case in results.cases:
        pod = case.label.split("/", 1)[-1]
        verdict = case.verdict.kind if case.verdict is not None else "-"
        reason = case.reason if case.reason and case.reason != case.status else "-"
        rows.append((case.namespace or "-", pod, case.status, verdict, reason))
    totals = [("NAMESPACE", *(s.upper() for s in STATUSES))]
    for namespace in results.namespaces():
        counts = results.counts(namespace)
        totals.append((namespace or "-", *(str(counts[s]) for s in STATUSES)))
    return _table(rows) + "\n" + _table(totals)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
