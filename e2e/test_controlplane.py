"""Smoke test of the e2e control plane: real etcd + kube-apiserver, no mocks."""

from __future__ import annotations

import json
from typing import Any

import jwt
from kubernetes import client as k8s_client

from e2e.controlplane import ControlPlane

NS = "smoke"
SA = "app"


def test_apiserver_ready(control_plane: ControlPlane) -> None:
    status, body = control_plane.request("GET", "/readyz")
    assert (status, body) == (200, b"ok")
    version = control_plane.get_json("/version")
    assert version["gitVersion"].startswith("v1.")


def test_namespace_sa_and_pod_are_stored(
    control_plane: ControlPlane, kube_client: k8s_client.ApiClient
) -> None:
    control_plane.ensure_namespace(NS)
    control_plane.ensure_service_account(NS, SA)
    core = k8s_client.CoreV1Api(kube_client)
    pod = k8s_client.V1Pod(
        metadata=k8s_client.V1ObjectMeta(name="p"),
        spec=k8s_client.V1PodSpec(
            service_account_name=SA,
            containers=[k8s_client.V1Container(name="c", image="example.invalid/app:1")],
        ),
    )
    core.create_namespaced_pod(NS, pod)
    spec = core.read_namespaced_pod("p", NS).spec
    assert spec is not None
    assert spec.service_account_name == SA
    # ServiceAccount admission ran: the projected token volume was added.
    assert any(v.name.startswith("kube-api-access-") for v in spec.volumes or ())
    # Without ensure_namespace's `default` SA, a pod in a fresh namespace is rejected.
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name="bare")))
    bare_pod = k8s_client.V1Pod(
        metadata=k8s_client.V1ObjectMeta(name="p"),
        spec=k8s_client.V1PodSpec(containers=spec.containers),
    )
    try:
        core.create_namespaced_pod("bare", bare_pod)
    except k8s_client.ApiException as e:
        assert e.status == 403 and "default" in (e.body or "")
    else:
        raise AssertionError("pod without a default ServiceAccount was admitted")


def _oidc(control_plane: ControlPlane) -> tuple[dict[str, Any], dict[str, Any]]:
    # Anonymous, as the AWS STS / IAM OIDC provider would fetch them.
    discovery = control_plane.get_json("/.well-known/openid-configuration", anonymous=True)
    jwks = control_plane.get_json("/openid/v1/jwks", anonymous=True)
    return discovery, jwks


def test_oidc_discovery_and_jwks(control_plane: ControlPlane) -> None:
    discovery, jwks = _oidc(control_plane)
    assert discovery["issuer"] == control_plane.issuer
    assert discovery["jwks_uri"] == f"{control_plane.issuer}/openid/v1/jwks"
    assert "RS256" in discovery["id_token_signing_alg_values_supported"]
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]


def test_token_request_verifies_against_jwks(
    control_plane: ControlPlane, kube_client: k8s_client.ApiClient
) -> None:
    control_plane.ensure_namespace(NS)
    control_plane.ensure_service_account(NS, SA)
    core = k8s_client.CoreV1Api(kube_client)
    resp = core.create_namespaced_service_account_token(
        SA,
        NS,
        k8s_client.AuthenticationV1TokenRequest(
            spec=k8s_client.V1TokenRequestSpec(
                audiences=["sts.amazonaws.com"], expiration_seconds=3600
            )
        ),
    )
    assert resp.status is not None
    token = resp.status.token
    assert isinstance(token, str)
    _, jwks = _oidc(control_plane)
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    key = jwt.PyJWK.from_json(json.dumps(jwk))
    claims = jwt.decode(
        token,
        key=key,
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=control_plane.issuer,
    )
    assert claims["sub"] == f"system:serviceaccount:{NS}:{SA}"
    assert 3500 <= claims["exp"] - claims["iat"] <= 3700


def test_restart_apiserver(control_plane: ControlPlane) -> None:
    port = control_plane.port
    control_plane.ensure_namespace("survives-restart")
    control_plane.restart_apiserver()
    assert control_plane.port == port
    assert control_plane.request("GET", "/readyz") == (200, b"ok")
    # Same etcd: data written before the restart is still there.
    ns = control_plane.get_json("/api/v1/namespaces/survives-restart/serviceaccounts/default")
    assert ns["metadata"]["name"] == "default"
