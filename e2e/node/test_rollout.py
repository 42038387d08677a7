"""Rollouts and node faults lose no credentials.

With `failurePolicy: Ignore` (the default, as upstream) a review that fails admits the pod
unmutated: on EC2 it would silently run with the node's role. So while pods of an annotated
ServiceAccount are created at about 10/s for 60 s, the webhook is rolled (`helm upgrade` with a
changed value) and one of its pods is deleted; every stored pod must carry the injection.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client

from e2e.images import Images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.walkthrough import (
    ROLE_ANNOTATION,
    Release,
    ensure_namespace,
    ensure_service_account,
    install_webhook,
    typed_api,
    wait_rollout,
    webhook_pods,
)

NAMESPACE = "rollout"
ACCOUNT = "worker"
ROLE = "arn:aws:iam::111122223333:role/rollout-worker"
RATE = 10.0  # pods per second
DURATION = 60.0  # seconds


@dataclass
class Creator:
    """Creates gated (never scheduled) pods at a fixed rate; remembers what the API stored."""

    api: k8s_client.ApiClient
    prefix: str = "w"
    duration: float = DURATION
    stored: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        core = typed_api(k8s_client.CoreV1Api, self.api)
        start = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - start < self.duration:
            name = f"{self.prefix}-{n:04d}"
            body: dict[str, Any] = {
                "metadata": {"name": name, "labels": {"app": f"rollout-{self.prefix}"}},
                "spec": {
                    "serviceAccountName": ACCOUNT,
                    "schedulingGates": [{"name": "piw.e2e/never-scheduled"}],
                    "containers": [{"name": "c", "image": "localhost/none:0"}],
                },
            }
            try:
                self.stored.append(core.create_namespaced_pod(NAMESPACE, body))
            except Exception as e:  # every failure is counted, none stops the loop
                self.errors.append(f"{name}: {e}")
            n += 1
            delay = start + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _injected(pod: Any) -> bool:
    env = {e.name for e in pod.spec.containers[0].env or []}
    volumes = {v.name for v in pod.spec.volumes or []}
    return {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} <= env and "aws-iam-token" in volumes


def _wait_mutating(node: Node) -> None:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    deadline = time.monotonic() + 30
    body = {
        "metadata": {"generateName": "probe-"},
        "spec": {
            "serviceAccountName": ACCOUNT,
            "containers": [{"name": "c", "image": "localhost/none:0"}],
        },
    }
    while not _injected(core.create_namespaced_pod(NAMESPACE, body, dry_run="All")):
        assert time.monotonic() < deadline, "the webhook never saw the annotated ServiceAccount"
        time.sleep(0.5)


def test_a_rolling_upgrade_and_a_deleted_webhook_pod_drop_no_pod_credentials(
    node: Node, node_images: Images, release: Release
) -> None:
    ensure_namespace(node, NAMESPACE)
    ensure_service_account(node, NAMESPACE, ACCOUNT, {ROLE_ANNOTATION: ROLE})
    _wait_mutating(node)
    before = {p.metadata.name for p in webhook_pods(node, release)}

    creator = Creator(node.api)
    thread = threading.Thread(target=creator.run, name="pod-creator")
    thread.start()
    try:
        time.sleep(8)
        # A changed value rolls every webhook pod (maxUnavailable 0, preStop delay, drain).
        install_webhook(
            node,
            node_images,
            values={"podAnnotations": {"piw.e2e/rolled-at": str(time.time())}},
            upgrade=True,
        )
        # Pods of the old ReplicaSet may still be terminating (preStop delay, drain).
        rolled = {
            p.metadata.name
            for p in webhook_pods(node, release)
            if p.metadata.deletion_timestamp is None
        }
        assert not rolled & before, "helm upgrade did not replace the webhook pods"
        time.sleep(3)
        # A node fault's stand-in: one replica deleted (SIGTERM after its preStop delay).
        victim = sorted(rolled)[0]
        typed_api(k8s_client.CoreV1Api, node.api).delete_namespaced_pod(victim, release.namespace)
        wait_rollout(node, release, timeout=120)
        thread.join(timeout=DURATION + 30)
    finally:
        creator.stop.set()
        thread.join(timeout=30)

    missing = [p.metadata.name for p in creator.stored if not _injected(p)]
    total = len(creator.stored)
    summary.add(f"rollout: {len(missing)} of {total} pods stored without credentials")
    assert creator.errors == []
    assert total >= RATE * DURATION * 0.8, f"only {total} pods were created"
    assert missing == []
    # What the API server stored, not only what it answered, is what pods run with.
    core = typed_api(k8s_client.CoreV1Api, node.api)
    listed = core.list_namespaced_pod(NAMESPACE, label_selector="app=rollout-w").items
    assert len(listed) == total and all(_injected(p) for p in listed)


def test_the_count_sees_pods_admitted_unmutated_while_no_replica_listens(
    node: Node, node_images: Images, release: Release
) -> None:
    """The measurement's control: with both replicas killed outright (no drain, no preStop),
    failurePolicy Ignore admits pods without credentials, and the same count finds them."""
    ensure_namespace(node, NAMESPACE)
    ensure_service_account(node, NAMESPACE, ACCOUNT, {ROLE_ANNOTATION: ROLE})
    _wait_mutating(node)
    core = typed_api(k8s_client.CoreV1Api, node.api)
    apps = typed_api(k8s_client.AppsV1Api, node.api)
    replicas = apps.read_namespaced_deployment(release.deployment, release.namespace).spec.replicas
    creator = Creator(node.api, prefix="k", duration=20.0)
    thread = threading.Thread(target=creator.run, name="pod-creator")
    thread.start()
    try:
        time.sleep(5)
        # Scaled to 0 and force-deleted: no replacement overlaps, nothing listens for a while.
        scale = {"spec": {"replicas": 0}}
        apps.patch_namespaced_deployment_scale(release.deployment, release.namespace, scale)
        for pod in webhook_pods(node, release):
            core.delete_namespaced_pod(pod.metadata.name, release.namespace, grace_period_seconds=0)
        time.sleep(5)
    finally:
        scale = {"spec": {"replicas": replicas}}
        apps.patch_namespaced_deployment_scale(release.deployment, release.namespace, scale)
        thread.join(timeout=60)
        creator.stop.set()
        thread.join(timeout=30)
        wait_rollout(node, release, timeout=120)

    missing = [p for p in creator.stored if not _injected(p)]
    summary.add(
        f"rollout control: {len(missing)} of {len(creator.stored)} pods stored without "
        "credentials while both replicas were killed outright"
    )
    assert creator.errors == []  # failurePolicy Ignore: admitted, silently
    assert missing, "killing every replica should have let unmutated pods through"
