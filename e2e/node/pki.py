"""The node's certificates, keys and kubeconfigs: one CA signs them all.

Identities are the ones kubeadm gives each component, so the API server's Node
authorizer, NodeRestriction and the bootstrap RBAC roles apply to them unchanged.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from e2e.controlplane import _CA, _write_key

__all__ = ["NodePKI", "write_kubeconfig"]


@dataclass(frozen=True)
class _Pair:
    cert: Path
    key: Path


class NodePKI:
    """Writes everything into `directory` on construction."""

    def __init__(
        self, directory: Path, *, node_name: str, node_ip: str, apiserver_hosts: list[str]
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca_file = directory / "ca.crt"
        self.ca_key_file = directory / "ca.key"
        self._ca = _CA(self.ca_file, self.ca_key_file)

        self.apiserver = self._serving("apiserver", "kube-apiserver", apiserver_hosts)
        # kubelet serving cert signed by the cluster CA: the API server verifies it
        # (--kubelet-certificate-authority) when it proxies exec, logs and port-forward.
        self.kubelet_serving = self._serving("kubelet-serving", node_name, [node_ip, node_name])
        self.admin = self._client("admin", "admin", ["system:masters"])
        # The API server's identity towards the kubelet, which authorizes it by webhook.
        self.apiserver_kubelet_client = self._client(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        )
        self.kubelet = self._client("kubelet", f"system:node:{node_name}", ["system:nodes"])
        self.controller_manager = self._client(
            "controller-manager", "system:kube-controller-manager", []
        )
        self.scheduler = self._client("scheduler", "system:kube-scheduler", [])
        # Bound to the system:node-proxier ClusterRole by the bootstrap RBAC policy.
        self.kube_proxy = self._client("kube-proxy", "system:kube-proxy", [])

        # RS256 service-account tokens, like EKS's.
        self.sa_key_file = directory / "sa.key"
        self.sa_pub_file = directory / "sa.pub"
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(self.sa_key_file, sa_key)
        self.sa_pub_file.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _serving(self, stem: str, common_name: str, hosts: list[str]) -> _Pair:
        pair = _Pair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        self._ca.issue(pair.cert, pair.key, common_name=common_name, hosts=hosts)
        return pair

    def _client(self, stem: str, common_name: str, organizations: list[str]) -> _Pair:
        pair = _Pair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        self._ca.issue(
            pair.cert, pair.key, common_name=common_name, organizations=organizations, client=True
        )
        return pair

    def issue_serving_cert(self, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A serving cert (cert, key) signed by the cluster CA, e.g. for a webhook."""
        pair = self._serving(name, name, hosts)
        return pair.cert, pair.key

    def kubeconfig(self, path: Path, server: str, client: _Pair) -> Path:
        return write_kubeconfig(path, server, self.ca_file, client.cert, client.key)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> Path:
    """A kubeconfig with embedded credentials (JSON, which is valid YAML)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "node", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": "user",
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": "node", "context": {"cluster": "node", "user": "user"}}],
        "current-context": "node",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path
