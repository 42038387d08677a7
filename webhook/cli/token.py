"""`pod-identity-webhook token`: decode a projected token, or verify it the way STS does."""

from __future__ import annotations

import argparse
import time

from webhook.cli import UsageError
from webhook.cli.common import output_flag, print_document, read_file
from webhook.toolkit import oidc
from webhook.toolkit import token as tokens
from webhook.toolkit.jwks import parse_jwks
from webhook.toolkit.render import InputError, duration, parse_json, to_json, utc_time
from webhook.toolkit.trust_policy import DEFAULT_AUDIENCE, WEB_IDENTITY_ACTION, find_policies

HELP = "decode a projected ServiceAccount token, or verify it and predict STS's answer"


def _now_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--now",
        type=int,
        metavar="EPOCH",
        help="evaluate times at this Unix time instead of the current time",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    inspect = sub.add_parser("inspect", help="decode a token WITHOUT verifying it")
    inspect.add_argument("token", metavar="FILE", help="token file, or - for stdin")
    _now_flag(inspect)
    output_flag(inspect)

    verify = sub.add_parser(
        "verify",
        help="verify signature and claims; with a trust policy, say what STS answers",
    )
    verify.add_argument("token", metavar="TOKEN_FILE", help="token file, or - for stdin")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--jwks", metavar="FILE", help="the issuer's JWKS (keys.json)")
    source.add_argument(
        "--issuer-url",
        metavar="URL",
        help="fetch discovery and JWKS from the issuer over HTTPS; also the expected iss",
    )
    verify.add_argument(
        "--audience",
        default=DEFAULT_AUDIENCE,
        help=f"expected audience and OIDC provider client ID (default {DEFAULT_AUDIENCE})",
    )
    verify.add_argument(
        "--role-trust-policy",
        metavar="FILE",
        help="the role's trust policy (IAM or Terraform JSON)",
    )
    verify.add_argument(
        "--provider-arn",
        metavar="ARN",
        help="the IAM OIDC provider registered in the role's account "
        "(default: the one the trust policy names)",
    )
    verify.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="HTTPS timeout for --issuer-url (default 10)",
    )
    _now_flag(verify)
    output_flag(verify)


def _read_token(path: str) -> str:
    return read_file(path, "token").decode("utf-8", "replace")


def _now(args: argparse.Namespace) -> int:
    return int(time.time()) if args.now is None else int(args.now)


def _line(label: str, value: object) -> str:
    return f"  {label:<17}{value}"


def _inspect(args: argparse.Namespace) -> int:
    try:
        report = tokens.inspect_token(_read_token(args.token), now=_now(args))
    except InputError as err:
        raise UsageError(str(err)) from None
    if args.output != "text":
        print_document(report.to_dict(), args.output)
        return 0
    token = report.token
    print("header (NOT verified)")
    for name, value in token.header.items():
        print(_line(name, value))
    print("claims")
    for name in ("iss", "sub", "aud"):
        if name in token.claims:
            value = token.claims[name]
            print(_line(name, ", ".join(map(str, value)) if isinstance(value, list) else value))
    for name, when in report.times().items():
        if when is not None:
            print(_line(name, f"{when['utc']}  ({when['epoch']})"))
    others = [
        k
        for k in token.claims
        if k not in ("iss", "sub", "aud", "iat", "nbf", "exp", "kubernetes.io")
    ]
    for name in others:
        print(_line(name, to_json(token.claims[name]).replace("\n", " ")))
    print("lifetime")
    if report.expires_in is None:
        print(_line("expires", "never (no exp)"))
    elif report.expired:
        print(_line("expired", f"{duration(-report.expires_in)} ago (now {utc_time(report.now)})"))
    else:
        print(_line("expires in", f"{duration(report.expires_in)} (now {utc_time(report.now)})"))
    if report.lifetime is not None:
        print(_line("total lifetime", duration(report.lifetime)))
    ident = report.identity
    print("identity")
    print(_line("namespace", ident.namespace or ident.sub_namespace or "-"))
    sa = ident.service_account or ident.sub_service_account or "-"
    print(
        _line(
            "service account",
            sa + (f"  (uid {ident.service_account_uid})" if ident.service_account_uid else ""),
        )
    )
    if ident.pod:
        print(_line("pod", ident.pod + (f"  (uid {ident.pod_uid})" if ident.pod_uid else "")))
    if ident.node:
        print(_line("node", ident.node))
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _load_trust_policy(path: str) -> object:
    document = parse_json(read_file(path, "trust policy"), path)
    found = find_policies(document)
    if not found:
        raise InputError(f"{path}: no IAM policy (a JSON object with a Statement) found")
    if len(found) == 1:
        return found[0].policy
    # A Terraform plan holds several policies; take the one that trusts a web identity.
    trust = [f for f in found if WEB_IDENTITY_ACTION.lower() in to_json(f.policy).lower()]
    if len(trust) == 1:
        return trust[0].policy
    locations = ", ".join(f.location for f in (trust or found))
    raise InputError(
        f"{path} holds several policies ({locations}); save the role's trust policy to its own file"
    )


def _verify(args: argparse.Namespace) -> int:
    now = _now(args)
    try:
        raw = _read_token(args.token)
        tokens.decode_unverified(raw)  # a garbage token is a usage error, before any fetch
        if args.jwks is not None:
            jwks_document = parse_json(read_file(args.jwks, "JWKS"), args.jwks)
        else:
            _, jwks_document = oidc.fetch_issuer_metadata(args.issuer_url, timeout=args.timeout)
        keys = parse_jwks(jwks_document, args.jwks or args.issuer_url)
        policy = _load_trust_policy(args.role_trust_policy) if args.role_trust_policy else None
        if args.provider_arn is not None and policy is None:
            raise InputError("--provider-arn needs --role-trust-policy")
        result = tokens.verify_token(
            raw,
            keys,
            now=now,
            audience=args.audience,
            issuer=args.issuer_url,
            trust_policy=policy,
            provider_arn=args.provider_arn,
        )
    except InputError as err:
        raise UsageError(str(err)) from None
    if args.output != "text":
        print_document(result.to_dict(), args.output)
        return 0 if result.ok else 1
    identity = tokens.service_account_identity(result.token.claims)
    who = result.token.claim_str("sub") or "<no sub>"
    if identity.pod:
        who += f" (pod {identity.pod})"
    print(f"token for {who}")
    for check in result.checks:
        print(f"  {'ok' if check.ok else 'FAIL':<5}{check.name:<11}{check.message}")
    verdict = result.verdict
    if verdict is not None:
        if verdict.accepted:
            print(f"STS would accept this token (trust policy statement {verdict.statement})")
        else:
            print(f"STS would answer: {verdict.sts_error}")
            for reason in verdict.reasons:
                print(f"  - {reason}")
        for note in verdict.notes:
            print(f"  note: {note}")
    print("result: " + ("token is valid" if result.ok else "token would be REJECTED"))
    return 0 if result.ok else 1


def run(args: argparse.Namespace) -> int:
    return _inspect(args) if args.subcommand == "inspect" else _verify(args)
