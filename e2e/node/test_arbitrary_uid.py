"""The image under OpenShift's rules: restricted-v2 runs a pod as an arbitrary UID from the
namespace's range (e.g. 1000680000), GID 0, with a read-only root filesystem and no
capabilities. The webhook must start, become Ready and answer reviews that way."""

from __future__ import annotations

import json

from kubernetes import client as k8s_client

from e2e.images import Images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.pods import create_until_mutated
from e2e.node.walkthrough import (
    Release,
    ensure_namespace,
    ensure_service_account,
    install_webhook,
    typed_api,
    uninstall_webhook,
    webhook_pods,
)

UID = 1000680000  # what restricted-v2 assigns from a namespace's openshift.io/sa.scc.uid-range
GID = 0
PREFIX = "uid.example.com"  # its own annotation domain: only this release mutates the probe


def test_an_arbitrary_uid_with_gid_0_and_no_capabilities_answers_a_review(
    node: Node, node_images: Images, release: Release
) -> None:
    uid_release = install_webhook(
        node,
        node_images,
        name="uid",
        namespace="piw-uid",
        values={
            "deployment": {"replicas": 1},
            "podDisruptionBudget": {"enabled": False},
            "podSecurityContext": {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": GID,
                "fsGroup": GID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "config": {"annotationPrefix": PREFIX},
            "containerCredentials": {"enabled": False},
        },
    )
    try:
        (pod,) = [
            p for p in webhook_pods(node, uid_release) if p.metadata.deletion_timestamp is None
        ]
        container = pod.spec.containers[0]
        assert container.security_context.read_only_root_filesystem is True
        assert container.security_context.capabilities.drop == ["ALL"]
        assert not container.security_context.capabilities.add
        # What the kernel says the server runs as, not only what the spec asked for.
        probe = node.exec_in_pod(
            uid_release.namespace,
            pod.metadata.name,
            None,
            ["python3", "-c", "import json, os; print(json.dumps([os.getuid(), os.getgid()]))"],
        )
        assert probe.rc == 0, probe.stderr
        assert json.loads(probe.stdout) == [UID, GID]

        ensure_namespace(node, "uid-demo")
        role = "arn:aws:iam::111122223333:role/arbitrary-uid"
        ensure_service_account(node, "uid-demo", "app", {f"{PREFIX}/role-arn": role})
        mutated = create_until_mutated(node.api, "uid-demo", "app", "AWS_ROLE_ARN")
        env = {e.name: e.value for e in mutated.spec.containers[0].env or []}
        assert env.get("AWS_ROLE_ARN") == role
        core = typed_api(k8s_client.CoreV1Api, node.api)
        restarts = core.read_namespaced_pod(pod.metadata.name, uid_release.namespace).status
        assert all(cs.restart_count == 0 for cs in restarts.container_statuses)
        summary.add(f"arbitrary uid: {UID}/{GID} answered a review")
    finally:
        uninstall_webhook(node, uid_release)
