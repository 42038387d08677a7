"""Helpers every toolkit command shares: the -o/--output flag, reading input files, findings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from webhook.cli import UsageError
from webhook.toolkit.render import Finding, format_finding, format_summary, to_json


def add_output_flag(
    parser: argparse._ActionsContainer,
    choices: Sequence[str] = ("text", "json", "yaml"),
    default: str | None = None,
    help_text: str | None = None,
) -> None:
    """`-o/--output FORMAT`, both spellings, as kubectl and helm write it."""
    default = default or choices[0]
    parser.add_argument(
        "-o",
        "--output",
        choices=tuple(choices),
        default=default,
        metavar="|".join(choices),
        help=help_text or f"output format (default {default})",
    )


def output_flag(parser: argparse._ActionsContainer) -> None:
    add_output_flag(
        parser,
        ("text", "json", "yaml"),
        help_text="text for people (default), json or yaml for scripts",
    )


def print_document(document: object, fmt: str) -> None:
    """A report as JSON or YAML on stdout (same keys either way)."""
    if fmt == "yaml":
        print(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), end="")
    else:
        print(to_json(document))


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
