"""`helm test` of the installed release on the real node: the chart's test pod (the webhook
image) dry-runs a pod for an annotated ServiceAccount and finds the env and token volume the
webhook injected; the hook's objects are gone afterwards."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client as k8s_client

from e2e.node.cluster import Node
from e2e.node.walkthrough import Release, typed_api

HELM_TIMEOUT_SECONDS = 180


def _namespace_gone(node: Node, name: str, timeout: float = 120.0) -> bool:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = {n.metadata.name for n in core.list_namespace().items}
        if name not in names:
            return True
        time.sleep(1.0)
    return False


def test_helm_test_passes_and_cleans_up(node: Node, release: Release) -> None:
    tester = f"{release.deployment}-tester"
    # No --logs: helm <= 3.22 reads every test hook (our Namespace, RBAC, ConfigMap too) as a
    # pod's logs and fails (helm/helm#32129), and a passing test's pod is deleted anyway.
    proc = node.helm(
        "test", release.name, "-n", release.namespace, f"--timeout={HELM_TIMEOUT_SECONDS}s",
        check=False, timeout=HELM_TIMEOUT_SECONDS + 30,
    )  # fmt: skip
    if proc.returncode != 0:  # helm prints a failed tester's log (hook-output-log-policy)
        raise AssertionError(f"helm test failed:\n{proc.stdout}\n{proc.stderr}")
    suites = proc.stdout.split("TEST SUITE:")[1:]
    assert any(s.split()[0] == tester and "Phase:          Succeeded" in s for s in suites), (
        proc.stdout
    )
    # hook-delete-policy hook-succeeded: the tester's pod, RBAC and namespace are removed.
    core: Any = typed_api(k8s_client.CoreV1Api, node.api)
    pods = core.list_namespaced_pod(release.namespace, field_selector=f"metadata.name={tester}")
    assert pods.items == []
    assert _namespace_gone(node, f"{release.deployment}-test")
