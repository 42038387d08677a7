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
    wait_until_mutating,
)

ROLE = "arn:aws:iam::111122223333:role/replay-live"
LABEL = "pod-identity-webhook-replay-live"


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
        cp, tmp_path, [f"--record-dir={records}", "--resync-period=0"], name="recording"
    ).start()
    namespaces = {version: _namespace(cp, version) for version in ("v1", "v1beta1")}
    try:
        for version, ns in namespaces.items():
            register(
                cp,
                f"replay-live-{version}",
                webhook.url,
                versions=[version],
                namespace_selector={"matchLabels": {LABEL: version}},
            )
            cp.ensure_service_account(
                ns,
                "app",
                {"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "3600"},
            )
            cp.ensure_service_account(ns, "plain")
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
