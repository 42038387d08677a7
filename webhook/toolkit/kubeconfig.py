"""Find the cluster the way kubectl does, for the commands a person runs at a terminal.

Precedence (client-go's loading rules): `--kubeconfig` alone; else every file listed in
`$KUBECONFIG` (merged, missing ones skipped); else `~/.kube/config`; else, inside a pod, the
in-cluster service account. `--context` picks a context instead of `current-context`;
`--kube-api` replaces the server URL and keeps the credentials. (`serve` keeps upstream's rules
instead: in-cluster unless `--kubeconfig` or `--kube-api`.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IN_CLUSTER = "in-cluster service account"


class KubeconfigError(RuntimeError):
    """No usable configuration; the message says where we looked."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where the configuration comes from: kubeconfig paths, or none for in-cluster."""

    paths: tuple[str, ...]

    @property
    def in_cluster(self) -> bool:
        return not self.paths

    def describe(self) -> str:
        return IN_CLUSTER if self.in_cluster else os.pathsep.join(self.paths)


def find_source(kubeconfig: str, environ: Mapping[str, str], home: Path) -> Source:
    """Which files kubectl would read, given the flag, the environment and the home directory."""
    if kubeconfig:
        # Explicit: must exist. The client's own words for a missing file ("Invalid
        # kube-config file. No configuration found") do not say that it is missing.
        if not Path(kubeconfig).expanduser().exists():
            raise KubeconfigError(f"--kubeconfig {kubeconfig}: the file does not exist")
        return Source((kubeconfig,))
    listed = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        existing = tuple(p for p in listed if Path(p).expanduser().is_file())
        if existing:
            return Source(existing)
        raise KubeconfigError(f"none of the files in $KUBECONFIG exist: {', '.join(listed)}")
    default = home / ".kube" / "config"
    if default.is_file():
        return Source((str(default),))
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return Source(())
    raise KubeconfigError(
        f"no Kubernetes configuration: no --kubeconfig, $KUBECONFIG is not set, {default} "
        "does not exist, and this is not a pod"
    )


def configuration(kubeconfig: str = "", context: str = "", api_url: str = "") -> Any:
    """A kubernetes.client.Configuration chosen by kubectl's rules (see the module doc)."""
    from kubernetes import client, config

    try:
        source = find_source(kubeconfig, os.environ, Path.home())
    except KubeconfigError:
        if not api_url or context:
            raise
        source = None  # `--kube-api` alone: that server, no credentials (as kubectl --server)
    result = client.Configuration()
    try:
        if source is None:
            pass
        elif source.in_cluster:
            if context:
                raise KubeconfigError(f"--context {context}: in a pod there is no kubeconfig")
            config.load_incluster_config(client_configuration=result)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.pathsep.join(source.paths),
                context=context or None,
                client_configuration=result,
                persist_config=False,  # never rewrite the user's kubeconfig
            )
    except KubeconfigError:
        raise
    except Exception as err:
        where = source.describe() if source else api_url
        raise KubeconfigError(
            f"cannot configure the Kubernetes client from {where}: {str(err).rstrip('.')}"
        ) from None
    if api_url:
        result.host = api_url
    return result
