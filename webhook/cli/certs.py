"""`pod-identity-webhook certs generate`: a CA and serving certificate for the webhook.

Parsing and printing only; the certificate work is `webhook.certs`. The summary goes to
stderr and the base64 `caBundle` is always stdout's last line, so scripts can capture it:

    CA_BUNDLE=$(pod-identity-webhook certs generate --service NAME --namespace NS | tail -n1)

`-o json` prints one JSON object instead (camelCase keys, the caBundle under `caBundle`) and no
summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from webhook import certs
from webhook.cli import UsageError

HELP = "generate a CA and TLS serving certificate for the webhook Service"

DEFAULT_OUT = "./certs/out"
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
CA_COMMON_NAME = "pod-identity-webhook CA"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="write ca.crt, ca.key, tls.crt and tls.key; print the caBundle",
        description=(
            "Write ca.crt, ca.key, tls.crt and tls.key into --out. An existing, still valid CA "
            "in --out is reused (so the caBundle stays the same) unless --new-ca. The summary "
            "goes to stderr; the base64 caBundle is stdout's last line."
        ),
    )
    generate.add_argument("--service", required=True, metavar="NAME", help="the Service name")
    generate.add_argument(
        "-n", "--namespace", required=True, metavar="NS", help="the Service's namespace"
    )
    generate.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"directory for the four files, created if missing (default: {DEFAULT_OUT})",
    )
    generate.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"serving certificate lifetime in days (default: {DEFAULT_DAYS})",
    )
    generate.add_argument(
        "--ca-days",
        type=int,
        default=DEFAULT_CA_DAYS,
        metavar="N",
        help=f"lifetime of a newly generated CA in days (default: {DEFAULT_CA_DAYS})",
    )
    generate.add_argument(
        "--localhost",
        action="store_true",
        help="also name localhost, 127.0.0.1 and ::1 (for running the webhook locally)",
    )
    generate.add_argument(
        "--extra-san",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="another DNS name or IP address for the certificate (repeatable)",
    )
    generate.add_argument(
        "--key-type",
        choices=certs.KEY_TYPES,
        default="ecdsa",
        help="ecdsa (P-256, default) or rsa (2048 bits); a reused CA keeps its own key",
    )
    generate.add_argument(
        "--new-ca",
        action="store_true",
        help="generate a new CA even if --out holds a valid one (changes the caBundle)",
    )
    generate.add_argument(
        "--secret-manifest",
        metavar="FILE|-",
        help=(
            "also write a kubernetes.io/tls Secret: JSON if FILE ends in .json, YAML otherwise; "
            "'-' prints the YAML to stdout before the caBundle line"
        ),
    )
    generate.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (default: the summary on stderr, the caBundle as stdout's last line) or json "
        "(one object on stdout: caBundle, files, names, expiry, the Secret manifest if '-')",
    )
    generate.add_argument(
        "--secret-name",
        metavar="NAME",
        help="name of that Secret (default: SERVICE-tls)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        return _generate(args)
    raise UsageError(f"unknown action {args.action!r}")  # pragma: no cover - argparse guards


def _generate(args: argparse.Namespace) -> int:
    for flag, days in (("--days", args.days), ("--ca-days", args.ca_days)):
        if not 0 < days <= certs.MAX_DAYS:
            raise UsageError(f"{flag} must be from 1 to {certs.MAX_DAYS}, got {days}")
    if args.secret_name is not None and args.secret_manifest is None:
        raise UsageError("--secret-name only applies with --secret-manifest")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")

    try:
        dns_names = certs.service_dns_names(args.service, args.namespace)
    except ValueError as err:
        raise UsageError(str(err)) from None
    ip_addresses: list[str] = []
    if args.localhost:
        dns_names.append("localhost")
        ip_addresses += ["127.0.0.1", "::1"]
    try:
        extra_dns, extra_ips = certs.split_sans(args.extra_san)
    except ValueError as err:
        raise UsageError(f"--extra-san: {err}") from None
    dns_names += extra_dns
    ip_addresses += extra_ips

    secret_name = args.secret_name or f"{args.service}-tls"
    if args.secret_manifest is not None:
        try:
            certs.check_secret_metadata(secret_name, args.namespace)
        except ValueError as err:
            raise UsageError(str(err)) from None

    ca, ca_origin = _ca(out, args)
    try:
        serving = certs.generate_serving_cert(
            ca, dns_names, ip_addresses, args.days, key_type=args.key_type
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        paths = certs.write_bundle(out, ca, serving)
    except OSError as err:
        raise UsageError(f"cannot write certificates to {out}: {err.strerror or err}") from None

    manifest_text = None
    if args.secret_manifest is not None:
        manifest = certs.secret_manifest(secret_name, args.namespace, serving, ca)
        fmt: certs.ManifestFormat = "json" if args.secret_manifest.endswith(".json") else "yaml"
        manifest_text = certs.render_manifest(manifest, fmt)
        if args.secret_manifest != "-":
            try:
                certs.write_file_atomic(args.secret_manifest, manifest_text.encode(), 0o600)
            except OSError as err:
                raise UsageError(
                    f"cannot write --secret-manifest {args.secret_manifest}: {err.strerror or err}"
                ) from None

    if args.output == "json":
        print(json.dumps(_json_summary(paths, ca, ca_origin, serving, args, secret_name), indent=2))
        return 0
    _summary(paths, ca, ca_origin, serving, args.secret_manifest, secret_name)
    if args.secret_manifest == "-" and manifest_text is not None:
        sys.stdout.write(manifest_text)
    print(certs.ca_bundle_b64(ca))
    return 0


def _ca(out: Path, args: argparse.Namespace) -> tuple[certs.CertKeyPair, str]:
    """The CA to sign with and a word on where it came from."""
    if not args.new_ca:
        try:
            existing = certs.load_ca(out, valid_for=timedelta(days=args.days))
        except certs.CertificateError as err:
            print(
                f"note: not reusing the CA in {out} ({err}); generating a new one, "
                "so the caBundle changes",
                file=sys.stderr,
            )
        else:
            if existing is not None:
                return existing, "reused"
    ca = certs.generate_ca(CA_COMMON_NAME, args.ca_days, key_type=args.key_type)
    return ca, "new"


def _json_summary(
    paths: certs.BundlePaths,
    ca: certs.CertKeyPair,
    ca_origin: str,
    serving: certs.CertKeyPair,
    args: argparse.Namespace,
    secret_name: str,
) -> dict[str, object]:
    def expiry(pair: certs.CertKeyPair) -> str:
        return pair.not_valid_after.strftime("%Y-%m-%dT%H:%M:%SZ")

    result: dict[str, object] = {
        "caBundle": certs.ca_bundle_b64(ca),
        "ca": {
            "cert": str(paths.ca_cert),
            "key": str(paths.ca_key),
            "origin": ca_origin,
            "keyType": certs.describe_key(ca),
            "notAfter": expiry(ca),
        },
        "serving": {
            "cert": str(paths.tls_cert),
            "key": str(paths.tls_key),
            "keyType": certs.describe_key(serving),
            "notAfter": expiry(serving),
            "names": certs.subject_alt_names(serving),
        },
    }
    if args.secret_manifest is not None:
        secret: dict[str, object] = {"name": secret_name}
        if args.secret_manifest == "-":
            secret["manifest"] = certs.secret_manifest(secret_name, args.namespace, serving, ca)
        else:
            secret["file"] = args.secret_manifest
        result["secret"] = secret
    return result


def _summary(
    paths: certs.BundlePaths,
    ca: certs.CertKeyPair,
    ca_origin: str,
    serving: certs.CertKeyPair,
    secret_manifest: str | None,
    secret_name: str,
) -> None:
    def expiry(pair: certs.CertKeyPair) -> str:
        return f"{pair.not_valid_after:%Y-%m-%d %H:%M} UTC"

    lines = [
        f"CA        {paths.ca_cert} ({ca_origin}, {certs.describe_key(ca)}, "
        f"expires {expiry(ca)}), key {paths.ca_key}",
        f"serving   {paths.tls_cert} ({certs.describe_key(serving)}, "
        f"expires {expiry(serving)}), key {paths.tls_key}",
        f"names     {', '.join(certs.subject_alt_names(serving))}",
    ]
    if secret_manifest is not None:
        where = "stdout" if secret_manifest == "-" else secret_manifest
        lines.append(f"secret    {secret_name} -> {where}")
    lines.append("caBundle  printed as the last line of stdout")
    print("\n".join(lines), file=sys.stderr)
