"""A real single-node Kubernetes cluster sealed in its own network namespace.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd and the
kubelet all run inside `piw-node-<id>`, and so does the test process (`Node.start()`
enters it), so the node has a real, non-loopback IP and nothing can leave the machine:

    node = Node(tools_dir(), pause_archive=..., pause_ref="localhost/piw-e2e/pause:3.10")
    node.start()
    try:
        node.import_image(archive, "localhost/piw-e2e/debian-python:...")
        ...  # node.api (ApiClient), node.exec_in_pod(...), node.helm("install", ...)
    finally:
        node.stop()

Addresses inside the namespace (never 10/8, 172.16/12 or 192.168/16):
  192.0.2.10      the node IP, on an inert bridge (piw0): API server (:443), kubelet
                  (:10250), hostNetwork pods
  198.18.0.0/24   the pod network (cni.py): CNI bridge + host-local, gateway 198.18.0.1
  198.19.0.0/16   the Service CIDR; kube-proxy (kubeproxy.py) DNATs its ClusterIPs, e.g.
                  198.19.0.1:443, the `kubernetes` Service, to 192.0.2.10:443
  169.254.170.23  the EKS Pod Identity agent's address, for an agent emulator.

Pods use `imagePullPolicy: Never` (nothing can be pulled; see `import_image`); they run on
the pod network unless they ask for `hostNetwork: true`. No route leads out of the namespace.

Every start first removes what killed runs left behind (runs.sweep_dead_runs), and
`stop()` removes all of this run: processes, mounts, cgroups, the namespace, files.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from e2e.controlplane import _Server, _tail
from e2e.node import cgroups, cni, containerd, kubeproxy, pods, runs
from e2e.node.netns import NetNamespace
from e2e.node.pki import NodePKI
from e2e.node.rest import ApiError, Rest

__all__ = [
    "AGENT_IP",
    "API_PORT",
    "DEFAULT_STATE_ROOT",
    "KUBERNETES_SERVICE_IP",
    "NODE_IP",
    "NODE_NAME",
    "POD_CIDR",
    "SERVICE_CIDR",
    "Node",
    "NodeError",
]

NODE_IP = "192.0.2.10"  # TEST-NET-1: never routed anywhere
SERVICE_CIDR = "198.19.0.0/16"  # RFC 2544 benchmarking range, as the pods' (cni.POD_CIDR)
KUBERNETES_SERVICE_IP = "198.19.0.1"  # the first address: the API server allocates it
POD_CIDR = cni.POD_CIDR
ENDPOINT_BATCH_SECONDS = 1
AGENT_IP = "169.254.170.23"
API_PORT = 443
NODE_NAME = "piw-node"
DEFAULT_STATE_ROOT = Path("/var/lib/piw-node")
_ETCD_URL = "http://127.0.0.1:2379"  # the namespace's own loopback: no port clashes
_API_AUDIENCES = ("https://kubernetes.default.svc",)
_TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "helm",
)


_SERVICE_ACCOUNT_KEY_FLAGS = (
    "--service-account-key-file=",
    "--service-account-signing-key-file=",
)


def _service_account_key_args(public: Sequence[Path], signing: Path) -> list[str]:
    keys = [f"--service-account-key-file={p}" for p in public]
    return [*keys, f"--service-account-signing-key-file={signing}"]


class NodeError(RuntimeError):
    """A component failed to start, died, or the node did not become usable."""


_LIVE: set[Node] = set()


@atexit.register
def _stop_all() -> None:
    for node in list(_LIVE):
        node.stop()


class Node:
    """One node; see the module docstring. All attributes are valid after `start()`.

    Public attributes: `run_id`, `netns` (NetNamespace), `state_dir`, `log_dir`,
    `kubeconfig` (admin, system:masters), `api_url`, `node_ip`, `node_name`, `issuer`,
    `ca_file`, `ca_pem`, `helm_path`, `pki` (NodePKI), `timings` (seconds per
    start-up phase).
    """

    def __init__(
        self,
        tools: Path,
        *,
        pause_archive: Path,
        pause_ref: str,
        state_root: Path | None = None,
        log_dir: Path | None = None,
        extra_apiserver_args: Sequence[str] = (),
        ready_timeout: float = 180.0,
        issuer: str | None = None,
        service_account_jwks_uri: str | None = None,
    ) -> None:
        missing = [n for n in _TOOLS if not os.access(tools / n, os.X_OK)]
        if missing:
            raise NodeError(f"{tools} lacks {', '.join(missing)} (run e2e/tools/build.sh)")
        self.tools = tools
        self.pause_archive = pause_archive
        self.pause_ref = pause_ref
        root = state_root or Path(os.environ.get("PIW_NODE_STATE_ROOT", DEFAULT_STATE_ROOT))
        self._run = runs.Run(root)
        self.run_id = self._run.id
        self.state_dir = self._run.state_dir
        # Outside the state dir, which stop() removes.
        self.log_dir = log_dir or root / "logs" / self.run_id
        self.netns = NetNamespace(self._run.name)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.ready_timeout = ready_timeout

        self.node_ip = NODE_IP
        self.node_name = NODE_NAME
        self.api_url = f"https://{NODE_IP}"  # API_PORT is 443: like EKS's, no port in it
        # An external issuer (e2e/node/issuer.py), as self-managed clusters have; by
        # default the API server is its own issuer, as on EKS.
        self.issuer = issuer or self.api_url
        self.service_account_jwks_uri = service_account_jwks_uri
        self.helm_path = tools / "helm"
        self.kubeconfig = self.state_dir / "admin.kubeconfig"
        self.cgroup_root = "/" + self._run.name
        self._containerd = self._run.containerd
        self._servers: list[_Server] = []
        self._api: k8s_client.ApiClient | None = None
        self.timings: dict[str, float] = {}
        self.rest: Rest  # admin JSON requests, set once the API server runs
        self._mark = 0.0
        self.pki: NodePKI

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Brings the node up; on failure removes it again and re-raises with the logs'
        location. Must be called before the process starts any thread."""
        t0 = self._mark = time.monotonic()
        # Outside the namespace: apt may need the network.
        containerd.ensure_installed()
        swept = runs.sweep_dead_runs(self._run.state_root)
        if swept:
            print(f"node: removed leftovers of dead runs {', '.join(swept)}")
        if not self._run.try_lock():
            raise NodeError(f"run id {self.run_id} is in use")
        _LIVE.add(self)
        try:
            self.state_dir.mkdir(parents=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._phase("cleanup of dead runs")
            self.netns = NetNamespace.create(
                self._run.name, [NODE_IP, AGENT_IP], routes=[SERVICE_CIDR]
            )
            cni.prepare_namespace(self.netns)
            self.netns.enter()
            cgroups.create(self._run.name)
            self.pki = NodePKI(
                self.state_dir / "pki",
                node_name=NODE_NAME,
                node_ip=NODE_IP,
                apiserver_hosts=[
                    NODE_IP,
                    KUBERNETES_SERVICE_IP,
                    "127.0.0.1",
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
            )
            self._phase("namespace and PKI")
            self._start_etcd()
            self._phase("etcd")
            self._start_apiserver()
            self._phase("kube-apiserver ready")
            self._start_controllers()
            self._start_containerd()
            self._phase("containerd ready, pause image imported")
            self._start_kubelet()
            self._wait_node_ready()
            self._phase("kubelet registered, node Ready")
            self._start_kube_proxy()
            self._phase("kube-proxy: the kubernetes Service reachable")
            self._wait_controllers_working()
            self._phase("controller-manager: default SA and kube-root-ca.crt")
            self.timings["total"] = round(time.monotonic() - t0, 2)
        except BaseException as e:
            e.add_note(f"node logs: {self.log_dir}")
            self.stop()
            raise

    def stop(self) -> None:
        """Stops everything and removes the run's state (idempotent); logs stay."""
        if self not in _LIVE:
            return
        if self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]
            self._api = None
        # kubelet first so it does not restart containers while containerd goes away.
        for server in reversed(self._servers):
            server.stop(timeout=10.0)
        self._servers.clear()
        self.netns.leave()
        try:
            self._run.remove_everything()
        finally:
            self._run.unlock()
            _LIVE.discard(self)

    def _phase(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._mark, 2)
        self._mark = now

    # --- components ----------------------------------------------------------------

    def _server(self, name: str, args: list[str]) -> _Server:
        server = _Server(name, [*self.netns.nsenter(), *args], self.log_dir / f"{name}.log")
        server.start()
        self._servers.append(server)
        return server

    def _wait(self, server: _Server, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not server.alive():
                raise NodeError(f"{server.name} exited\n{_tail(server.log_path)}")
            try:
                if probe():
                    return
            except (OSError, ValueError, ApiError) as e:
                last = repr(e)
            time.sleep(0.25)
        raise NodeError(f"{what} not ready after {timeout:.0f}s ({last})\n{_tail(server.log_path)}")

    def _start_etcd(self) -> None:
        etcd = self._server(
            "etcd",
            [
                str(self.tools / "etcd"),
                "--name=piw-node",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={_ETCD_URL}",
                f"--advertise-client-urls={_ETCD_URL}",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=piw-node=http://127.0.0.1:2380",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # disposable data; fsync dominates etcd latency
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{_ETCD_URL}/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        self._wait(etcd, healthy, "etcd /health", 30.0)

    def _start_apiserver(self) -> None:
        pki = self.pki
        apiserver = self._server(
            "kube-apiserver",
            [
                str(self.tools / "kube-apiserver"),
                f"--etcd-servers={_ETCD_URL}",
                # 0.0.0.0 inside the namespace: the node IP and the Service IP.
                "--bind-address=0.0.0.0",
                f"--secure-port={API_PORT}",
                f"--advertise-address={NODE_IP}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca_file}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,ServiceAccount,"
                "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                # For the public OIDC discovery endpoints; RBAC still gates the rest.
                "--anonymous-auth=true",
                f"--service-account-issuer={self.issuer}",
                *_service_account_key_args([pki.sa_pub_file], pki.sa_key_file),
                *(
                    [f"--service-account-jwks-uri={self.service_account_jwks_uri}"]
                    if self.service_account_jwks_uri
                    else []
                ),
                f"--api-audiences={','.join((self.issuer, *_API_AUDIENCES))}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # exec/logs/port-forward: to the node IP, mutually authenticated.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                f"--kubelet-certificate-authority={pki.ca_file}",
                # Webhook Services are called through their endpoints (pod IPs), resolved by
                # the API server itself, with its pooled keep-alive connections to each.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.state_dir / 'pki'}",
                *self.extra_apiserver_args,
            ],
        )
        pki.kubeconfig(self.kubeconfig, self.api_url, pki.admin)
        self.rest = Rest(self.api_url, pki.ca_file, pki.admin.cert, pki.admin.key)
        self._wait_apiserver_ready(apiserver)
        self._allow_public_oidc_discovery()

    def _wait_apiserver_ready(self, apiserver: _Server) -> None:
        def ready() -> bool:
            return self.rest.request("GET", "/readyz", timeout=3)[0] == 200

        self._wait(apiserver, ready, "kube-apiserver /readyz", 90.0)

    def restart_apiserver(
        self, *, service_account_key_files: Sequence[Path], service_account_signing_key_file: Path
    ) -> None:
        """Restarts kube-apiserver with other service-account keys, as a key rotation does
        (verifying with old and new public keys, signing with the new), until it is ready."""
        apiserver = next(s for s in self._servers if s.name == "kube-apiserver")
        kept = [a for a in apiserver.args if not a.startswith(_SERVICE_ACCOUNT_KEY_FLAGS)]
        keys = _service_account_key_args(
            service_account_key_files, service_account_signing_key_file
        )
        apiserver.stop(timeout=30.0)
        apiserver.args = [*kept, *keys]
        apiserver.start()
        self._wait_apiserver_ready(apiserver)

    def _allow_public_oidc_discovery(self) -> None:
        # As on EKS: the issuer's discovery document and JWKS are public.
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "piw-e2e:service-account-issuer-discovery-public"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:service-account-issuer-discovery",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "system:unauthenticated",
                }
            ],
        }
        self.rest.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body)

    def _start_controllers(self) -> None:
        pki = self.pki
        kcm_config = pki.kubeconfig(
            self.state_dir / "controller-manager.kubeconfig", self.api_url, pki.controller_manager
        )
        self._server(
            "kube-controller-manager",
            [
                str(self.tools / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                "--secure-port=0",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, as on a real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key_file}",
                f"--root-ca-file={pki.ca_file}",
                f"--cluster-signing-cert-file={pki.ca_file}",
                f"--cluster-signing-key-file={pki.ca_key_file}",
                # Endpoint changes reach the API server up to 1 s late, as on a loaded or
                # multi-server control plane: a replica that stops listening before its
                # endpoint is gone is then dialled (test_rollout.py's control shows it).
                f"--endpointslice-updates-batch-period={ENDPOINT_BATCH_SECONDS}s",
            ],
        )
        sched_config = pki.kubeconfig(
            self.state_dir / "scheduler.kubeconfig", self.api_url, pki.scheduler
        )
        self._server(
            "kube-scheduler",
            [
                str(self.tools / "kube-scheduler"),
                f"--kubeconfig={sched_config}",
                "--secure-port=0",
                "--leader-elect=false",
            ],
        )

    def _start_containerd(self) -> None:
        layout = self._containerd
        layout.directory.mkdir(parents=True, exist_ok=True)
        network = cni.network_config(self._run.name, layout.cni_ipam_dir)
        containerd.write_config(layout, sandbox_image=self.pause_ref, network=network)
        server = self._server("containerd", ["containerd", f"--config={layout.config}"])

        def serving() -> bool:
            containerd.image_refs(layout)
            return True

        self._wait(server, lambda: layout.socket.exists() and serving(), "containerd", 30.0)
        self.import_image(self.pause_archive, self.pause_ref)

    def _start_kubelet(self) -> None:
        pki = self.pki
        kubelet_dir = self.state_dir / "kubelet"
        kubelet_dir.mkdir()
        kubeconfig = pki.kubeconfig(
            self.state_dir / "kubelet.kubeconfig", self.api_url, pki.kubelet
        )
        # No cluster DNS here; an explicit empty file keeps the host's out of pods.
        resolv = self.state_dir / "resolv.conf"
        resolv.write_text("# the sealed node has no DNS\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "tlsCertFile": str(pki.kubelet_serving.cert),
            "tlsPrivateKeyFile": str(pki.kubelet_serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": self._containerd.endpoint,
            # This machine: cgroup v1 (hybrid), no systemd, swap allowed.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            # Every pod cgroup under one top-level name, so cleanup finds them all.
            "cgroupRoot": self.cgroup_root,
            "resolvConf": str(resolv),
            "podLogsDir": str(self.state_dir / "pod-logs"),
            "volumePluginDir": str(kubelet_dir / "volume-plugins"),
            # A shared machine's disk and memory must not evict test pods, and image
            # GC must never delete imported images (they cannot be pulled again).
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
        }
        config_file = self.state_dir / "kubelet-config.json"
        config_file.write_text(json.dumps(config, indent=2))
        self._server(
            "kubelet",
            [
                str(self.tools / "kubelet"),
                f"--config={config_file}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.pki.kubeconfig(
            self.state_dir / "kube-proxy.kubeconfig", self.api_url, self.pki.kube_proxy
        )
        config = kubeproxy.write_config(
            self.state_dir / "kube-proxy-config.json",
            kubeconfig=kubeconfig,
            node_name=NODE_NAME,
            cluster_cidr=POD_CIDR,
        )
        server = self._server("kube-proxy", kubeproxy.command(self.tools / "kube-proxy", config))
        what = f"kube-proxy: the kubernetes Service at {KUBERNETES_SERVICE_IP}:{API_PORT}"
        self._wait(server, lambda: kubeproxy.reaches(KUBERNETES_SERVICE_IP, API_PORT), what, 60.0)

    def _kubelet(self) -> _Server:
        return next(s for s in self._servers if s.name == "kubelet")

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            status, raw = self.rest.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            if status != 200:
                return False
            conditions = json.loads(raw).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        self._wait(self._kubelet(), ready, f"node {NODE_NAME} Ready", self.ready_timeout)

    def _wait_controllers_working(self) -> None:
        kcm = next(s for s in self._servers if s.name == "kube-controller-manager")

        def published() -> bool:
            # Without kube-root-ca.crt the kubelet cannot build any pod's token volume.
            paths = (
                "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
                "/api/v1/namespaces/default/serviceaccounts/default",
            )
            return all(self.rest.request("GET", p)[0] == 200 for p in paths)

        self._wait(kcm, published, "kube-root-ca.crt and the default ServiceAccount", 60.0)

    # --- public helpers -----------------------------------------------------------------

    @property
    def api(self) -> k8s_client.ApiClient:
        """An admin ApiClient (created inside the namespace on first use)."""
        if self._api is None:
            self._api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
        return self._api

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    @property
    def ca_pem(self) -> bytes:
        return self.pki.ca_file.read_bytes()

    def import_image(self, archive: Path, ref: str | None = None) -> set[str]:
        """Imports an image archive into containerd's `k8s.io` namespace (the CRI's).

        Returns the names imported; with `ref`, fails unless that exact name is now
        known. Pods then use `image: <ref>` with `imagePullPolicy: Never`.
        """
        return containerd.import_image(self._containerd, archive, ref)

    def images(self) -> set[str]:
        """Names of the images the runtime holds."""
        return containerd.image_refs(self._containerd)

    def exec_in_pod(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        argv: list[str],
        *,
        timeout: float = 60.0,
    ) -> pods.ExecResult:
        """`kubectl exec` through the API server; see pods.exec_in_pod."""
        return pods.exec_in_pod(self.api, namespace, pod, container, argv, timeout=timeout)

    def pod_logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        return pods.pod_logs(self.api, namespace, pod, container)

    def wait_pod_ready(self, namespace: str, pod: str, *, timeout: float = 120.0) -> Any:
        """Waits for the Ready condition; returns the V1Pod (see pods.wait_pod_ready)."""
        return pods.wait_pod_ready(self.api, namespace, pod, timeout=timeout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs the pinned helm with this node's admin kubeconfig (inside the namespace).

        With `check`, a non-zero exit raises NodeError carrying helm's output.
        """
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # helm's caches and config must not come from (or go to) the user's home.
            "HELM_CACHE_HOME": str(self.state_dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.state_dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.state_dir / "helm" / "data"),
        }
        proc = subprocess.run(
            [*self.netns.nsenter(), str(self.helm_path), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NodeError(
                f"helm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def issue_serving_cert(self, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A serving cert (cert, key) signed by the cluster CA (`ca_pem` verifies it)."""
        return self.pki.issue_serving_cert(name, hosts)

    def logs(self) -> dict[str, Path]:
        """Log file of each component, by name."""
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    def __repr__(self) -> str:
        return f"Node(run_id={self.run_id!r}, api_url={self.api_url!r}, state_dir={str(self.state_dir)!r})"
