"""Install without Helm on the real node (issue 19 §1): `kubectl apply -k` of the existing-
Secret overlay, as deploy/overlays/existing-secret/kustomization.yaml tells a user to (create
the Secret, put the CA in ca-bundle.yaml, apply), and the webhook it starts mutates a pod.

The user's own overlay on top of it changes only what this node needs: a namespace of its own
(kustomize renames the Namespace, the ServiceAccount subject and the webhook's Service
reference), the locally built image, one replica on the host network on ports of its own (the
node has no pod network, and the chart's release may be serving 8443 here), and an annotation
domain of its own, so only this webhook mutates the pod the test creates.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.images import Images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.walkthrough import (
    enable_listener_migration,
    ensure_namespace,
    ensure_service_account,
    kubectl,
    typed_api,
)

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "piw-kustomize"
APPS = "piw-kustomize-apps"
NAME = "pod-identity-webhook"  # every object of deploy/base
PORT, METRICS_PORT = 10443, 10998
PREFIX = "kustomize.example.com"
ROLE_ARN = "arn:aws:iam::111122223333:role/kustomize"
BASE_IMAGE_NAME = "ghcr.io/pod-identity-webhook/pod-identity-webhook"


def _ok(proc: Any) -> str:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout}\n{proc.stderr}"
    out: str = proc.stdout
    return out


def _node_overlay(node: Node, images: Images, work: Path) -> Path:
    shutil.copytree(REPO / "deploy", work / "deploy")
    # Step 2 of the overlay's instructions: the CA that signed the Secret, base64 of its PEM.
    ca_bundle = work / "deploy" / "overlays" / "existing-secret" / "ca-bundle.yaml"
    patch = yaml.safe_load(ca_bundle.read_text())
    patch[0]["value"] = base64.b64encode(node.ca_pem).decode()
    ca_bundle.write_text(yaml.safe_dump(patch))

    built = yaml.safe_load_all(_ok(kubectl(node, "kustomize", str(ca_bundle.parent))))
    (deployment,) = [o for o in built if o and o["kind"] == "Deployment"]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    def arg(flag: str, value: str) -> dict[str, Any]:
        (index,) = [i for i, a in enumerate(args) if a.startswith(f"--{flag}=")]
        return {"op": "replace", "path": f"/spec/template/spec/containers/0/args/{index}",
                "value": f"--{flag}={value}"}  # fmt: skip

    ctr = "/spec/template/spec/containers/0"
    repository, _, tag = images.webhook.ref.rpartition(":")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": ["../deploy/overlays/existing-secret"],
        "images": [{"name": BASE_IMAGE_NAME, "newName": repository, "newTag": tag}],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": NAME},
                "patch": yaml.safe_dump(
                    [
                        {"op": "replace", "path": "/spec/replicas", "value": 1},
                        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
                        {
                            "op": "replace",
                            "path": "/spec/template/spec/dnsPolicy",
                            "value": "ClusterFirstWithHostNet",
                        },
                        {"op": "replace", "path": f"{ctr}/imagePullPolicy", "value": "Never"},
                        arg("port", str(PORT)),
                        arg("metrics-port", str(METRICS_PORT)),
                        arg("annotation-prefix", PREFIX),
                        {"op": "replace", "path": f"{ctr}/ports/0/containerPort", "value": PORT},
                        {
                            "op": "replace",
                            "path": f"{ctr}/ports/1/containerPort",
                            "value": METRICS_PORT,
                        },
                        {
                            "op": "replace",
                            "path": f"{ctr}/livenessProbe/httpGet/port",
                            "value": PORT,
                        },
                        {
                            "op": "replace",
                            "path": f"{ctr}/readinessProbe/httpGet/port",
                            "value": PORT,
                        },
                    ]
                ),
            },
            {
                "target": {"kind": "Service", "name": NAME},
                "patch": yaml.safe_dump(
                    [
                        {"op": "replace", "path": "/spec/ports/0/targetPort", "value": PORT},
                        {
                            "op": "replace",
                            "path": "/spec/ports/1/targetPort",
                            "value": METRICS_PORT,
                        },
                    ]
                ),
            },
            {
                # Host-network pods are not "restricted": this namespace allows them.
                "target": {"kind": "Namespace"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/metadata/labels/pod-security.kubernetes.io~1enforce",
                            "value": "privileged",
                        },
                    ]
                ),
            },
        ],
    }
    mine = work / "node"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return mine


def _wait_ready(node: Node, timeout: float = 180.0) -> None:
    apps = typed_api(k8s_client.AppsV1Api, node.api)
    deadline = time.monotonic() + timeout
    status: Any = None
    while time.monotonic() < deadline:
        status = apps.read_namespaced_deployment(NAME, NAMESPACE).status
        if status.ready_replicas == 1:
            return
        time.sleep(0.5)
    raise AssertionError(f"deployment {NAMESPACE}/{NAME} not Ready in {timeout:.0f}s: {status}")


def _created_pod(node: Node) -> Any:
    """A pod of the annotated ServiceAccount, as stored (never scheduled: only its admission
    matters); retried while the ServiceAccount reaches the webhook's cache."""
    core = typed_api(k8s_client.CoreV1Api, node.api)
    deadline = time.monotonic() + 30
    while True:
        pod = core.create_namespaced_pod(
            APPS,
            {
                "metadata": {"generateName": "probe-"},
                "spec": {
                    "serviceAccountName": "app",
                    "schedulingGates": [{"name": "piw.e2e/never-scheduled"}],
                    "containers": [{"name": "c", "image": "localhost/none:0"}],
                },
            },
        )
        names = [e.name for e in pod.spec.containers[0].env or []]
        if "AWS_ROLE_ARN" in names or time.monotonic() > deadline:
            return pod
        time.sleep(1)


def test_kubectl_apply_k_existing_secret_overlay_mutates_a_pod(
    node: Node, node_images: Images, tmp_path: Path
) -> None:
    enable_listener_migration(node)
    overlay = _node_overlay(node, node_images, tmp_path)
    # Step 1: the Secret, in the namespace the overlay deploys to.
    ensure_namespace(node, NAMESPACE)
    service = f"{NAME}.{NAMESPACE}.svc"
    cert, key = node.issue_serving_cert(NAME, [NAME, f"{NAME}.{NAMESPACE}", service])
    _ok(kubectl(node, "-n", NAMESPACE, "create", "secret", "tls", f"{NAME}-tls",
                f"--cert={cert}", f"--key={key}"))  # fmt: skip
    try:
        # Step 3.
        applied = _ok(kubectl(node, "apply", "-k", str(overlay)))
        _wait_ready(node)
        ensure_namespace(node, APPS)
        ensure_service_account(node, APPS, "app", {f"{PREFIX}/role-arn": ROLE_ARN})

        pod = _created_pod(node)

        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env.get("AWS_ROLE_ARN") == ROLE_ARN, env
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" in env
        assert "aws-iam-token" in [v.name for v in pod.spec.volumes or []]
        assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/pod-identity-webhook" in (
            applied
        )
        summary.add(
            f"kubectl apply -k deploy/overlays/existing-secret: pod {APPS}/{pod.metadata.name} "
            f"mutated (AWS_ROLE_ARN={env['AWS_ROLE_ARN']})"
        )
    finally:
        kubectl(node, "delete", "-k", str(overlay), "--ignore-not-found", "--wait=false")
        core = typed_api(k8s_client.CoreV1Api, node.api)
        for namespace in (APPS, NAMESPACE):
            try:
                core.delete_namespace(namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
