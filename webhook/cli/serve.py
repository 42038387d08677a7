"""`pod-identity-webhook serve` (the default command): the webhook server, upstream's flags."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from webhook import __version__
from webhook.cli import PROG, UsageError, flags, logs
from webhook.core.configmap import ConfigMapError
from webhook.server.app import (
    DEFAULT_MAX_REQUEST_BYTES,
    WebhookContext,
    create_metrics_app,
    create_webhook_app,
)
from webhook.server.grace import GraceLookup
from webhook.server.listen import (
    Endpoint,
    ListenError,
    bind,
    bound_address,
    queued_connections_migrate,
)
from webhook.server.metrics import Metrics
from webhook.server.record import (
    DEFAULT_MAX_BYTES,
    Recorder,
    RecordSettings,
    RedactionKeyError,
    read_redaction_key,
)
from webhook.server.runner import Draining, Listener, ServerGroup, Timeouts
from webhook.server.runner import run as run_servers
from webhook.server.tls import CertificateReloader, TLSConfigError, server_context
from webhook.sources import filewatch
from webhook.sources.container_credentials import ContainerCredentialsError, parse_identities
from webhook.sources.objects import ObjectsError, ObjectsSource
from webhook.sources.store import IdentityStore

HELP = "run the webhook server (default command; upstream's flags)"
log = logging.getLogger("webhook.serve")

_TIMEOUTS = Timeouts()  # the defaults
RELOAD_INTERVAL_SECONDS = 2.0  # certificates, --objects and identities files
Job = Callable[[], Coroutine[Any, Any, None]]


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """pflag's syntax; stray positional arguments go after `--`, where argparse collects them
    into `stray_arguments` wherever they stood."""
    options, strays = flags.split_stray_arguments(flags.normalize_argv(argv))
    return [*options, "--", *strays] if strays else options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False
    server = parser.add_argument_group("server")
    server.add_argument("--port", type=flags.go_port, default=443, help="Port to listen on (HTTPS)")
    server.add_argument(
        "--metrics-port",
        type=flags.go_port,
        default=9999,
        help="Port to listen on for metrics (http)",
    )
    server.add_argument(
        "--bind-address",
        default="",
        help="(new) Address both listeners bind to (default: every address, IPv6 and IPv4, "
        "as upstream's `:443`; IPv4 only where the host has no IPv6)",
    )
    flags.bool_flag(
        server,
        "reuse-port",
        False,
        "(new) SO_REUSEPORT on both listeners: replicas sharing a host (hostNetwork) share the "
        "ports",
    )
    server.add_argument(
        "--shutdown-delay",
        type=flags.go_duration,
        default=_TIMEOUTS.shutdown_delay,
        metavar="DURATION",
        help="(new) After SIGTERM, keep serving this long with /readyz failing and "
        f"`Connection: close` on every answer, before the listeners close "
        f"(default {_TIMEOUTS.shutdown_delay:g}s)",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=flags.go_duration,
        default=_TIMEOUTS.shutdown_timeout,
        metavar="DURATION",
        help="(new) Then wait up to this long for in-flight reviews and unsent answers "
        f"(default {_TIMEOUTS.shutdown_timeout:g}s)",
    )
    server.add_argument(
        "--tls-handshake-timeout",
        type=flags.go_duration,
        default=_TIMEOUTS.tls_handshake,
        metavar="DURATION",
        help="(new) Close connections that have not completed a TLS handshake by then "
        f"(default {_TIMEOUTS.tls_handshake:g}s)",
    )
    server.add_argument(
        "--read-header-timeout",
        type=flags.go_duration,
        default=_TIMEOUTS.read_header,
        metavar="DURATION",
        help="(new) Close connections that have not sent a complete request head by then "
        f"(default {_TIMEOUTS.read_header:g}s; Go's ReadHeaderTimeout; idle keep-alive "
        "connections wait longer)",
    )
    server.add_argument(
        "--tls-cert",
        default="/etc/webhook/certs/tls.crt",
        help="TLS certificate file path (reloaded on change)",
    )
    server.add_argument(
        "--tls-key",
        default="/etc/webhook/certs/tls.key",
        help="TLS key file path (reloaded on change)",
    )
    server.add_argument(
        "--tls-cipher-suites",
        default="",
        help="Comma-separated cipher suites, Go (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) or OpenSSL "
        "(ECDHE-RSA-AES128-GCM-SHA256) names (default: ECDHE with AES-GCM or ChaCha20-Poly1305)",
    )
    server.add_argument(
        "--tls-min-version", default="", help="Minimum TLS version: 1.0, 1.1, 1.2 (default), 1.3"
    )
    server.add_argument(
        "--max-request-bytes",
        type=flags.go_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="(new) Larger bodies get 413",
    )
    flags.bool_flag(server, "enable-debugging-handlers", False, "Enable /debug/alpha/* handlers")
    cluster = parser.add_argument_group("cluster")
    # Upstream's default is true, meaning CSR bootstrapping, which no longer works; we only
    # refuse it when asked for explicitly (None = not given).
    flags.bool_flag(
        cluster,
        "in-cluster",
        None,
        "Upstream's CSR certificate bootstrapping: not supported, use --tls-cert/--tls-key",
    )
    cluster.add_argument(
        "--kubeconfig", default="", help="(out-of-cluster) Path to a kubeconfig file"
    )
    cluster.add_argument(
        "--kube-api", default="", help="(out-of-cluster) The URL of the API server"
    )
    cluster.add_argument(
        "--service-name",
        default="pod-identity-webhook",
        help="(in-cluster) The service name fronting this webhook",
    )
    cluster.add_argument(
        "--tls-secret",
        default="pod-identity-webhook",
        help="(in-cluster, unused) Upstream's CSR secret name",
    )
    cluster.add_argument(
        "--service-account-lookup-grace-period",
        type=flags.go_duration,
        default=0.0,
        metavar="DURATION",
        help="Wait up to this long for an unknown ServiceAccount (0 = off)",
    )
    cluster.add_argument(
        "--resync-period",
        type=flags.go_duration,
        default=60.0,
        metavar="DURATION",
        help="Upper bound of each ServiceAccount watch request (lists only at start or on error)",
    )
    _add_record_flags(parser)
    flags.add_mutation_flags(parser)
    flags.add_klog_flags(parser)
    flags.bool_flag(parser, "version", False, "Display the version and exit")
    # pflag ignores positional arguments; so do we, with a warning (see normalize_argv).
    parser.add_argument("stray_arguments", nargs="*", help=argparse.SUPPRESS)


def _add_record_flags(parser: argparse.ArgumentParser) -> None:
    record = parser.add_argument_group("recording (new; for `replay`)")
    record.add_argument(
        "--record-dir",
        default="",
        metavar="DIR",
        help="Write each review (request and answer) as a JSON line under DIR, for `replay`; "
        "never blocks a request: a full queue drops and counts (off by default)",
    )
    record.add_argument(
        "--record-max-bytes",
        type=flags.go_int,
        default=DEFAULT_MAX_BYTES,
        help="Size budget of DIR's record files; the oldest gzipped rotation goes first",
    )
    record.add_argument(
        "--record-sample",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="Record this fraction of the reviews (0.1: one in ten, at random)",
    )
    flags.bool_flag(
        record,
        "record-env-values",
        False,
        "Keep literal env values, command and args in the record (default: each replaced by a "
        "keyed hash, equal for equal values)",
    )
    record.add_argument(
        "--record-redaction-key-file",
        default="",
        metavar="FILE",
        help="The redaction hashes' key (at least 16 bytes; e.g. a mounted Secret), so hashes "
        "match across restarts and replicas. Default: a random key held only in memory. The key "
        "is never written into DIR",
    )


def _record_settings(args: argparse.Namespace) -> RecordSettings | None:
    if not args.record_dir:
        return None
    if not 0.0 <= args.record_sample <= 1.0:
        raise UsageError(f"--record-sample={args.record_sample}: must be between 0 and 1")
    if args.record_max_bytes <= 0:
        raise UsageError("--record-max-bytes must be positive")
    key_file = Path(args.record_redaction_key_file) if args.record_redaction_key_file else None
    if key_file is not None:
        try:
            read_redaction_key(key_file)
        except RedactionKeyError as err:
            raise UsageError(f"--record-redaction-key-file {err}") from None
    return RecordSettings(
        Path(args.record_dir),
        max_bytes=args.record_max_bytes,
        sample=args.record_sample,
        redact=not args.record_env_values,
        key_file=key_file,
    )


def _recorder(
    args: argparse.Namespace, settings: RecordSettings | None, metrics: Metrics
) -> Recorder | None:
    if settings is None:
        return None
    try:
        return Recorder(settings, metrics.registry)
    except OSError as err:
        raise UsageError(f"--record-dir {args.record_dir}: {err}") from None
    except RedactionKeyError as err:
        raise UsageError(f"--record-redaction-key-file {err}") from None


def _container_credentials_job(path: str, store: IdentityStore) -> Job:
    """Load the identities file now and watch it. A missing or broken file is logged and
    retried, never fatal: the webhook keeps serving web identity for every other pod."""

    def load() -> None:
        try:
            content = Path(path).read_bytes()
        except FileNotFoundError:
            log.warning("container credentials file %s does not exist (yet); no identities", path)
            content = b""
        try:
            store.set_container_credentials(parse_identities(content))
        except ContainerCredentialsError as err:
            raise ContainerCredentialsError(f"{path}: {err}") from None

    failing = False
    try:
        load()
    except (ContainerCredentialsError, OSError) as err:
        log.error("container credentials file unusable, starting without identities: %s", err)
        failing = True
    return partial(
        filewatch.watch,
        [path],
        load,
        RELOAD_INTERVAL_SECONDS,
        path,
        in_thread=True,
        failing=failing,
    )


def _warn_stray_arguments(strays: Sequence[str]) -> None:
    if not strays:
        return
    hint = ""
    if any(word.lower() in ("true", "false", "t", "f", "1", "0") for word in strays):
        hint = (
            "; a boolean flag takes its value after '=' (`--sts-regional-endpoint false` "
            "turns it ON, write --sts-regional-endpoint=false)"
        )
    log.warning(
        "ignoring positional arguments %s, as upstream does%s",
        " ".join(repr(word) for word in strays),
        hint,
    )


def _report_listener_migration(migrate: bool | None) -> None:
    """With --reuse-port, whether a rollout can reset reviews: the kernel's side of the drain."""
    if migrate is False:
        log.warning(
            "--reuse-port: net.ipv4.tcp_migrate_req is 0 here, so connections still queued on "
            "this listener when it closes (rollout, restart) are reset, and with "
            "failurePolicy: Ignore their pods are stored without credentials; set it to 1 on "
            "the node (Linux 5.14+)"
        )
    elif migrate:
        log.info(
            "--reuse-port: net.ipv4.tcp_migrate_req is 1 here: connections still queued on "
            "this listener when it closes go to another listener on the port"
        )
    else:
        log.info(
            "--reuse-port: net.ipv4.tcp_migrate_req cannot be read here (Linux 5.14+), so "
            "connections still queued on this listener when it closes may be reset"
        )


def _listen_hint(message: str) -> str:
    if "in use" not in message:
        return ""
    return (
        " (another process holds the port: stop it, or choose others with --port and "
        "--metrics-port; `make run PORT=8444 METRICS_PORT=10000`)"
    )


def run(args: argparse.Namespace) -> int:
    logs.configure(args.verbosity, args.log_format)
    if args.version:
        print(__version__)
        return 0
    if args.in_cluster:
        raise UsageError(
            "--in-cluster=true asks for upstream's CSR certificate bootstrapping, which the "
            "Kubernetes legacy signer no longer serves; mount a certificate (cert-manager, the "
            "Helm chart or `pod-identity-webhook certs generate`) and pass --tls-cert/--tls-key"
        )
    _warn_stray_arguments(args.stray_arguments)
    # Every flag is checked before a port is bound or the cluster contacted.
    record_settings = _record_settings(args)
    if args.port == args.metrics_port:
        raise UsageError(
            f"--port and --metrics-port are both {args.port}; the two listeners need two ports"
        )
    try:
        tls_context = server_context(
            args.tls_cert, args.tls_key, args.tls_min_version, args.tls_cipher_suites
        )
    except TLSConfigError as err:
        raise UsageError(str(err)) from None
    if args.kubeconfig and not args.objects and not Path(args.kubeconfig).expanduser().exists():
        raise UsageError(f"--kubeconfig {args.kubeconfig}: the file does not exist")
    try:
        https_sockets = bind(Endpoint(args.bind_address, args.port, args.reuse_port))
        metrics_sockets = bind(Endpoint(args.bind_address, args.metrics_port, args.reuse_port))
    except ListenError as err:
        print(f"{PROG} serve: error: {err}{_listen_hint(str(err))}", file=sys.stderr)
        return 1
    if args.reuse_port:
        _report_listener_migration(queued_connections_migrate())
    from webhook.sources.imds import account_from_instance_metadata

    settings = flags.settings_from_args(args, account_lookup=account_from_instance_metadata)
    store = IdentityStore(settings)
    jobs: list[Job] = []
    reconnects: dict[str, int] | None = None
    config_map_namespace = args.namespace if args.watch_config_map else None
    fetch = None
    if args.objects:
        source = ObjectsSource(args.objects, store, config_map_namespace)
        try:
            source.load()
        except (ObjectsError, ConfigMapError) as err:
            raise UsageError(f"--objects: {err}") from None
        jobs.append(
            partial(
                filewatch.watch,
                source.watched_files(),
                source.load,
                RELOAD_INTERVAL_SECONDS,
                "--objects",
                in_thread=True,
            )
        )

        def ready() -> bool:
            return True
    else:
        from webhook.sources.kube import KubeSource, KubeSourceError

        try:
            kube = KubeSource.connect(
                store,
                kubeconfig=args.kubeconfig,
                api_url=args.kube_api,
                config_map_namespace=config_map_namespace,
                resync_seconds=args.resync_period,
            )
        except KubeSourceError as err:
            raise UsageError(str(err)) from None
        kube.start()
        ready = kube.synced
        reconnects = kube.reconnects
        fetch = kube.request_fetch
    if args.watch_container_credentials_config:
        jobs.append(_container_credentials_job(args.watch_container_credentials_config, store))
    reloader = CertificateReloader(tls_context, args.tls_cert, args.tls_key)
    jobs.append(
        partial(
            filewatch.watch,
            [args.tls_cert, args.tls_key],
            reloader.reload,
            RELOAD_INTERVAL_SECONDS,
            "TLS certificate",
        )
    )

    metrics = Metrics()
    metrics.track_cache(lambda: float(store.service_account_count), ready)
    metrics.used.set_function(lambda: 1.0 if store.used else 0.0)
    if reconnects is not None:
        counts = reconnects
        metrics.track_reconnects(lambda: dict(counts))
    draining = Draining()
    recorder = _recorder(args, record_settings, metrics)
    ctx = WebhookContext(
        settings=settings,
        store=store,
        lookup=GraceLookup(store, args.service_account_lookup_grace_period, fetch),
        metrics=metrics,
        ready=ready,
        max_request_bytes=args.max_request_bytes,
        debug_handlers=args.enable_debugging_handlers,
        shutting_down=lambda: draining.active,
        record=recorder.record if recorder is not None else None,
    )
    group = ServerGroup(
        listeners=[
            Listener(create_webhook_app(ctx), https_sockets, tls_context),
            Listener(create_metrics_app(ctx), metrics_sockets),
        ],
        background=jobs,
        timeouts=Timeouts(
            shutdown_delay=args.shutdown_delay,
            shutdown_timeout=args.shutdown_timeout,
            tls_handshake=args.tls_handshake_timeout,
            read_header=args.read_header_timeout,
        ),
        draining=draining,
        loop_lag=metrics.observe_loop_lag,
    )
    log.info(
        "starting listeners on %s (https) and %s (metrics)",
        ", ".join(bound_address(sock) for sock in https_sockets),
        ", ".join(bound_address(sock) for sock in metrics_sockets),
    )
    if recorder is not None:
        recorder.start()
        log.info("recording reviews in %s", args.record_dir)
    try:
        run_servers(group)
    finally:
        if recorder is not None:
            recorder.close()
    log.info("shut down cleanly")
    return 0
