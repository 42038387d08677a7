"""`pod-identity-webhook oidc`: publish and check a self-hosted service-account issuer."""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives.asymmetric import rsa

from webhook.cli import UsageError
from webhook.cli.common import (
    add_output_flag,
    output_flag,
    print_document,
    read_file,
    render_findings,
)
from webhook.toolkit import jwks, oidc
from webhook.toolkit.render import (
    InputError,
    has_errors,
    parse_json,
    summarize,
)

HELP = "self-hosted OIDC issuer: JWKS from keys, discovery document, consistency check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    keys = sub.add_parser(
        "keys",
        help="JWKS (keys.json) from PEM public or private keys",
        description="Print the JWKS for the given keys, with kube-apiserver's key IDs. Give "
        "several keys (old and new) to publish a rotation.",
    )
    keys.add_argument(
        "--public-key",
        action="append",
        required=True,
        metavar="FILE",
        dest="public_keys",
        help="PEM public key, private key or certificate (repeatable)",
    )
    keys.add_argument(
        "--include-empty-kid",
        action="store_true",
        help="also publish each key without kid, for tokens minted before Kubernetes 1.16",
    )
    add_output_flag(
        keys,
        ("json", "yaml", "text"),
        help_text="json: the JWKS to publish as keys.json (default); text: the keys for people",
    )

    discovery = sub.add_parser(
        "discovery",
        help="OIDC discovery document (.well-known/openid-configuration)",
    )
    discovery.add_argument(
        "--issuer",
        required=True,
        metavar="URL",
        help="exactly kube-apiserver's --service-account-issuer",
    )
    discovery.add_argument("--jwks-uri", metavar="URL", help="default: <issuer>/keys.json")
    discovery.add_argument(
        "--alg",
        action="append",
        dest="algs",
        metavar="ALG",
        help="signing algorithm to advertise (repeatable; default RS256, or from --public-key)",
    )
    discovery.add_argument(
        "--public-key",
        action="append",
        dest="public_keys",
        metavar="FILE",
        help="advertise the algorithms of these keys (repeatable)",
    )
    add_output_flag(
        discovery,
        ("json", "yaml", "text"),
        help_text="json: the document to publish (default); text: what it says, for people",
    )

    check = sub.add_parser(
        "check",
        help="check an issuer's discovery document, JWKS and optionally a token",
    )
    check.add_argument("--issuer", required=True, metavar="URL")
    check.add_argument("--jwks", required=True, metavar="FILE")
    check.add_argument("--discovery", required=True, metavar="FILE")
    check.add_argument("--token", metavar="FILE", help="a token that must verify (- for stdin)")
    output_flag(check)


def load_keys(paths: list[str]) -> list[jwks.PublicKey]:
    keys: list[jwks.PublicKey] = []
    for path in paths:
        try:
            keys += jwks.load_public_keys(read_file(path, "key file"), path)
        except InputError as err:
            raise UsageError(str(err)) from None
    return keys


def _weak_key_warnings(keys: list[jwks.PublicKey], paths: list[str]) -> list[str]:
    return [
        f"{path}: {jwks.describe_key(key)} key; STS and `oidc check` need at least "
        f"{oidc.MIN_RSA_BITS} bits, so tokens it signs will be refused"
        for key, path in zip(keys, paths, strict=True)
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < oidc.MIN_RSA_BITS
    ]


def _keys(args: argparse.Namespace) -> int:
    loaded = [(key, path) for path in args.public_keys for key in load_keys([path])]
    keys = [key for key, _ in loaded]
    for warning in _weak_key_warnings(keys, [path for _, path in loaded]):
        print(f"pod-identity-webhook oidc keys: warning: {warning}", file=sys.stderr)
    document = jwks.build_jwks(keys, include_empty_kid=args.include_empty_kid)
    if args.output != "text":
        print_document(document, args.output)
        return 0
    seen: set[str] = set()
    print(f"{len(document['keys'])} key(s) in the JWKS")
    for key, path in loaded:
        kid = jwks.key_id(key)
        if kid in seen:
            print(f"  {path}: same key as above, published once")
            continue
        seen.add(kid)
        print(f"  kid {kid}")
        print(f"    {jwks.describe_key(key)}, signs {jwks.signing_algorithm(key)}, from {path}")
    if args.include_empty_kid:
        print("  and each key once more without kid, for tokens minted before Kubernetes 1.16")
    print("Publish the JWKS with `-o json` (the default) as the issuer's keys.json.")
    return 0


def _discovery(args: argparse.Namespace) -> int:
    algorithms = list(args.algs or [])
    if args.public_keys:
        algorithms += oidc.algorithms_for_keys(load_keys(args.public_keys))
    try:
        document = oidc.discovery_document(
            args.issuer, jwks_uri=args.jwks_uri, algorithms=algorithms or ["RS256"]
        )
    except InputError as err:
        raise UsageError(str(err)) from None
    if args.output != "text":
        print_document(document, args.output)
        return 0
    issuer = str(document["issuer"])
    advertised = ", ".join(dict.fromkeys(algorithms or ["RS256"]))
    print(f"issuer              {issuer}")
    print(f"keys (jwks_uri)     {document['jwks_uri']}")
    print(f"signing algorithms  {advertised}")
    print("Publish the document with `-o json` (the default) at")
    print(f"  {issuer.rstrip('/')}/.well-known/openid-configuration")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        discovery = parse_json(read_file(args.discovery, "discovery document"), args.discovery)
        jwks_document = parse_json(read_file(args.jwks, "JWKS"), args.jwks)
        token = None
        if args.token:
            token = read_file(args.token, "token").decode("utf-8", "replace")
        findings = oidc.check_issuer(args.issuer, discovery, jwks_document, token=token)
    except InputError as err:
        raise UsageError(str(err)) from None
    failed = has_errors(findings)
    if args.output != "text":
        print_document(
            {
                "ok": not failed,
                "issuer": args.issuer,
                "findings": [f.to_dict() for f in findings],
                "summary": summarize(findings),
            },
            args.output,
        )
    else:
        print(f"issuer {args.issuer}")
        render_findings(findings, "no problems found")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    handlers = {"keys": _keys, "discovery": _discovery, "check": _check}
    return handlers[args.subcommand](args)
