"""The node's pod network: pods get their own IPs from the benchmarking range, reach the
`kubernetes` Service and each other through ClusterIPs (kube-proxy), and nothing beyond the
node's namespace."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

import pytest

from e2e.images import Images
from e2e.node.cluster import (
    API_PORT,
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    POD_CIDR,
    SERVICE_CIDR,
    Node,
)

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "podnet"
SERVER_PORT = 8080
# Answers every GET with the pod's own name; exits at once on SIGTERM.
_SERVER = (
    "import http.server, signal, socket, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    f"http.server.HTTPServer(('', {SERVER_PORT}), H).serve_forever()\n"
)
# Run in a pod: one TCP connection (and an HTTP GET when `get`), reported as JSON.
_CONNECT = """
import json, socket, sys
host, port, get = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "get"
try:
    with socket.create_connection((host, port), timeout=3) as s:
        body = ""
        if get:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            body = b"".join(iter(lambda: s.recv(4096), b"")).decode().split("\\r\\n\\r\\n", 1)[1]
    print(json.dumps({"ok": True, "body": body}))
except OSError as e:
    print(json.dumps({"ok": False, "error": type(e).__name__ + ": " + str(e)}))
"""


def _pod(name: str, image: str, argv: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": argv}
            ],
        },
    }


@pytest.fixture(scope="module")
def pods(node: Node, node_images: Images) -> dict[str, Any]:
    """A server pod behind a ClusterIP Service, and a client pod; both on the pod network."""
    node.rest.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    node.rest.wait_for(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
    image = node_images.base.ref
    for name, argv in (
        ("server", ["python3", "-c", _SERVER]),
        ("client", ["python3", "-c", "import time; time.sleep(1e9)"]),
    ):
        node.rest.create(f"/api/v1/namespaces/{NAMESPACE}/pods", _pod(name, image, argv))
    node.rest.create(
        f"/api/v1/namespaces/{NAMESPACE}/services",
        {
            "metadata": {"name": "server"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    found = {name: node.wait_pod_ready(NAMESPACE, name) for name in ("server", "client")}
    service = node.rest.get(f"/api/v1/namespaces/{NAMESPACE}/services/server")
    return {**found, "service_ip": service["spec"]["clusterIP"]}


def _connect(node: Node, pod: str, host: str, port: int, *, get: bool = False) -> dict[str, Any]:
    argv = ["python3", "-c", _CONNECT, host, str(port), "get" if get else "connect"]
    result = node.exec_in_pod(NAMESPACE, pod, "main", argv)
    assert result.rc == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_pods_get_distinct_ips_from_the_pod_cidr(pods: dict[str, Any]) -> None:
    ips = [pods[name].status.pod_ip for name in ("server", "client")]
    assert len(set(ips)) == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR) for ip in ips), ips


def test_a_pod_reaches_the_kubernetes_service(node: Node, pods: dict[str, Any]) -> None:
    assert ipaddress.ip_address(KUBERNETES_SERVICE_IP) in ipaddress.ip_network(SERVICE_CIDR)
    assert _connect(node, "client", KUBERNETES_SERVICE_IP, API_PORT)["ok"] is True


def test_a_pod_reaches_another_through_its_cluster_ip(node: Node, pods: dict[str, Any]) -> None:
    deadline = time.monotonic() + 30  # kube-proxy syncs the new endpoint within a second or so
    while (answer := _connect(node, "client", pods["service_ip"], 80, get=True))["ok"] is False:
        assert time.monotonic() < deadline, answer
        time.sleep(1)
    assert answer["body"] == "server"


def test_a_pod_reaches_itself_through_its_own_service(node: Node, pods: dict[str, Any]) -> None:
    """Hairpin: the DNAT sends the packet back out of the veth it came in on."""
    answer = _connect(node, "server", pods["service_ip"], 80, get=True)
    assert answer == {"ok": True, "body": "server"}


def test_a_pod_reaches_the_node_ip_and_a_pod_ip_directly(node: Node, pods: dict[str, Any]) -> None:
    assert _connect(node, "client", NODE_IP, API_PORT)["ok"] is True
    assert _connect(node, "client", pods["server"].status.pod_ip, SERVER_PORT, get=True) == {
        "ok": True,
        "body": "server",
    }


def test_nothing_routes_out_of_the_node(node: Node, pods: dict[str, Any]) -> None:
    # TEST-NET-3: would go to the default route of any real network.
    answer = _connect(node, "client", "203.0.113.1", 80)
    assert answer["ok"] is False
    assert "unreachable" in answer["error"].lower() or "timed out" in answer["error"], answer
