"""kube-proxy (built from the k8s.io/kubernetes the other binaries come from) in iptables mode.

It programs the node namespace's netfilter so that Service IPs work, from pods (PREROUTING)
and from the namespace itself (OUTPUT: the test process, hostNetwork pods). This kernel has
both iptables (xt) and nftables; iptables mode is the one every kube-proxy release defaults
to, and the CNI portmap plugin needs the iptables tools anyway (cni.PACKAGES).

What does not need it: the API server calls webhooks through the Service's endpoints
(`--enable-aggregator-routing`: it resolves Service -> EndpointSlice itself and dials a pod IP),
exactly the path whose pooled keep-alive connections test_rollout.py is about. What does: pods
reaching the `kubernetes` Service (the webhook's in-cluster client) and any other ClusterIP.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

__all__ = ["HEALTHZ", "command", "reaches", "write_config"]

HEALTHZ = "127.0.0.1:10256"  # the node namespace's own loopback


def write_config(path: Path, *, kubeconfig: Path, node_name: str, cluster_cidr: str) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        # Traffic from outside this range to a Service is masqueraded (none here: nothing
        # routes in), traffic from pods is not.
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": HEALTHZ,
        "metricsBindAddress": "127.0.0.1:10249",
        # The conntrack table size and timeouts are machine-wide or per-namespace sysctls that
        # a real node's kube-proxy tunes; this one leaves them as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # As the test process itself: it may not lower its own OOM score.
        "oomScoreAdj": 0,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def command(binary: Path, config: Path) -> list[str]:
    return [str(binary), f"--config={config}", "--v=1"]


def reaches(service_ip: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to a ClusterIP gets through (only kube-proxy's DNAT makes it:
    the Service CIDR's route leads to a bridge without ports)."""
    try:
        with socket.create_connection((service_ip, port), timeout=timeout):
            return True
    except OSError:
        return False
