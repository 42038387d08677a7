"""Rollouts and node faults lose no credentials.

With `failurePolicy: Ignore` (the default, as upstream) a review that fails admits the pod
unmutated: on EC2 it would silently run with the node's role. So while pods of an annotated
ServiceAccount are created at about 10/s for 60 s, the webhook is rolled (`helm upgrade` with a
changed value) and one of its pods is deleted; every stored pod must carry the injection.

The webhook runs as the README installs it, on the pod network: each replica has its own pod
IP, the API server picks one of the Service's ready endpoints for every new connection and keeps
pooled keep-alive connections to it. The control runs the same rollout with the drain switched
off (no preStop delay, no --shutdown-delay): it must find pods stored without credentials, or
this topology could not show the drain's worth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
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
BURST = 10  # created concurrently, once a second
DURATION = 60.0  # seconds


@dataclass
class Creator:
    """Creates gated (never scheduled) pods at RATE; remembers what the API stored.

    In bursts of BURST concurrent creates, as a controller scaling up creates them: the API
    server then holds several pooled connections to the webhook's endpoints, not one, and a
    replica that goes away takes its share of them with it.
    """

    api: k8s_client.ApiClient
    prefix: str = "w"
    duration: float = DURATION
    stored: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _create(self, core: Any, name: str) -> None:
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

    def run(self) -> None:
        core = typed_api(k8s_client.CoreV1Api, self.api)
        start = time.monotonic()
        n = 0
        with ThreadPoolExecutor(max_workers=BURST, thread_name_prefix="create") as pool:
            while not self.stop.is_set() and time.monotonic() - start < self.duration:
                names = [f"{self.prefix}-{i:04d}" for i in range(n, n + BURST)]
                list(pool.map(lambda name: self._create(core, name), names))
                n += BURST
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


@dataclass(frozen=True)
class Outcome:
    total: int
    missing: list[str]
    errors: list[str]
    listed: int
    listed_missing: int


def _rollout(
    node: Node, node_images: Images, release: Release, prefix: str, **values: Any
) -> Outcome:
    """The scenario: pods created at RATE for DURATION while the webhook is upgraded (a changed
    pod annotation rolls every replica) and then one replica is deleted. `values` are chart
    values for the release throughout (the drain's knobs)."""
    ensure_namespace(node, NAMESPACE)
    ensure_service_account(node, NAMESPACE, ACCOUNT, {ROLE_ANNOTATION: ROLE})
    # The knobs must be in the pods that will be terminated: install them first.
    install_webhook(node, node_images, values=values, upgrade=True)
    _wait_mutating(node)
    before = {p.metadata.name for p in webhook_pods(node, release)}

    creator = Creator(node.api, prefix=prefix)
    thread = threading.Thread(target=creator.run, name="pod-creator")
    thread.start()
    try:
        time.sleep(8)
        # A changed value rolls every webhook pod (maxUnavailable 0, preStop delay, drain).
        rolled_at = {"podAnnotations": {"piw.e2e/rolled-at": str(time.time())}}
        install_webhook(node, node_images, values={**values, **rolled_at}, upgrade=True)
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

    # What the API server stored, not only what it answered, is what pods run with.
    core = typed_api(k8s_client.CoreV1Api, node.api)
    listed = core.list_namespaced_pod(NAMESPACE, label_selector=f"app=rollout-{prefix}").items
    return Outcome(
        total=len(creator.stored),
        missing=[p.metadata.name for p in creator.stored if not _injected(p)],
        errors=creator.errors,
        listed=len(listed),
        listed_missing=sum(1 for p in listed if not _injected(p)),
    )


@pytest.fixture
def restore_release(node: Node, node_images: Images, release: Release) -> Iterator[Release]:
    """Puts the shared release back to its installed values after a test changed them."""
    yield release
    install_webhook(node, node_images, upgrade=True)


def test_a_rolling_upgrade_and_a_deleted_webhook_pod_drop_no_pod_credentials(
    node: Node, node_images: Images, restore_release: Release
) -> None:
    outcome = _rollout(node, node_images, restore_release, "w")

    summary.add(
        f"rollout: {len(outcome.missing)} of {outcome.total} pods stored without credentials"
    )
    assert outcome.errors == []
    assert outcome.total >= RATE * DURATION * 0.8, f"only {outcome.total} pods were created"
    assert outcome.missing == []
    assert (outcome.listed, outcome.listed_missing) == (outcome.total, 0)


def test_the_same_rollout_with_the_drain_off_stores_pods_without_credentials(
    node: Node, node_images: Images, restore_release: Release
) -> None:
    """The control: what the drain (preStop delay, then --shutdown-delay with /readyz failing
    and `Connection: close`) is there for. Without it a replica stops listening while the API
    server still lists and dials its endpoint."""
    drain_off = {"preStopDelaySeconds": 0, "config": {"shutdownDelay": "0s"}}
    outcome = _rollout(node, node_images, restore_release, "d", **drain_off)

    summary.add(
        f"rollout control (drain off): {len(outcome.missing)} of {outcome.total} pods stored "
        "without credentials"
    )
    assert outcome.errors == []  # failurePolicy Ignore: admitted, silently
    assert outcome.total >= RATE * DURATION * 0.8, f"only {outcome.total} pods were created"
    assert outcome.missing, "with the drain off, the rollout should have let unmutated pods through"
    assert outcome.listed_missing == len(outcome.missing)


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
        f"rollout count check: {len(missing)} of {len(creator.stored)} pods stored without "
        "credentials while both replicas were killed outright"
    )
    assert creator.errors == []  # failurePolicy Ignore: admitted, silently
    assert missing, "killing every replica should have let unmutated pods through"
