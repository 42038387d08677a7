"""Helpers every toolkit command shares: the --output flag, reading input files, findings."""

from __future__ import annotations

import argparse
import sys

from webhook.cli import UsageError
from webhook.toolkit.render import Finding, format_finding, format_summary


def output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default), json for scripts",
    )


def read_file(path: str, what: str) -> bytes:
    """File contents (`-` is stdin); UsageError naming the file on failure."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror or err}") from None


def render_findings(findings: list[Finding], ok_message: str) -> None:
    for finding in findings:
        print(format_finding(finding))
    if not any(f.severity.value != "info" for f in findings):
        print(ok_message)
    print(format_summary(findings))
