"""Upstream's flags, with pflag's syntax, so existing manifests run unchanged."""

import argparse

import pytest

from webhook import __version__
from webhook.cli import main, serve
from webhook.cli.flags import settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    serve.add_arguments(parser)
    return parser.parse_args(serve.normalize_argv(list(argv)))


def test_defaults_are_upstreams() -> None:
    args = parse()
    assert (args.port, args.metrics_port) == (443, 9999)
    assert (args.tls_cert, args.tls_key) == (
        "/etc/webhook/certs/tls.crt",
        "/etc/webhook/certs/tls.key",
    )
    assert (args.namespace, args.service_name) == ("eks", "pod-identity-webhook")
    assert args.annotation_prefix == "eks.amazonaws.com"
    assert args.token_audience == "sts.amazonaws.com"
    assert args.token_mount_path == "/var/run/secrets/eks.amazonaws.com/serviceaccount"
    assert args.token_expiration == 86400
    assert (args.aws_default_region, args.sts_regional_endpoint, args.watch_config_map) == (
        "",
        False,
        False,
    )
    assert args.container_credentials_audience == "pods.eks.amazonaws.com"
    assert (
        args.container_credentials_token_mount_path
        == "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
    )
    assert args.container_credentials_token_volume_name == "eks-pod-identity-token"
    assert args.container_credentials_token_path == "eks-pod-identity-token"
    assert args.container_credentials_full_uri == "http://169.254.170.23/v1/credentials"
    assert (args.service_account_lookup_grace_period, args.resync_period) == (0.0, 60.0)
    assert args.enable_debugging_handlers is False


def test_server_flags_of_our_own_and_their_defaults() -> None:
    args = parse()
    assert args.bind_address == ""  # every address, both families
    assert args.reuse_port is False
    assert (args.shutdown_delay, args.shutdown_timeout) == (5.0, 10.0)
    assert (args.tls_handshake_timeout, args.read_header_timeout) == (5.0, 5.0)
    args = parse(
        "--reuse-port",
        "--shutdown-delay=15s",
        "--shutdown-timeout",
        "1m",
        "--tls-handshake-timeout=250ms",
        "--read-header-timeout=2s",
    )
    assert args.reuse_port is True
    assert (args.shutdown_delay, args.shutdown_timeout) == (15.0, 60.0)
    assert (args.tls_handshake_timeout, args.read_header_timeout) == (0.25, 2.0)


@pytest.mark.parametrize(
    ("argv", "strays"),
    [
        (("--sts-regional-endpoint", "true"), ["true"]),
        (("--port", "8443", "extra", "--watch-config-map", "false"), ["extra", "false"]),
        (("-v", "4", "--token-expiration", "-5"), []),
        (("-v4", "stray"), ["stray"]),
        (("--port=8443", "8444"), ["8444"]),
        (("--", "--port=1"), ["--port=1"]),
    ],
)
def test_stray_positional_arguments_are_collected_wherever_they_stand(
    argv: tuple[str, ...], strays: list[str]
) -> None:
    assert parse(*argv).stray_arguments == strays


def test_a_bare_boolean_followed_by_false_is_true_as_in_pflag() -> None:
    args = parse("--sts-regional-endpoint", "false")
    assert args.sts_regional_endpoint is True
    assert args.stray_arguments == ["false"]


@pytest.mark.parametrize("text", ["0", "65536", "99999", "-1"])
def test_ports_outside_1_to_65535_are_refused(text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(f"--port={text}")
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        ((), False),
        (("--sts-regional-endpoint",), True),
        (("--sts-regional-endpoint=true",), True),
        (("--sts-regional-endpoint=false",), False),
        (("--sts-regional-endpoint=T",), True),
        (("--sts-regional-endpoint=0",), False),
    ],
)
def test_boolean_flags_take_pflag_forms(argv: tuple[str, ...], value: bool) -> None:
    assert parse(*argv).sts_regional_endpoint is value


@pytest.mark.parametrize("argv", [("--port=8443",), ("--port", "8443"), ("--port=0x20FB",)])
def test_value_flags_take_equals_or_space(argv: tuple[str, ...]) -> None:
    assert parse(*argv).port == 8443


@pytest.mark.parametrize("argv", [("-v=4",), ("-v", "4"), ("--v=4",), ("-v4",)])
def test_klog_verbosity_spellings(argv: tuple[str, ...]) -> None:
    assert parse(*argv).verbosity == 4


def test_klog_flags_from_upstream_manifests_are_accepted() -> None:
    args = parse(
        "--logtostderr", "--alsologtostderr=false", "--stderrthreshold=INFO", "--in-cluster=false"
    )
    assert args.logtostderr is True and args.in_cluster is False


def test_durations_use_go_syntax() -> None:
    args = parse("--service-account-lookup-grace-period=250ms", "--resync-period", "2m")
    assert (args.service_account_lookup_grace_period, args.resync_period) == (0.25, 120.0)


@pytest.mark.parametrize(
    "argv",
    [("--sts-regional-endpoint=maybe",), ("--port=eighty",), ("--resync-period=5",), ("--por=1",)],
)
def test_invalid_values_and_abbreviations_are_rejected(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_version_prints_and_exits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_in_cluster_true_is_refused_with_guidance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--in-cluster=true"]) == 2
    err = capsys.readouterr().err
    assert "--tls-cert" in err and "CSR" in err


def test_compose_role_arn_with_account_flags_needs_no_instance_metadata() -> None:
    args = parse("--compose-role-arn", "--aws-account-id=111122223333", "--aws-partition=aws-cn")
    composition = settings_from_args(args).compose_role_arn
    assert (
        composition is not None
        and composition.compose("app") == "arn:aws-cn:iam::111122223333:role/app"
    )


def test_compose_role_arn_rejects_a_malformed_account(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import UsageError

    with pytest.raises(UsageError, match="12 digits"):
        settings_from_args(parse("--compose-role-arn", "--aws-account-id=123"))


def test_compose_role_arn_off_ec2_says_how_to_fix_it() -> None:
    from webhook.cli import UsageError
    from webhook.sources import imds

    def unreachable() -> tuple[str, str]:
        return imds.account_from_instance_metadata("http://127.0.0.1:9")  # nothing listens there

    with pytest.raises(UsageError, match="--aws-account-id"):
        settings_from_args(parse("--compose-role-arn"), account_lookup=unreachable)


@pytest.mark.parametrize(
    ("region", "partition"),
    [
        ("us-east-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-isob-east-1", "aws-iso-b"),
        ("us-iso-east-1", "aws-iso"),
        ("eusc-de-east-1", "aws-eusc"),
    ],
)
def test_partition_from_region_as_upstream(region: str, partition: str) -> None:
    from webhook.sources.imds import partition_for_region

    assert partition_for_region(region) == partition


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "replay" in out
