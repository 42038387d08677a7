"""`replay`'s results: the per-review records, `--against` verdicts, the end-of-run summary,
`-o wide`, `-o json` and `--report FILE.html` (rendering lives in webhook.toolkit)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from webhook import __version__
from webhook.cli import UsageError
from webhook.core.settings import MutationSettings
from webhook.review import IdentityLookup, Outcome
from webhook.toolkit.against import VERSIONS, AgainstError, OtherWebhook, compare
from webhook.toolkit.differences import Pod
from webhook.toolkit.replay_html import render_report
from webhook.toolkit.replay_report import (
    CaseResult,
    InputFile,
    Provenance,
    Results,
    summary_lines,
    unified,
    wide_table,
)
from webhook.toolkit.structdiff import structural_diff

# -o values rendered here at the end of the run, instead of one line per review.
TABLE_OUTPUTS = ("wide", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--against",
        metavar="URL",
        help="also send each review to the webhook at URL (https://host:port/mutate) and "
        "classify each difference: identical, differs as documented (named), or differs; "
        "exit 1 on an undocumented difference",
    )
    parser.add_argument(
        "--against-ca", metavar="FILE", help="CA bundle (PEM) the --against webhook's cert is from"
    )
    parser.add_argument(
        "--against-server-name",
        metavar="NAME",
        help="verify the --against certificate for NAME (and send it as SNI) instead of the "
        "URL's host: the Service name the API server uses, through a port-forward",
    )
    parser.add_argument(
        "--against-version",
        choices=VERSIONS,
        default="auto",
        help="AdmissionReview version sent to --against: as captured, falling back to v1beta1 "
        "for webhooks that answer v1 without apiVersion/kind (auto, the default), or always one",
    )
    parser.add_argument(
        "--against-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="per-review timeout for --against (default 10, the API server's)",
    )
    parser.add_argument(
        "--report",
        metavar="FILE.html",
        help="write one static HTML page (no external assets) with every review's diff, "
        "warnings and --against verdict",
    )


def _status(outcome: Outcome) -> str:
    if not outcome.allowed:
        return "denied"
    return "mutated" if outcome.mutated else "unchanged"


class Recorder:
    """Collects one CaseResult per review and, with --against, the other webhook's verdict."""

    def __init__(
        self, args: argparse.Namespace, store: IdentityLookup, settings: MutationSettings
    ) -> None:
        self.store = store
        self.settings = settings
        self.results = Results()
        self.report = Path(args.report) if args.report else None
        self.args = args
        self.other: OtherWebhook | None = None
        for flag in ("against_ca", "against_server_name"):
            if getattr(args, flag) and not args.against:
                raise UsageError(f"--{flag.replace('_', '-')} needs --against URL")
        if args.against:
            try:
                self.other = OtherWebhook(
                    args.against,
                    args.against_ca,
                    args.against_timeout,
                    args.against_version,
                    note=lambda message: print(f"replay: note: {message}", file=sys.stderr),
                    server_name=args.against_server_name,
                )
            except AgainstError as err:
                raise UsageError(str(err)) from None
            self.results.against = args.against

    def record(
        self, key: str, label: str, body: bytes, outcome: Outcome, before: Any, after: Any
    ) -> CaseResult:
        response: dict[str, Any] = orjson.loads(outcome.body)
        inner = response.get("response") or {}
        result = self.results.add(
            CaseResult(
                key=key,
                label=label,
                namespace=outcome.namespace or namespace_of(body),
                status=_status(outcome),
                reason=outcome.reason,
                warnings=tuple(inner.get("warnings") or ()),
                diff=unified(before, after, f"{label} (original)", f"{label} (mutated)"),
            )
        )
        if self.other is not None:
            result.verdict, theirs = compare(
                body, response, self.other, self.store, self.settings, self._diff(label)
            )
            if theirs is not None:
                warnings = (theirs.get("response") or {}).get("warnings") or ()
                result.their_warnings = tuple(w for w in warnings if isinstance(w, str))
            _print_verdict(label, result)
        return result

    def not_sent(self, key: str, label: str, namespace: str, reason: str) -> CaseResult:
        """A review the API server would not send to the webhook (selectors, rules)."""
        return self.results.add(CaseResult(key, label, namespace, "not sent", reason))

    @staticmethod
    def _diff(label: str) -> Any:
        def diff(ours: Pod, theirs: Pod) -> str:
            return structural_diff(theirs, ours, f"{label} (--against)", f"{label} (ours)")

        return diff

    def finish(self, output: str, input_errors: int) -> int:
        """Print what the run found; 1 when --against saw an undocumented difference."""
        self.results.input_errors = input_errors
        if output == "wide":
            sys.stdout.write(wide_table(self.results))
        elif output == "json":
            sys.stdout.write(
                orjson.dumps(self.results.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
        for line in summary_lines(self.results):
            print(line, file=sys.stderr)
        if self.report is not None:
            self.results.provenance = provenance(self.args)
            try:
                self.report.write_text(render_report(self.results), encoding="utf-8")
            except OSError as err:
                raise UsageError(f"--report {self.report}: {err.strerror or err}") from None
            print(f"replay: report written to {self.report}", file=sys.stderr)
        return 1 if self.results.undocumented else 0


# The flags that decide an answer, named as on the command line, in the report's provenance.
_PROVENANCE_FLAGS = (
    "annotation_prefix",
    "token_audience",
    "token_mount_path",
    "token_expiration",
    "aws_default_region",
    "sts_regional_endpoint",
    "compose_role_arn",
    "aws_account_id",
    "aws_partition",
    "watch_config_map",
    "webhook_namespace",
    "watch_container_credentials_config",
    "webhook_config",
    "manifest_namespace",
    "scope_namespaces",
    "against",
    "against_version",
)


def _file(name: str) -> InputFile:
    path = Path(name)
    if name == "-" or not path.is_file():
        return InputFile(name if name != "-" else "- (stdin)", 0, "")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return InputFile(name, path.stat().st_size, digest.hexdigest())


def provenance(args: argparse.Namespace, now: datetime | None = None) -> Provenance:
    """What the report is about: the command, its inputs (hashed), the flags, our version."""
    moment = now or datetime.now(UTC)
    flags = []
    for name in _PROVENANCE_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        flag = "--namespace" if name == "scope_namespaces" else f"--{name.replace('_', '-')}"
        if value not in (None, ""):
            flags.append((flag, str(value).lower() if isinstance(value, bool) else str(value)))
    return Provenance(
        command_line=tuple(getattr(args, "command_line", ()) or ("pod-identity-webhook", "replay")),
        version=__version__,
        time=moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        inputs=tuple(_file(name) for name in args.inputs),
        objects=tuple(_file(name) for name in args.objects or ()),
        flags=tuple(flags),
    )


def namespace_of(body: bytes) -> str:
    try:
        request = orjson.loads(body).get("request") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return str(request.get("namespace") or "")


def _print_verdict(label: str, result: CaseResult) -> None:
    verdict = result.verdict
    assert verdict is not None
    if verdict.kind == "identical":
        print(f"IDENTICAL {label}", file=sys.stderr)
    elif verdict.kind == "documented":
        print(f"DOCUMENTED {label}: {verdict.describe()}", file=sys.stderr)
    elif verdict.kind == "differs":
        print(f"DIFFERS {label}:\n{verdict.detail}", file=sys.stderr, end="")
    else:
        print(f"ERROR {label}: --against: {verdict.detail}", file=sys.stderr)
