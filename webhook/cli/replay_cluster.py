"""`replay --from-cluster`: the cluster kubectl would use becomes replay's inputs and objects.

The snapshot (see `webhook.toolkit.replay_cluster`) is written to a private temporary
directory, removed at exit, and added to `--objects` and the inputs, so the replay itself
takes the same path as for files.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

from webhook.cli import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster (--from-cluster; read-only, as kubectl: --kubeconfig, else $KUBECONFIG, "
        "else ~/.kube/config, else in-cluster)"
    )
    group.add_argument(
        "--from-cluster",
        action="store_true",
        help="replay every running workload's pod template (and bare pods) against the "
        "cluster's ServiceAccounts, Namespaces and ConfigMap; changes nothing",
    )
    group.add_argument("--kubeconfig", default="", help="Path to a kubeconfig file")
    group.add_argument("--context", default="", help="The kubeconfig context to use")
    # The scope's old name (before -n/--namespace meant the scope, as in audit and kubectl).
    group.add_argument(
        "--cluster-namespace",
        action="append",
        dest="scope_namespaces",
        metavar="NS",
        help=argparse.SUPPRESS,
    )


def _write(directory: Path, name: str, items: list[dict[str, object]]) -> str:
    path = directory / name
    path.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return str(path)


def prepare(args: argparse.Namespace, warn: Callable[[str], None]) -> None:
    """Checks the inputs; with --from-cluster, reads the cluster into args.objects/inputs."""
    if not args.from_cluster:
        if not args.inputs:
            raise UsageError("give INPUT files (or - for stdin), or --from-cluster")
        return
    from webhook.toolkit.audit_cluster import ClusterError, connect
    from webhook.toolkit.replay_cluster import read_cluster

    try:
        with connect(args.kubeconfig, context=args.context) as cluster:
            host = cluster.host
            snapshot = read_cluster(
                cluster,
                namespaces=args.scope_namespaces,
                config_map_namespace=args.webhook_namespace if args.watch_config_map else None,
            )
    except ClusterError as err:
        raise UsageError(f"--from-cluster: {err}") from None
    for note in snapshot.notes:
        warn(note)
    directory = Path(tempfile.mkdtemp(prefix="piw-replay-"))
    atexit.register(shutil.rmtree, directory, True)
    args.objects = [*(args.objects or []), _write(directory, "objects.json", snapshot.objects)]
    if snapshot.workloads:
        args.inputs = [*args.inputs, _write(directory, "workloads.json", snapshot.workloads)]
    elif not args.inputs:
        raise UsageError(f"--from-cluster: no running pods in {host}")
