"""The emulators against the real kube-apiserver as OIDC issuer: its discovery document, its
JWKS and the tokens it mints through TokenRequest, exchanged by botocore's own providers."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.controlplane import ControlPlane
from e2e.emulators import OidcProvider, PodIdentityAgentEmulator, StsEmulator
from e2e.emulators.probe import run_probe

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/eks-irsa-lab-demo-s3-reader-role"
NAMESPACES = ("emulators-demo", "emulators-demo2")


def mint(cp: ControlPlane, namespace: str, audience: str) -> str:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 3600},
    }
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/s3-reader/token"
    status, body = cp.request("POST", path, request)
    assert status == 201, body
    token: str = json.loads(body)["status"]["token"]
    return token


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    for namespace in NAMESPACES:
        control_plane.ensure_namespace(namespace)
        control_plane.ensure_service_account(namespace, "s3-reader")
    return control_plane


@pytest.fixture
def sts(cluster: ControlPlane) -> Iterator[StsEmulator]:
    provider_id = cluster.issuer.removeprefix("https://")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider_id}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{provider_id}:sub": f"system:serviceaccount:{NAMESPACES[0]}:s3-reader",
                        f"{provider_id}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }
    tls = ssl.create_default_context(cafile=str(cluster.ca_file))
    provider = OidcProvider(cluster.issuer, ["sts.amazonaws.com"], ssl_context=tls)
    with StsEmulator("127.0.0.1", 0, ACCOUNT, [provider], {ROLE: policy}) as emulator:
        yield emulator


def irsa_env(tmp_path: Path, sts: StsEmulator, token: str) -> dict[str, str]:
    (tmp_path / "token").write_text(token)
    return {
        "AWS_ROLE_ARN": ROLE,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"),
        "AWS_ENDPOINT_URL_STS": sts.url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_an_apiserver_token_assumes_the_role(
    tmp_path: Path, cluster: ControlPlane, sts: StsEmulator
) -> None:
    token = mint(cluster, NAMESPACES[0], "sts.amazonaws.com")

    result = run_probe(irsa_env(tmp_path, sts, token), home=tmp_path)

    assert result.error is None
    assert result.arn is not None
    assert result.arn.startswith(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-irsa-lab-demo-s3-reader-role/botocore-session-"
    )


def test_the_same_name_in_another_namespace_is_denied(
    tmp_path: Path, cluster: ControlPlane, sts: StsEmulator
) -> None:
    token = mint(cluster, NAMESPACES[1], "sts.amazonaws.com")

    result = run_probe(irsa_env(tmp_path, sts, token), home=tmp_path)

    assert result.error == (
        "An error occurred (AccessDenied) when calling the AssumeRoleWithWebIdentity operation:"
        " Not authorized to perform sts:AssumeRoleWithWebIdentity"
    )


def test_an_apiserver_pod_identity_token_gets_container_credentials(
    tmp_path: Path, cluster: ControlPlane, sts: StsEmulator
) -> None:
    tls = ssl.create_default_context(cafile=str(cluster.ca_file))
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(mint(cluster, NAMESPACES[0], "pods.eks.amazonaws.com"))
    with PodIdentityAgentEmulator(
        "127.0.0.1",
        0,
        issuer=cluster.issuer,
        ssl_context=tls,
        account_id=ACCOUNT,
        associations={(NAMESPACES[0], "s3-reader"): ROLE},
        credentials=sts.credentials,
    ) as agent:
        env = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent.url}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
            "AWS_ENDPOINT_URL_STS": sts.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        result = run_probe(env, home=tmp_path)

    assert result.error is None
    assert result.method == "container-role"
    assert result.arn is not None
    assert "assumed-role/eks-irsa-lab-demo-s3-reader-role/eks-cluster-s3-reader-" in result.arn
