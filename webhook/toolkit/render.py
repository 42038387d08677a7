"""Shared pieces of the operator tools: findings, input errors and output rendering.

Every check in the toolkit returns `Finding`s instead of printing, so the CLI can render the
same result as a human-readable report or as JSON for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class InputError(ValueError):
    """A file or argument the user gave cannot be used (bad PEM, JSON, JWT, ...).

    The CLI turns it into a one-line usage error (exit 2)."""


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One observation of a check.

    `code` is a stable identifier scripts can match on; `where` points into the checked input
    (e.g. "keys[1]", "discovery.issuer"); `statement` is the index of the IAM policy statement
    for trust-policy findings."""

    severity: Severity
    code: str
    message: str
    where: str | None = None
    statement: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "where": self.where,
            "statement": self.statement,
        }


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in Severity}
    for finding in findings:
        counts[finding.severity.value] += 1
    return counts


def format_finding(finding: Finding) -> str:
    location = ""
    if finding.statement is not None:
        location = f" [statement {finding.statement}]"
    elif finding.where:
        location = f" [{finding.where}]"
    return f"{finding.severity.value.upper():<7} {finding.code}{location}: {finding.message}"


def format_summary(findings: Sequence[Finding]) -> str:
    counts = summarize(findings)
    return f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"


def to_json(value: object) -> str:
    """Stable, readable JSON for stdout (key order preserved: documents mirror what they emit)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def parse_json(text: str | bytes, what: str) -> object:
    """Parse JSON input, turning decoder errors into one clear InputError line."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        return json.loads(text)
    except UnicodeDecodeError as err:
        raise InputError(f"{what} is not UTF-8 text: {err.reason}") from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{what} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None


def utc_time(epoch: float) -> str:
    """A NumericDate as a human UTC timestamp; out-of-range dates are shown as-is."""
    try:
        return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"<out of range: {epoch}>"


def duration(seconds: float) -> str:
    """Compact human duration: 1d2h3m4s; negative durations get a leading minus."""
    sign = "-" if seconds < 0 else ""
    remaining = abs(int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    if remaining or not parts:
        parts.append(f"{remaining}s")
    return sign + "".join(parts)
