"""The single-node cluster is a real cluster: pods run, exec and logs go through the API
server, and the controllers do their jobs."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.images import Images
from e2e.node.cluster import NODE_IP, NODE_NAME, Node

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "smoke"
SMOKE_UID = 1000
# PID 1 of the test container: says it is up, then waits; exits at once on SIGTERM.
_SLEEPER = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('smoke: up as uid', os.getuid(), flush=True)\n"
    "time.sleep(1e9)\n"
)


def _pod_spec(image: str, **container: Any) -> dict[str, Any]:
    return {
        "hostNetwork": True,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", **container}],
    }


@pytest.fixture(scope="module")
def namespace(node: Node) -> str:
    node.rest.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    # The serviceaccount controller creates `default`; pods are rejected until it has.
    node.rest.wait_for(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
    return NAMESPACE


@pytest.fixture(scope="module")
def sleeper(node: Node, node_images: Images, namespace: str) -> str:
    """A hostNetwork pod of the Debian base image running as a non-root user."""
    spec = _pod_spec(
        node_images.base.ref,
        command=["python3", "-c", _SLEEPER],
        securityContext={"runAsUser": SMOKE_UID, "runAsNonRoot": True},
    )
    node.rest.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {"metadata": {"name": "sleeper", "labels": {"app": "sleeper"}}, "spec": spec},
    )
    node.wait_pod_ready(namespace, "sleeper")
    return "sleeper"


def test_the_node_registers_with_its_ip_and_is_ready(node: Node) -> None:
    status = node.rest.get(f"/api/v1/nodes/{NODE_NAME}")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert {"type": "InternalIP", "address": NODE_IP} in status["addresses"]


def test_a_hostnetwork_pod_runs_on_the_node_ip(node: Node, namespace: str, sleeper: str) -> None:
    pod = node.rest.get(f"/api/v1/namespaces/{namespace}/pods/{sleeper}")
    assert (pod["spec"]["nodeName"], pod["status"]["podIP"]) == (NODE_NAME, NODE_IP)


def test_exec_goes_through_the_api_server_as_the_pods_user(
    node: Node, namespace: str, sleeper: str
) -> None:
    result = node.exec_in_pod(namespace, sleeper, "main", ["id", "-u"])
    assert (result.rc, result.stdout.strip()) == (0, str(SMOKE_UID))


def test_exec_reports_the_commands_exit_status_and_stderr(
    node: Node, namespace: str, sleeper: str
) -> None:
    result = node.exec_in_pod(namespace, sleeper, "main", ["sh", "-c", "echo oops >&2; exit 3"])
    assert (result.rc, result.stdout, result.stderr.strip()) == (3, "", "oops")


def test_exec_of_a_missing_program_is_an_error_not_an_exit_status(
    node: Node, namespace: str, sleeper: str
) -> None:
    with pytest.raises(RuntimeError, match="no-such-program"):
        node.exec_in_pod(namespace, sleeper, "main", ["no-such-program"])


def test_logs_go_through_the_api_server(node: Node, namespace: str, sleeper: str) -> None:
    assert node.pod_logs(namespace, sleeper, "main").strip() == f"smoke: up as uid {SMOKE_UID}"


def test_the_controller_manager_publishes_the_cluster_ca_to_every_namespace(
    node: Node, namespace: str
) -> None:
    cm = node.rest.wait_for(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")
    assert cm["data"]["ca.crt"].encode() == node.ca_pem


def test_the_replicaset_controller_replaces_a_deleted_pod(
    node: Node, node_images: Images, namespace: str
) -> None:
    labels = {"app": "pause"}
    node.rest.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "pause"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec(node_images.pause.ref),
                },
            },
        },
    )
    [first] = _ready_pods(node, namespace, "app=pause")
    node.rest.delete(f"/api/v1/namespaces/{namespace}/pods/{first['metadata']['name']}")
    [replacement] = _ready_pods(node, namespace, "app=pause", not_named=first["metadata"]["name"])
    owner = replacement["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"].startswith("pause-")) == ("ReplicaSet", True)


def test_the_garbage_collector_removes_what_a_deleted_deployment_owned(
    node: Node, node_images: Images, namespace: str
) -> None:
    labels = {"app": "collected"}
    node.rest.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "collected"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec(node_images.pause.ref),
                },
            },
        },
    )
    _ready_pods(node, namespace, "app=collected")
    # Background propagation: the API server deletes only the Deployment; the garbage
    # collector then deletes the ReplicaSet, and the pod after it.
    node.rest.delete(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/collected?propagationPolicy=Background"
    )
    deadline = time.monotonic() + 60
    while True:
        sets = node.rest.get(
            f"/apis/apps/v1/namespaces/{namespace}/replicasets?labelSelector=app=collected"
        )
        pods = node.rest.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app=collected")
        if not sets["items"] and not pods["items"]:
            break
        assert time.monotonic() < deadline, "the ReplicaSet or its pod outlived the Deployment"
        time.sleep(0.5)


def test_a_service_gets_the_pods_node_ip_as_its_endpoint(
    node: Node, namespace: str, sleeper: str
) -> None:
    """What the API server calls a webhook Service through (--enable-aggregator-routing)."""
    node.rest.create(
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "sleeper"},
            "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 443, "targetPort": 8443}]},
        },
    )
    path = (
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        "?labelSelector=kubernetes.io/service-name=sleeper"
    )
    deadline = time.monotonic() + 30
    while True:
        slices = node.rest.get(path)["items"]
        addresses = [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]
        if addresses:
            break
        assert time.monotonic() < deadline, f"no endpoints for the sleeper Service: {slices}"
        time.sleep(0.5)
    assert addresses == [NODE_IP]
    assert [p["port"] for s in slices for p in s["ports"]] == [8443]


def _ready_pods(
    node: Node, namespace: str, selector: str, *, not_named: str = "", timeout: float = 90
) -> list[dict[str, Any]]:
    """The one live pod matching `selector` (and not named `not_named`), once Ready."""
    deadline = time.monotonic() + timeout
    while True:
        items = node.rest.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
        live = [
            p
            for p in items["items"]
            if "deletionTimestamp" not in p["metadata"] and p["metadata"]["name"] != not_named
        ]
        if len(live) == 1:
            node.wait_pod_ready(namespace, live[0]["metadata"]["name"])
            return live
        assert time.monotonic() < deadline, f"{len(live)} live pods match {selector}, want 1"
        time.sleep(0.5)
