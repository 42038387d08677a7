"""Lines the node suites print at the end of the run (pytest's terminal summary), so the
walkthrough's ARN, the AccessDenied message and the rollout figure are visible without -s."""

from __future__ import annotations

__all__ = ["add", "lines"]

_LINES: list[str] = []


def add(line: str) -> None:
    print(f"\n{line}")  # also shown at once with -s
    _LINES.append(line)


def lines() -> list[str]:
    return list(_LINES)
