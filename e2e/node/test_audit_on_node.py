"""`pod-identity-webhook audit` on a real node: a Deployment's pod started before its
ServiceAccount got a role is found, and `audit --restart --yes` has the real
controller-manager replace it with a pod that has credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from kubernetes import client as k8s_client

from e2e.images import Images
from e2e.node.cluster import Node
from e2e.node.walkthrough import (
    DEMO_UID,
    ROLE_ANNOTATION,
    Release,
    ensure_namespace,
    ensure_service_account,
    typed_api,
)

NAMESPACE = "audit-demo"
ACCOUNT = "legacy"
ROLE = "arn:aws:iam::111122223333:role/legacy-app"
LABELS = {"app": "legacy"}


def _deployment(images: Images) -> dict[str, Any]:
    return {
        "metadata": {"name": "legacy"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "serviceAccountName": ACCOUNT,
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": DEMO_UID},
                    "containers": [
                        {"name": "app", "image": images.demo.ref, "imagePullPolicy": "Never"}
                    ],
                },
            },
        },
    }


def _pods(node: Node) -> list[Any]:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    return list(core.list_namespaced_pod(NAMESPACE, label_selector="app=legacy").items)


def _ready(pod: Any) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def _has_role(pod: Any) -> bool:
    return any(e.name == "AWS_ROLE_ARN" for e in pod.spec.containers[0].env or [])


def _wait_for(what: str, predicate: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _audit(node: Node, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "webhook", "audit", "--kubeconfig", str(node.kubeconfig),
         "-n", NAMESPACE, "-o", "json", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_audit_finds_the_pod_started_before_its_role_and_restart_replaces_it(
    node: Node, node_images: Images, release: Release
) -> None:
    ensure_namespace(node, NAMESPACE)
    ensure_service_account(node, NAMESPACE, ACCOUNT, {})
    apps = typed_api(k8s_client.AppsV1Api, node.api)
    apps.create_namespaced_deployment(NAMESPACE, _deployment(node_images))
    old = _wait_for("the legacy pod to run", lambda: [p for p in _pods(node) if _ready(p)])[0]
    assert not _has_role(old)

    # The role arrives after the pod started: the running pod can never get it by itself.
    ensure_service_account(node, NAMESPACE, ACCOUNT, {ROLE_ANNOTATION: ROLE})
    code, report = _audit(node)
    assert code == 1
    workloads = {(w["kind"], w["name"]): w for w in report["notInjected"]}
    assert set(workloads) == {("Deployment", "legacy")}
    assert [p["name"] for p in workloads[("Deployment", "legacy")]["pods"]] == [old.metadata.name]

    code, report = _audit(node, "--restart", "--yes")
    assert [(r["kind"], r["name"], r["status"]) for r in report["restarts"]] == [
        ("Deployment", "legacy", "restarted")
    ]

    # The real Deployment and ReplicaSet controllers roll it; the webhook mutates the new pod.
    def replaced() -> list[Any]:
        pods = _pods(node)
        fresh = [p for p in pods if p.metadata.name != old.metadata.name and _ready(p)]
        gone = all(p.metadata.name != old.metadata.name for p in pods)
        return fresh if fresh and gone else []

    new = _wait_for("the restarted pod", replaced)[0]
    assert _has_role(new)
    env = {e.name: e.value for e in new.spec.containers[0].env}
    assert env["AWS_ROLE_ARN"] == ROLE
    code, report = _audit(node)
    assert code == 0 and report["notInjected"] == []
