"""Upstream's command-line flags with pflag's syntax, on argparse.

pflag accepts `--flag value`, `--flag=value`, and for booleans a bare `--flag` (true) or
`--flag=false`, never `--flag false`. argparse cannot express the boolean rule, so boolean flags
written bare are rewritten to `--flag=true` before parsing. Abbreviations are refused, as in
pflag. klog's flags (`-v`, `--logtostderr`, ...) are accepted so existing manifests run as is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from webhook.cli import UsageError
from webhook.core.gocompat import parse_bool, parse_duration
from webhook.core.settings import (
    DEFAULT_ANNOTATION_PREFIX,
    DEFAULT_TOKEN_AUDIENCE,
    DEFAULT_TOKEN_EXPIRATION,
    DEFAULT_TOKEN_MOUNT_PATH,
    ContainerCredentialsSettings,
    MutationSettings,
    RoleArnComposition,
)

_CC = ContainerCredentialsSettings()
# Resolves (account id, partition) for --compose-role-arn, e.g. from instance metadata.
AccountLookup = Callable[[], tuple[str, str]]
BOOL_FLAGS: set[str] = set()

# klog flags that upstream inherits; accepted for compatibility, only -v has an effect.
_KLOG_BOOL = (
    "logtostderr",
    "alsologtostderr",
    "add_dir_header",
    "one_output",
    "skip_headers",
    "skip_log_headers",
    "legacy_stderr_threshold_behavior",
)
_KLOG_VALUE = (
    "log_dir",
    "log_file",
    "log_file_max_size",
    "stderrthreshold",
    "vmodule",
    "log_backtrace_at",
)


def go_bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def go_int(text: str) -> int:
    try:
        return int(text, 0)  # pflag parses integers with base prefix detection
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def go_duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def bool_flag(
    parser: argparse._ActionsContainer, name: str, default: bool | None, help_text: str | None
) -> None:
    """A pflag boolean: `--name`, `--name=true|false`; None as default means "not given".
    `help_text` None: accepted but not listed in --help."""
    BOOL_FLAGS.add(name)
    suffix = "" if default is None else f" (default {str(default).lower()})"
    shown = argparse.SUPPRESS if help_text is None else help_text + suffix
    parser.add_argument(f"--{name}", type=go_bool, default=default, metavar="BOOL", help=shown)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite bare boolean flags to `--flag=true`; stop at `--`."""
    out: list[str] = []
    passthrough = False
    for arg in argv:
        if passthrough or arg == "--":
            passthrough = True
            out.append(arg)
            continue
        if arg.startswith("--") and "=" not in arg and arg[2:] in BOOL_FLAGS:
            out.append(arg + "=true")
        else:
            out.append(arg)
    return out


def add_mutation_flags(
    parser: argparse.ArgumentParser,
    *,
    config_map_namespace_flag: str = "--namespace",
    objects: bool = True,
) -> None:
    """`config_map_namespace_flag`: `audit` keeps `-n/--namespace` for its scope, as kubectl;
    `objects=False` for commands that read a live cluster."""
    group = parser.add_argument_group("mutation (same names and defaults as upstream)")
    group.add_argument(
        "--annotation-prefix",
        default=DEFAULT_ANNOTATION_PREFIX,
        help="The Service Account annotation to look for",
    )
    group.add_argument(
        "--token-audience",
        default=DEFAULT_TOKEN_AUDIENCE,
        help="The default audience for tokens. Can be overridden by annotation",
    )
    group.add_argument(
        "--token-mount-path", default=DEFAULT_TOKEN_MOUNT_PATH, help="The path to mount tokens"
    )
    group.add_argument(
        "--token-expiration",
        type=go_int,
        default=DEFAULT_TOKEN_EXPIRATION,
        help="The token expiration in seconds (minimum 600)",
    )
    group.add_argument(
        "--aws-default-region",
        default="",
        help="If set, AWS_DEFAULT_REGION and AWS_REGION are set to it in mutated containers",
    )
    bool_flag(group, "sts-regional-endpoint", False, "Inject AWS_STS_REGIONAL_ENDPOINTS=regional")
    bool_flag(
        group,
        "watch-config-map",
        False,
        f"Use the pod-identity-webhook ConfigMap in {config_map_namespace_flag} as well as "
        "annotations",
    )
    bool_flag(
        group,
        "compose-role-arn",
        False,
        "Accept a role name instead of an ARN (account: --aws-account-id or instance metadata)",
    )
    group.add_argument(
        "--aws-account-id",
        default="",
        help="(new) Account for --compose-role-arn, instead of EC2 instance metadata",
    )
    group.add_argument(
        "--aws-partition",
        default="",
        help="(new) Partition for --compose-role-arn (default from instance metadata, else aws)",
    )
    group.add_argument(
        config_map_namespace_flag,
        default="eks",
        help="The namespace this webhook and its ConfigMap reside in",
    )
    group.add_argument(
        "--watch-container-credentials-config",
        default="",
        help="Path of the container credentials (EKS Pod Identity) identities file to watch",
    )
    group.add_argument("--container-credentials-audience", default=_CC.audience)
    group.add_argument("--container-credentials-token-mount-path", default=_CC.mount_path)
    group.add_argument("--container-credentials-token-volume-name", default=_CC.volume_name)
    group.add_argument("--container-credentials-token-path", default=_CC.token_path)
    group.add_argument("--container-credentials-full-uri", default=_CC.full_uri)
    if not objects:
        return
    group.add_argument(
        "--objects",
        action="append",
        default=[],
        metavar="PATH",
        help="(new) ServiceAccounts and ConfigMap from YAML/JSON files instead of a cluster",
    )


def add_klog_flags(parser: argparse.ArgumentParser, *, list_compat: bool = True) -> None:
    """-v and --log-format, and klog's other flags, accepted and ignored; `list_compat=False`
    leaves those out of --help (they mean nothing to an offline command)."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--v",
        dest="verbosity",
        type=go_int,
        default=0,
        metavar="LEVEL",
        help="Log verbosity; 4 or more logs every review",
    )
    group.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="(new) Log line format"
    )
    for name in _KLOG_BOOL:
        bool_flag(group, name, False, "accepted for klog compatibility" if list_compat else None)
    for name in _KLOG_VALUE:
        group.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)


def settings_from_args(
    args: argparse.Namespace, account_lookup: AccountLookup | None = None
) -> MutationSettings:
    composition = None
    if args.compose_role_arn:
        account, partition = args.aws_account_id, args.aws_partition
        if not account:
            if account_lookup is None:
                raise UsageError(
                    "--compose-role-arn needs --aws-account-id here (no instance metadata)"
                )
            try:
                account, looked_up_partition = account_lookup()
            except RuntimeError as err:
                raise UsageError(str(err)) from None
            partition = partition or looked_up_partition
        if not (account.isdigit() and len(account) == 12):
            raise UsageError(f"--aws-account-id must be 12 digits, got {account!r}")
        composition = RoleArnComposition(account_id=account, partition=partition or "aws")
    return MutationSettings(
        annotation_prefix=args.annotation_prefix,
        token_audience=args.token_audience,
        token_mount_path=args.token_mount_path,
        token_expiration=args.token_expiration,
        aws_default_region=args.aws_default_region,
        sts_regional_endpoint=args.sts_regional_endpoint,
        compose_role_arn=composition,
        container_credentials=ContainerCredentialsSettings(
            audience=args.container_credentials_audience,
            mount_path=args.container_credentials_token_mount_path,
            volume_name=args.container_credentials_token_volume_name,
            token_path=args.container_credentials_token_path,
            full_uri=args.container_credentials_full_uri,
        ),
    )


def go_port(text: str) -> int:
    """A TCP port to listen on: pflag's integer syntax, 1-65535 (0 would pick a random port
    while the logs name 0)."""
    port = go_int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


# Options that never take a separate value, besides the registered booleans.
_NO_VALUE_OPTIONS = frozenset({"-h", "--help"})


def split_stray_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags, stray positional arguments) of already normalized `argv`.

    pflag keeps positional arguments apart and upstream never reads them, so a manifest
    written `--sts-regional-endpoint true` starts (the bare boolean means true and `true`
    is ignored). A token is stray when it is neither an option nor the value of the option
    before it; everything after `--` is stray.
    """
    flags: list[str] = []
    strays: list[str] = []
    expects_value = False
    for index, arg in enumerate(argv):
        if expects_value:
            flags.append(arg)
            expects_value = False
        elif arg == "--":
            strays.extend(argv[index + 1 :])
            break
        elif arg.startswith("-") and arg != "-":
            flags.append(arg)
            name = arg.split("=", 1)[0]
            bare_short = len(arg) == 2 and not arg.startswith("--")  # `-v 4`, not `-v4`
            long_without_value = arg.startswith("--") and "=" not in arg
            expects_value = (
                (bare_short or long_without_value)
                and name not in _NO_VALUE_OPTIONS
                and name.lstrip("-") not in BOOL_FLAGS
            )
        else:
            strays.append(arg)
    return flags, strays
