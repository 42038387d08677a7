"""Capture from a live run, replay to identical answers: `serve --record-dir` behind a real
kube-apiserver (both review versions), then `replay --expect-recorded` on the files it wrote,
with the cluster's ServiceAccounts as --objects."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.webhooks import (
    create_pod,
    ours,
    register,
    simple_pod,
    unregister,
    wait_until,
    wait_until_mutating,
)

ROLE = "arn:aws:iam::111122223333:role/replay-live"
LABEL = "pod-identity-webhook-replay-live"
IDENTITY = {"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "3600"}


def _namespace(cp: ControlPlane, version: str) -> str:
    name = f"replay-{uuid.uuid4().hex[:8]}"
    cp.apply(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {LABEL: version}},
        },
    )
    return name


def _pods() -> list[dict[str, Any]]:
    """Shapes that take different paths through the mutation, and env values to redact."""
    secret_env = [{"name": "DB_PASSWORD", "value": "s3cr3t"}, {"name": "MODE", "value": "s3cr3t"}]
    sidecar = {"name": "sidecar", "image": "registry.k8s.io/pause:3.10", "restartPolicy": "Always"}
    return [
        simple_pod("app"),
        simple_pod(
            "app",
            containers=[{"name": "c", "image": "registry.k8s.io/pause:3.10", "env": secret_env}],
        ),
        simple_pod("app", initContainers=[sidecar]),
        simple_pod(
            "app",
            containers=[
                {
                    "name": "c",
                    "image": "registry.k8s.io/pause:3.10",
                    "env": [{"name": "AWS_ROLE_ARN", "value": "mine"}],
                }
            ],
        ),
        simple_pod("plain"),
        simple_pod("app", labels={"eks.amazonaws.com/skip-pod-identity-webhook": "true"}),
    ]


def test_a_recorded_live_run_replays_to_identical_responses(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    records = tmp_path / "records"
    webhook = ours(
        cp,
        tmp_path,
        [f"--record-dir={records}", "--resync-period=0", "--enable-debugging-handlers"],
        name="recording",
    ).start()
    namespaces = {version: _namespace(cp, version) for version in ("v1", "v1beta1")}
    try:
        # Every review the webhook answers is recorded, the probes of wait_until_mutating too,
        # and replayed against the ServiceAccounts as they are at the end. A review answered
        # before the webhook's watch delivered `app` says "not in the cache" (no patch) where
        # the replay patches: so the webhook must know every ServiceAccount before the API
        # server can call it. One watch over all namespaces delivers them in creation order:
        # `app`, created last in each namespace, in the cache means `plain` is there too.
        for ns in namespaces.values():
            cp.ensure_service_account(ns, "plain")
            cp.ensure_service_account(ns, "app", {**IDENTITY})
        wait_until(
            lambda: all(
                webhook.cached_identities().get(f"{ns}/app", {}).get("RoleARN") == ROLE
                for ns in namespaces.values()
            ),
            timeout=30,
            what="both namespaces' `app` in the recording webhook's cache",
        )
        for version, ns in namespaces.items():
            register(
                cp,
                f"replay-live-{version}",
                webhook.url,
                versions=[version],
                namespace_selector={"matchLabels": {LABEL: version}},
            )
            wait_until_mutating(cp, ns, "app", timeout=60)
        created = 0
        for ns in namespaces.values():
            for pod in _pods():
                create_pod(cp, ns, pod)
                create_pod(cp, ns, pod, dry_run=True)
                created += 2
    finally:
        for version in namespaces:
            unregister(cp, f"replay-live-{version}")
        assert webhook.stop() == 0, webhook.log_tail()  # SIGTERM: queued records are written

    lines = [
        json.loads(line)
        for file in sorted(records.glob("reviews*.jsonl"))
        for line in file.read_text().splitlines()
    ]
    versions = {line["request"]["apiVersion"] for line in lines}
    assert versions == {"admission.k8s.io/v1", "admission.k8s.io/v1beta1"}
    assert len(lines) >= created  # plus the probes of wait_until_mutating
    assert "s3cr3t" not in (records / "reviews.jsonl").read_text()

    status, body = cp.request("GET", "/api/v1/serviceaccounts")
    assert status == 200
    # What `kubectl get sa -A -o yaml` writes: a List whose items name their kind.
    items = [
        {"apiVersion": "v1", "kind": "ServiceAccount", **sa} for sa in json.loads(body)["items"]
    ]
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "replay",
            "--objects",
            str(objects),
            "--expect-recorded",
            str(records),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr[-4000:]
    assert f"replay: {len(lines)} of {len(lines)} matched the recorded responses" in replay.stderr


@pytest.fixture(autouse=True)
def _no_leftover_configurations(control_plane: ControlPlane) -> None:
    for version in ("v1", "v1beta1"):
        unregister(control_plane, f"replay-live-{version}")


def _create(cp: ControlPlane, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    status, body = cp.request("POST", path, obj)
    assert status in (200, 201), body[:500]
    created: dict[str, Any] = json.loads(body)
    return created


def _owner(obj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    return [
        {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }
    ]


def test_replay_from_the_cluster_answers_for_every_workload_and_changes_nothing(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """No controller-manager runs here: the Deployment -> ReplicaSet -> Pod chain is created as
    the controllers would leave it."""
    cp = control_plane
    ns = _namespace(cp, "from-cluster")
    cp.ensure_service_account(ns, "web", {"eks.amazonaws.com/role-arn": ROLE})
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "automountServiceAccountToken": False,
            "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    selector = {"matchLabels": {"app": "web"}}
    deployment = _create(
        cp,
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"selector": selector, "template": template},
        },
    )
    replica_set = _create(
        cp,
        f"/apis/apps/v1/namespaces/{ns}/replicasets",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web-5d4f", "ownerReferences": _owner(deployment)},
            "spec": {"selector": selector, "template": template},
        },
    )
    for i in range(2):
        _create(
            cp,
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"web-5d4f-{i}",
                    "labels": {"app": "web"},
                    "ownerReferences": _owner(replica_set),
                },
                "spec": template["spec"],
            },
        )
    _create(
        cp,
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "lonely"},
            "spec": template["spec"],
        },
    )
    before = cp.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")[1]

    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "replay",
            "--from-cluster",
            f"--kubeconfig={cp.kubeconfig}",
            f"--cluster-namespace={ns}",
            "-o",
            "pod",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    pods = [json.loads(line) for line in replay.stdout.splitlines()]
    assert len(pods) == 2  # the Deployment once (not its two pods), and the bare pod
    web = next(p for p in pods if p["metadata"].get("generateName", "").startswith("web-"))
    assert {e["name"]: e["value"] for e in web["spec"]["containers"][0]["env"]}[
        "AWS_ROLE_ARN"
    ] == ROLE
    assert web["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert cp.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")[1] == before
