"""`pod-identity-webhook audit` against a real kube-apiserver, with our webhook as a process.

There is no controller-manager: the Deployment, its ReplicaSet and their pods are created by
the test, linked by ownerReferences as the controllers would link them. Pods created while the
webhook is not registered lack the role; pods created after it mutates do not.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.webhooks import (
    WebhookError,
    WebhookProcess,
    create_pod,
    env_names,
    ours,
    register,
    simple_pod,
    unregister,
    wait_until_mutating,
)
from webhook.cli import main

ROLE = "arn:aws:iam::111122223333:role/audit-e2e-app"
LABELS = {"app": "web"}


def _create(cp: ControlPlane, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    status, body = cp.request("POST", path, obj)
    assert status in (200, 201), f"POST {path}: {status} {body[:400]!r}"
    result: dict[str, Any] = json.loads(body)
    return result


def _template() -> dict[str, Any]:
    return {
        "metadata": {"labels": LABELS},
        "spec": {
            "serviceAccountName": "app",
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }


def _owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def _owned_pod(owner: dict[str, Any] | None, service_account: str = "app") -> dict[str, Any]:
    pod = simple_pod(service_account, LABELS if owner else None)
    if owner is not None:
        pod["metadata"]["ownerReferences"] = [_owner_ref(owner)]
    return pod


def _annotate_role(cp: ControlPlane, namespace: str, name: str, role: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
    account = cp.get_json(path)
    account["metadata"].setdefault("annotations", {})["eks.amazonaws.com/role-arn"] = role
    status, body = cp.request("PUT", path, account)
    assert status == 200, body[:400]


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"audit-{uuid.uuid4().hex[:8]}"
    control_plane.ensure_namespace(name)
    return name


@pytest.fixture
def webhook(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[tuple[WebhookProcess, str]]:
    """Our webhook as a process, not registered yet; unregistered and stopped afterwards."""
    process = ours(control_plane, tmp_path, name=f"audit-{namespace}")
    config_name = f"piw-{namespace}"
    try:
        yield process.start(), config_name
    finally:
        unregister(control_plane, config_name)
        process.stop()


def names(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


def _audit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)


def test_audit_reports_pods_created_before_the_role_and_restarts_their_deployment(
    control_plane: ControlPlane,
    namespace: str,
    webhook: tuple[WebhookProcess, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cp, ns = control_plane, namespace
    process, config_name = webhook
    cp.ensure_service_account(ns, "app")
    cp.ensure_service_account(ns, "plain")  # no role: its pods are never reported
    deployment = _create(
        cp,
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": LABELS}, "template": _template()},
        },
    )
    replica_set = _create(
        cp,
        f"/apis/apps/v1/namespaces/{ns}/replicasets",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web-5d9c7b", "ownerReferences": [_owner_ref(deployment)]},
            "spec": {"replicas": 2, "selector": {"matchLabels": LABELS}, "template": _template()},
        },
    )
    # The API server fills in apiVersion/kind only on reads; _owner_ref needs them.
    replica_set.setdefault("apiVersion", "apps/v1")
    replica_set.setdefault("kind", "ReplicaSet")

    # Before: the webhook is not registered (as if it were down, or the role not yet set).
    before = [create_pod(cp, ns, _owned_pod(replica_set)) for _ in range(2)]
    bare = create_pod(cp, ns, _owned_pod(None))
    plain = create_pod(cp, ns, _owned_pod(None, "plain"))
    assert all("AWS_ROLE_ARN" not in env_names(p) for p in before)

    _annotate_role(cp, ns, "app", ROLE)
    register(
        cp,
        config_name,
        process.url,
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": ns}},
    )
    try:
        wait_until_mutating(cp, ns, "app")
    except WebhookError as err:
        raise AssertionError(f"{err}\n{process.log_tail()}") from None

    # After: mutated on admission.
    after = [create_pod(cp, ns, _owned_pod(replica_set)) for _ in range(2)]
    assert all("AWS_ROLE_ARN" in env_names(p) for p in after)

    code, report = _audit(capsys, "--kubeconfig", str(cp.kubeconfig), "--output", "json")
    assert code == 1
    assert report["ok"] is False
    row = next(
        r for r in report["inventory"] if (r["namespace"], r["serviceAccount"]) == (ns, "app")
    )
    assert row == {
        "namespace": ns,
        "serviceAccount": "app",
        "roleName": "audit-e2e-app",
        "roleArn": ROLE,
        "audience": "sts.amazonaws.com",
        "expiration": 86400,
        "source": "annotation",
        "podsNotInjected": 3,
    }
    ours_ = {(w["kind"], w["name"]): w for w in report["notInjected"] if w["namespace"] == ns}
    assert set(ours_) == {("Deployment", "web"), ("Pod", bare["metadata"]["name"])}
    web = ours_[("Deployment", "web")]
    assert web["restartable"] is True
    assert {p["name"] for p in web["pods"]} == names(before)
    assert not names(after) & {p["name"] for w in ours_.values() for p in w["pods"]}
    assert not names([plain]) & {p["name"] for w in ours_.values() for p in w["pods"]}
    assert {p["controller"] for p in web["pods"]} == {"ReplicaSet/web-5d9c7b"}
    assert web["pods"][0]["missing"] == [
        "volume aws-iam-token",
        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in container app",
    ]
    codes = {(f["code"], f["where"]) for f in report["findings"]}
    assert ("not-injected", f"{ns}/Deployment/web") in codes
    assert report["restarts"] is None

    # --restart --yes: the Deployment's pod template gets kubectl's restartedAt annotation.
    started = datetime.now(UTC).replace(microsecond=0)
    code, report = _audit(
        capsys,
        "--kubeconfig",
        str(cp.kubeconfig),
        "-n",
        ns,
        "-o",
        "json",
        "--restart",
        "--yes",
    )
    assert code == 1  # the pods audited still lacked the role; re-run after the rollout
    assert report["restarts"] == [
        {
            "namespace": ns,
            "kind": "Deployment",
            "name": "web",
            "apiVersion": "apps/v1",
            "status": "restarted",
            "message": "",
        }
    ]
    assert report["restartPlan"]["manual"][0]["kind"] == "Pod"
    stored = cp.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    stamp = stored["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ]
    restarted_at = datetime.fromisoformat(stamp)
    assert restarted_at.tzinfo is not None
    assert started - timedelta(seconds=1) <= restarted_at <= datetime.now(UTC)
    # Nothing else of the template changed.
    assert stored["spec"]["template"]["spec"]["serviceAccountName"] == "app"
    assert stored["spec"]["template"]["metadata"]["labels"] == LABELS


def test_audit_table_output_and_clean_namespace(
    control_plane: ControlPlane, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, ns = control_plane, namespace
    cp.ensure_service_account(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    capsys.readouterr()
    code = main(["audit", "--kubeconfig", str(cp.kubeconfig), "--namespace", ns])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ServiceAccounts with a role: 1" in out
    assert "audit-e2e-app" in out and ROLE not in out  # the ARN is in -o wide
    assert "Running pods without their role: 0 in 0 workload(s)" in out
    code = main(["audit", "--kubeconfig", str(cp.kubeconfig), "-n", ns, "-o", "wide"])
    assert code == 0 and ROLE in capsys.readouterr().out


def test_audit_finds_the_cluster_like_kubectl(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$KUBECONFIG without --kubeconfig, and --context picking the working context."""
    cp, ns = control_plane, namespace
    cp.ensure_service_account(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    config = json.loads(cp.kubeconfig.read_text())
    real = config["contexts"][0]
    dead_cluster = {**config["clusters"][0], "name": "dead"}
    dead_cluster["cluster"] = {**dead_cluster["cluster"], "server": "https://127.0.0.1:1"}
    config["clusters"].append(dead_cluster)
    config["contexts"].append({"name": "dead", "context": {**real["context"], "cluster": "dead"}})
    config["current-context"] = "dead"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    os.chmod(kubeconfig, 0o600)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config to fall back on
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as a fresh process

    code, report = _audit(capsys, "--context", real["name"], "-n", ns, "-o", "json")
    assert code == 0 and report["ok"] is True
    assert [(r["namespace"], r["serviceAccount"]) for r in report["inventory"]] == [(ns, "app")]

    capsys.readouterr()
    assert main(["audit", "-n", ns, "--request-timeout", "2"]) == 2  # current-context: dead
    assert "cannot reach the Kubernetes API at https://127.0.0.1:1" in capsys.readouterr().err


def test_audit_restart_in_one_namespace_leaves_the_others_alone(
    control_plane: ControlPlane, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-n` scopes --restart: the bug this flag fixes restarted every namespace."""
    cp, ns = control_plane, namespace
    other = f"{ns}-other"
    cp.ensure_namespace(other)
    for where in (ns, other):
        cp.ensure_service_account(where, "app", {"eks.amazonaws.com/role-arn": ROLE})
        deployment = _create(
            cp,
            f"/apis/apps/v1/namespaces/{where}/deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": LABELS}, "template": _template()},
            },
        )
        deployment.setdefault("apiVersion", "apps/v1")
        deployment.setdefault("kind", "Deployment")
        replica_set = _create(
            cp,
            f"/apis/apps/v1/namespaces/{where}/replicasets",
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": "web-5d9c7b",
                    "labels": LABELS,
                    "ownerReferences": [_owner_ref(deployment)],
                },
                "spec": {"selector": {"matchLabels": LABELS}, "template": _template()},
            },
        )
        replica_set.setdefault("apiVersion", "apps/v1")
        replica_set.setdefault("kind", "ReplicaSet")
        create_pod(cp, where, _owned_pod(replica_set))  # no webhook registered: no role

    code, report = _audit(
        capsys, "--kubeconfig", str(cp.kubeconfig), "-n", other, "-o", "json", "--restart", "--yes"
    )
    assert code == 1
    assert [(r["namespace"], r["status"]) for r in report["restarts"]] == [(other, "restarted")]
    untouched = cp.get_json(f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    annotations = untouched["spec"]["template"].get("metadata", {}).get("annotations") or {}
    assert "kubectl.kubernetes.io/restartedAt" not in annotations


def test_audit_unreachable_cluster_is_one_clear_line(
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as a fresh process
    config = json.loads(control_plane.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    os.chmod(kubeconfig, 0o600)
    capsys.readouterr()
    code = main(["audit", "--kubeconfig", str(kubeconfig)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("pod-identity-webhook audit: error: cannot reach")
    assert "Traceback" not in captured.err
