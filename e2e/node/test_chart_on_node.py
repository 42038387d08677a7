"""The chart installed on a real node, as a user installs it: the locally built image runs as
two Ready replicas (readiness waits for the ServiceAccount cache), the PDB is there, and the
MutatingWebhookConfiguration's caBundle verifies the certificate the pods actually serve.

The default install is the README's: no hostNetwork, so each replica has its own pod IP, the
Service's EndpointSlice lists them and the API server calls them there. The host-network
option is installed side by side, with a Secret the user brings."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.images import Images
from e2e.node import kubeproxy, summary
from e2e.node.cluster import NODE_IP, POD_CIDR, SERVICE_CIDR, Node
from e2e.node.pods import create_until_mutated, pod_logs
from e2e.node.walkthrough import (
    ROLE_ANNOTATION,
    Release,
    ensure_namespace,
    ensure_service_account,
    install_webhook,
    typed_api,
    uninstall_webhook,
    webhook_pods,
)
from e2e.webhooks import wait_until


def _webhook_config(node: Node, release: Release) -> Any:
    api = typed_api(k8s_client.AdmissionregistrationV1Api, node.api)
    return api.read_mutating_webhook_configuration(release.deployment)


def _served_certificate_verifies(ca_bundle: bytes, service: Any, address: str, port: int) -> None:
    """TLS handshake to one endpoint, verified as the API server verifies it: against the
    caBundle, for the Service's DNS name."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    hostname = f"{service.name}.{service.namespace}.svc"
    with (
        socket.create_connection((address, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _ready_pods(node: Node, release: Release) -> list[Any]:
    pods = webhook_pods(node, release)
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _endpoint_addresses(node: Node, namespace: str, service: str) -> set[str]:
    """The ready addresses of the Service's EndpointSlices: what the API server dials."""
    discovery = typed_api(k8s_client.DiscoveryV1Api, node.api)
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    ).items
    return {
        address
        for s in slices
        for e in s.endpoints or []
        if e.conditions is None or e.conditions.ready is not False
        for address in e.addresses
    }


def _assert_installed(node: Node, release: Release, port: int, *, host_network: bool) -> list[str]:
    """Asserts two Ready replicas, the PDB, the endpoints and the caBundle; returns the
    replicas' IPs."""
    ready = _ready_pods(node, release)
    assert len(ready) == 2, [p.metadata.name for p in webhook_pods(node, release)]
    for pod in ready:
        container = pod.spec.containers[0]
        assert container.image == release.values["image"]["repository"] + ":" + str(
            release.values["image"]["tag"]
        )
        assert container.readiness_probe.http_get.path == "/readyz"
        assert bool(pod.spec.host_network) is host_network
        assert pod.spec.security_context.run_as_non_root is True
    ips = sorted(p.status.pod_ip for p in ready)
    if host_network:
        assert ips == [NODE_IP, NODE_IP]
        # install_webhook set the node's tcp_migrate_req, as the chart README asks; each
        # replica read it from inside its container, in the node's network namespace.
        for pod in ready:
            log = pod_logs(node.api, release.namespace, pod.metadata.name)
            assert "--reuse-port: net.ipv4.tcp_migrate_req is 1 here" in log, log[-2000:]
    else:
        assert len(set(ips)) == 2, ips
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR) for ip in ips)

    policy = typed_api(k8s_client.PolicyV1Api, node.api)
    pdb = policy.read_namespaced_pod_disruption_budget(release.deployment, release.namespace)
    assert pdb.status.current_healthy == 2

    config = _webhook_config(node, release)
    client_config = config.webhooks[0].client_config
    service = client_config.service
    assert _endpoint_addresses(node, service.namespace, service.name) == set(ips)
    ca_bundle = base64.b64decode(client_config.ca_bundle)
    for ip in sorted(set(ips)):
        _served_certificate_verifies(ca_bundle, service, ip, port)
    # And through the Service's ClusterIP (kube-proxy's DNAT), as an in-cluster client would.
    core = typed_api(k8s_client.CoreV1Api, node.api)
    cluster_ip = core.read_namespaced_service(service.name, service.namespace).spec.cluster_ip
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(SERVICE_CIDR)
    # kube-proxy writes the ClusterIP's rules from the EndpointSlices on its own schedule (the
    # controller-manager batches slice updates for 1 s here): a refused connection right after
    # the replicas turned Ready is the data plane catching up, so wait for it, within a bound.
    wait_until(
        lambda: kubeproxy.reaches(cluster_ip, service.port or 443),
        timeout=30,
        what=f"kube-proxy to route {cluster_ip}:{service.port or 443}",
    )
    _served_certificate_verifies(ca_bundle, service, cluster_ip, service.port or 443)
    return ips


def test_default_install_two_ready_replicas_on_pod_ips_behind_the_service_endpoints(
    node: Node, release: Release
) -> None:
    ips = _assert_installed(node, release, port=8443, host_network=False)
    # The API server reaches them through those endpoints: a review mutates a pod.
    ensure_namespace(node, "default-install")
    role = "arn:aws:iam::111122223333:role/default-install"
    ensure_service_account(node, "default-install", "app", {ROLE_ANNOTATION: role})
    pod = create_until_mutated(node.api, "default-install", "app", "AWS_ROLE_ARN")
    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    assert env.get("AWS_ROLE_ARN") == role
    summary.add(f"default install: {len(ips)} replicas Ready on pod IPs {', '.join(ips)}")


def test_host_network_install_with_an_existing_secret_serves_the_users_certificate(
    node: Node, node_images: Images, release: Release
) -> None:
    """The hostNetwork option, as a second release side by side with the default one: its own
    node ports, its own annotation domain (so only it mutates what the test creates), and a
    Secret made outside the chart."""
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
            "hostNetwork": True,
            "tls": {"mode": "existingSecret", "existingSecret": {"name": "byo-serving"}},
            "webhook": {"caBundle": node.ca_pem.decode()},
            "config": {"port": port, "metricsPort": 9998, "annotationPrefix": "byo.example.com"},
            "containerCredentials": {"enabled": False},
        },
    )
    try:
        _assert_installed(node, byo, port=port, host_network=True)
        ensure_namespace(node, "byo-demo")
        ensure_service_account(
            node,
            "byo-demo",
            "app",
            {"byo.example.com/role-arn": "arn:aws:iam::111122223333:role/byo"},
        )
        pod = create_until_mutated(node.api, "byo-demo", "app", "AWS_ROLE_ARN")
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env.get("AWS_ROLE_ARN") == "arn:aws:iam::111122223333:role/byo"
    finally:
        uninstall_webhook(node, byo)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_on_each_pod_ip(node: Node, release: Release, path: str) -> None:
    context = ssl.create_default_context(cafile=str(node.ca_file))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the path, not the certificate, is under test here
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for pod in _ready_pods(node, release):
        with (
            socket.create_connection((pod.status.pod_ip, 8443), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(request.encode())
            head = tls.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 200"), head
