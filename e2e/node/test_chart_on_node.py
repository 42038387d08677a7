"""The chart installed on a real node, as a user installs it: the locally built image runs as
two Ready replicas (readiness waits for the ServiceAccount cache), the PDB is there, and the
MutatingWebhookConfiguration's caBundle verifies the certificate the pods actually serve —
in the default self-signed mode and with a Secret the user brings."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.images import Images
from e2e.node.cluster import Node
from e2e.node.walkthrough import (
    Release,
    ensure_namespace,
    ensure_service_account,
    install_webhook,
    typed_api,
    uninstall_webhook,
    webhook_pods,
)


def _webhook_config(node: Node, release: Release) -> Any:
    api = typed_api(k8s_client.AdmissionregistrationV1Api, node.api)
    return api.read_mutating_webhook_configuration(release.deployment)


def _served_certificate_verifies(node: Node, ca_bundle: bytes, service: Any, port: int) -> None:
    """TLS handshake to the pods' host port, verified as the API server verifies it: against
    the caBundle, for the Service's DNS name."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    hostname = f"{service.name}.{service.namespace}.svc"
    with (
        socket.create_connection((node.node_ip, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _assert_installed(node: Node, release: Release, port: int) -> None:
    pods = webhook_pods(node, release)
    ready = [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    assert len(ready) == 2, [p.metadata.name for p in pods]
    for pod in ready:
        container = pod.spec.containers[0]
        assert container.image == release.values["image"]["repository"] + ":" + str(
            release.values["image"]["tag"]
        )
        assert container.readiness_probe.http_get.path == "/readyz"
        assert pod.spec.host_network is True
        assert pod.spec.security_context.run_as_non_root is True

    policy = typed_api(k8s_client.PolicyV1Api, node.api)
    pdb = policy.read_namespaced_pod_disruption_budget(release.deployment, release.namespace)
    assert pdb.status.current_healthy == 2

    config = _webhook_config(node, release)
    client_config = config.webhooks[0].client_config
    ca_bundle = base64.b64decode(client_config.ca_bundle)
    _served_certificate_verifies(node, ca_bundle, client_config.service, port)


def test_default_install_self_signed_two_ready_replicas_and_a_verifying_ca_bundle(
    node: Node, release: Release
) -> None:
    _assert_installed(node, release, port=8443)


def _wait_mutated(node: Node, namespace: str, account: str, env_name: str) -> Any:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    deadline = time.monotonic() + 30
    while True:
        pod = core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"generateName": "probe-"},
                "spec": {
                    "serviceAccountName": account,
                    "schedulingGates": [{"name": "piw.e2e/never-scheduled"}],
                    "containers": [{"name": "c", "image": "localhost/none:0"}],
                },
            },
        )
        names = [e.name for e in pod.spec.containers[0].env or []]
        if env_name in names or time.monotonic() > deadline:
            return pod
        time.sleep(1)  # the ServiceAccount may not have reached the webhook's cache yet


def test_existing_secret_install_serves_the_users_certificate(
    node: Node, node_images: Images, release: Release
) -> None:
    """A second release, side by side with the default one: its own ports, its own annotation
    domain (so only it mutates what the test creates), and a Secret made outside the chart."""
    name, namespace, port = "byo", "piw-byo", 9443
    service = f"{name}-pod-identity-webhook"
    ensure_namespace(node, namespace)
    cert, key = node.issue_serving_cert(
        service, [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    )
    core = typed_api(k8s_client.CoreV1Api, node.api)
    secret = {
        "metadata": {"name": "byo-serving"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert.read_bytes()).decode(),
            "tls.key": base64.b64encode(key.read_bytes()).decode(),
        },
    }
    try:
        core.create_namespaced_secret(namespace, secret)
    except ApiException as e:
        if e.status != 409:
            raise
    byo = install_webhook(
        node,
        node_images,
        name=name,
        namespace=namespace,
        values={
            "tls": {"mode": "existingSecret", "existingSecret": {"name": "byo-serving"}},
            "webhook": {"caBundle": node.ca_pem.decode()},
            "config": {"port": port, "metricsPort": 9998, "annotationPrefix": "byo.example.com"},
            "containerCredentials": {"enabled": False},
        },
    )
    try:
        _assert_installed(node, byo, port=port)
        ensure_namespace(node, "byo-demo")
        ensure_service_account(
            node,
            "byo-demo",
            "app",
            {"byo.example.com/role-arn": "arn:aws:iam::111122223333:role/byo"},
        )
        pod = _wait_mutated(node, "byo-demo", "app", "AWS_ROLE_ARN")
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env.get("AWS_ROLE_ARN") == "arn:aws:iam::111122223333:role/byo"
    finally:
        uninstall_webhook(node, byo)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_on_the_node_ip(node: Node, release: Release, path: str) -> None:
    context = ssl.create_default_context(cafile=str(node.ca_file))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the path, not the certificate, is under test here
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection((node.node_ip, 8443), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(request.encode())
        head = tls.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 200"), head
