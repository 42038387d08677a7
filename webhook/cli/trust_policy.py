"""`pod-identity-webhook trust-policy`: generate and lint IAM role trust policies for IRSA."""

from __future__ import annotations

import argparse

from webhook.cli import UsageError
from webhook.cli.common import add_output_flag, output_flag, print_document, read_file
from webhook.toolkit import trust_policy
from webhook.toolkit.render import (
    Finding,
    InputError,
    format_finding,
    format_summary,
    has_errors,
    parse_json,
    summarize,
)

HELP = "generate least-privilege IRSA trust policies and lint existing ones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    generate = sub.add_parser(
        "generate",
        help="trust policy for one service account (exact sub and aud)",
    )
    generate.add_argument(
        "--issuer",
        required=True,
        metavar="URL",
        help="the cluster's service account issuer (token iss)",
    )
    generate.add_argument(
        "--account-id",
        required=True,
        metavar="ID",
        help="12-digit account of the role and OIDC provider",
    )
    generate.add_argument("-n", "--namespace", required=True, metavar="NS")
    generate.add_argument("--service-account", required=True, metavar="SA")
    generate.add_argument("--partition", default="aws", help="aws (default), aws-cn, aws-us-gov")
    generate.add_argument(
        "--audience",
        default=trust_policy.DEFAULT_AUDIENCE,
        help=f"token audience (default {trust_policy.DEFAULT_AUDIENCE})",
    )
    add_output_flag(generate, ("json", "yaml"), help_text="the policy as json (default) or yaml")

    lint = sub.add_parser(
        "lint",
        help="check trust policies (IAM JSON, Terraform jsonencode/plan/state JSON)",
    )
    lint.add_argument("files", nargs="+", metavar="FILE")
    lint.add_argument(
        "--audience",
        default=trust_policy.DEFAULT_AUDIENCE,
        help=f"audience the webhook requests (default {trust_policy.DEFAULT_AUDIENCE})",
    )
    lint.add_argument(
        "--account-id",
        metavar="ID",
        help="the role's account, to tell cross-account principals "
        "(default: the OIDC provider's account)",
    )
    output_flag(lint)


def _generate(args: argparse.Namespace) -> int:
    try:
        policy = trust_policy.generate_trust_policy(
            issuer=args.issuer,
            account_id=args.account_id,
            namespace=args.namespace,
            service_account=args.service_account,
            partition=args.partition,
            audience=args.audience,
        )
    except InputError as err:
        raise UsageError(str(err)) from None
    print_document(policy, args.output)
    return 0


def _lint(args: argparse.Namespace) -> int:
    if args.account_id is not None and not (
        len(args.account_id) == 12 and args.account_id.isdigit()
    ):
        raise UsageError(f"account id {args.account_id!r} must be exactly 12 digits")
    results: list[tuple[str, str, list[Finding]]] = []
    for path in args.files:
        try:
            document = parse_json(read_file(path, "policy file"), path)
        except InputError as err:
            raise UsageError(str(err)) from None
        found = trust_policy.find_policies(document)
        if not found:
            raise UsageError(f"{path}: no IAM policy (a JSON object with a Statement) found")
        for policy in found:
            findings = trust_policy.lint_policy(
                policy.policy, audience=args.audience, account_id=args.account_id
            )
            results.append((path, policy.location, findings))
    everything = [f for _, _, findings in results for f in findings]
    failed = has_errors(everything)
    if args.output != "text":
        print_document(
            {
                "ok": not failed,
                "findings": [
                    {"file": path, "location": location, **f.to_dict()}
                    for path, location, findings in results
                    for f in findings
                ],
                "summary": summarize(everything),
            },
            args.output,
        )
        return 1 if failed else 0
    for path, location, findings in results:
        title = path if location == "$" else f"{path} ({location})"
        if not findings:
            print(f"{title}: ok")
            continue
        print(f"{title}:")
        for finding in findings:
            print(f"  {format_finding(finding)}")
    print(format_summary(everything))
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    return _generate(args) if args.subcommand == "generate" else _lint(args)
