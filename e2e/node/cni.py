"""The node's pod network: Debian's CNI plugins (bridge, host-local, loopback, portmap).

Each pod gets a veth into a bridge inside the node's network namespace and an address from
POD_CIDR (198.18.0.0/24, the benchmarking range: never routed on the internet, never a
private range a machine may already use). The bridge carries the gateway address, so the node
namespace routes between pods, the node IP (API server, kubelet, the STS emulator) and the
Pod Identity agent's link-local address. The namespace itself has no route out, so neither
do pods.

Everything the plugins create lives inside the node's namespace (the bridge, the host ends of
the veths, portmap's iptables rules) or under the run's state dir (host-local's leases,
containerd's pod network namespaces, see containerd.write_config), and goes with them. The
one thing outside is libcni's result cache, /var/lib/cni/results/<network>-<sandbox>-<if>:
the network is named after the run, and containerd's loopback network's files are found by the
run's sandbox ids, so `leftovers` finds a dead run's files.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from e2e.node.netns import NetNamespace

__all__ = [
    "BIN_DIR",
    "BRIDGE",
    "GATEWAY_IP",
    "PACKAGES",
    "POD_CIDR",
    "RESULTS_DIR",
    "leftovers",
    "network_config",
    "prepare_namespace",
]

POD_CIDR = "198.18.0.0/24"  # RFC 2544 benchmarking range: routed nowhere
GATEWAY_IP = "198.18.0.1"  # on the bridge; pods' default route
BRIDGE = "piwpods0"
BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
RESULTS_DIR = Path("/var/lib/cni/results")  # libcni's cache (containerd 1.6 sets no other)
# What the node needs installed, as (a path or a command, the Debian package providing it).
# portmap (hostPort) and kube-proxy program the namespace's netfilter through iptables.
PACKAGES = {
    str(BIN_DIR / "bridge"): "containernetworking-plugins",
    "iptables": "iptables",
    "iptables-restore": "iptables",
}


def network_config(name: str, ipam_dir: Path) -> dict[str, Any]:
    """The conflist containerd loads: `name` is the run's (see `leftovers`), the leases go
    under `ipam_dir` (in the run's state dir, instead of host-local's /var/lib/cni/networks)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Nothing routes out, so there is nothing to masquerade towards.
                "ipMasq": False,
                # A pod reaching a Service whose endpoint is itself (kube-proxy DNAT back
                # through the same veth).
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def prepare_namespace(netns: NetNamespace) -> None:
    """Sysctls of the node's namespace (per namespace, so the machine's are untouched):
    forwarding between the pods' bridge and the node's addresses, and bridged traffic through
    iptables, without which a pod's reply to another pod that reached it through a Service
    IP bypasses the connection tracking that undoes kube-proxy's DNAT."""
    for setting in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"):
        subprocess.run(
            [*netns.nsenter(), "sysctl", "-q", "-w", setting],
            check=True,
            capture_output=True,
            timeout=10,
        )


def leftovers(network_name: str, sandbox_ids: Iterable[str] = ()) -> list[Path]:
    """libcni's cached results for pods of the network `network_name` (one run's), and those
    of containerd's own `cni-loopback` network for the sandboxes `sandbox_ids` (a killed run's
    pods never get the CNI DEL that removes them)."""
    if not RESULTS_DIR.is_dir():
        return []
    loopback = [RESULTS_DIR / f"cni-loopback-{sandbox}-lo" for sandbox in sandbox_ids]
    return sorted([*RESULTS_DIR.glob(f"{network_name}-*"), *(p for p in loopback if p.exists())])
