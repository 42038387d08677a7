"""`pod-identity-webhook audit`: roles of ServiceAccounts, and running pods that lack theirs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from webhook.cli import UsageError, flags
from webhook.cli.common import add_output_flag, print_document, read_file, render_findings
from webhook.core.settings import MutationSettings
from webhook.toolkit import audit_cluster
from webhook.toolkit.audit import AuditReport, RestartPlan, render_csv, render_table
from webhook.toolkit.audit_cluster import Cluster, ClusterError, RestartResult
from webhook.toolkit.render import format_finding, format_summary

HELP = "inventory of ServiceAccount roles; find (and restart) pods running without theirs"


def normalize_argv(argv: Sequence[str]) -> list[str]:
    return flags.normalize_argv(argv)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group(
        "cluster (as kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else in-cluster)"
    )
    cluster.add_argument("--kubeconfig", default="", help="Path to a kubeconfig file")
    cluster.add_argument("--context", default="", help="The kubeconfig context to use")
    cluster.add_argument(
        "--kube-api", default="", help="The URL of the API server (overrides the kubeconfig's)"
    )
    scope = cluster.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        dest="audit_namespaces",
        metavar="NS",
        help="audit only this namespace (repeatable)",
    )
    # The flag's old name, kept so existing scripts keep their scope.
    scope.add_argument(
        "--audit-namespace",
        action="append",
        dest="audit_namespaces",
        metavar="NS",
        help=argparse.SUPPRESS,
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="audit every namespace (the default without -n)",
    )
    cluster.add_argument(
        "--request-timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="timeout of each API request (default 30)",
    )
    flags.add_mutation_flags(parser, config_map_namespace_flag="--webhook-namespace", objects=False)
    report = parser.add_argument_group("report and restart")
    add_output_flag(
        report,
        ("table", "wide", "json", "yaml", "csv"),
        help_text="table for people (default), wide with ARNs, audiences, pods and what they "
        "lack, json or yaml for scripts, csv (inventory) for spreadsheets",
    )
    report.add_argument(
        "--restart",
        action="store_true",
        help="roll the Deployments, StatefulSets and DaemonSets of pods without their role "
        "(as `kubectl rollout restart`); asks for confirmation",
    )
    report.add_argument(
        "-y", "--yes", action="store_true", help="restart without asking (needed without a TTY)"
    )


def _container_credentials(path: str) -> frozenset[tuple[str, str]] | None:
    if not path:
        return None
    from webhook.sources.container_credentials import ContainerCredentialsError, parse_identities

    try:
        return parse_identities(read_file(path, "container credentials file"))
    except ContainerCredentialsError as err:
        raise UsageError(f"--watch-container-credentials-config {path}: {err}") from None


def _confirm(count: int) -> bool:
    sys.stderr.write(f"Restart {count} workloads? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _restart(
    cluster: Cluster, plan: RestartPlan, args: argparse.Namespace, out: TextIO
) -> list[RestartResult]:
    for owner, remedy in plan.manual:
        print(f"cannot restart {owner.namespace}/{owner.label}: {remedy}", file=out)
    if not plan.restart:
        print("nothing to restart", file=out)
        return []
    if not args.yes:
        for owner in plan.restart:
            print(f"  {owner.namespace}/{owner.label}", file=sys.stderr)
        if not _confirm(len(plan.restart)):
            print("not restarted", file=out)
            return []
    moment = datetime.now().astimezone()
    results = []
    for owner in plan.restart:
        result = audit_cluster.restart(cluster, owner, moment)
        results.append(result)
        detail = f": {result.message}" if result.message else ""
        print(f"{owner.namespace}/{owner.label} {result.status}{detail}", file=out)
    return results


def _print_table(report: AuditReport, wide: bool) -> None:
    print(render_table(report, wide=wide))
    print()
    render_findings(list(report.findings), "no problems found")


def _scope(args: argparse.Namespace) -> list[str]:
    return [] if args.all_namespaces else list(dict.fromkeys(args.audit_namespaces))


def run(args: argparse.Namespace) -> int:
    if args.restart and not args.yes and not sys.stdin.isatty():
        raise UsageError("--restart asks for confirmation on a terminal; pass --yes to skip it")
    settings = flags.settings_from_args(args)
    container_credentials = _container_credentials(args.watch_container_credentials_config)
    try:
        cluster = audit_cluster.connect(
            args.kubeconfig, args.kube_api, args.request_timeout, context=args.context
        )
    except ClusterError as err:
        raise UsageError(str(err)) from None
    with cluster:
        return _audit(cluster, args, settings, container_credentials)


def _audit(
    cluster: Cluster,
    args: argparse.Namespace,
    settings: MutationSettings,
    container_credentials: frozenset[tuple[str, str]] | None,
) -> int:
    try:
        report = audit_cluster.run_audit(
            cluster,
            settings,
            namespaces=_scope(args),
            config_map_namespace=args.webhook_namespace if args.watch_config_map else None,
            container_credentials=container_credentials,
        )
    except ClusterError as err:
        raise UsageError(str(err)) from None

    tables = ("table", "wide")
    if args.output in tables:
        _print_table(report, wide=args.output == "wide")
    elif args.output == "csv":
        sys.stdout.write(render_csv(report))
        for finding in report.findings:
            print(format_finding(finding), file=sys.stderr)
        print(format_summary(report.findings), file=sys.stderr)

    results: list[RestartResult] | None = None
    if args.restart:
        if args.output in tables:
            print()
        out = sys.stdout if args.output in tables else sys.stderr
        results = _restart(cluster, report.restart_plan(), args, out)

    if args.output in ("json", "yaml"):
        document = report.to_dict()
        document["restarts"] = None if results is None else [r.to_dict() for r in results]
        print_document(document, args.output)
    failed_restart = any(not r.ok for r in results or ())
    return 1 if report.failed or failed_restart else 0
