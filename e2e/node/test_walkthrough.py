"""The "Hello IRSA" walkthrough, automated on a real node: a non-root pod of an image with
botocore gets AWS credentials from nothing but what the webhook injected.

The API server, the kubelet (which mounts the projected token), the webhook pods installed by
the chart and botocore are all real; only AWS is emulated (e2e/emulators, on pyjwt), verifying
the token against the JWKS published at the cluster's external issuer (a static HTTPS site, as a
self-managed cluster's S3 bucket) and evaluating the role's trust policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from e2e.emulators import Call
from e2e.images import Images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.issuer import DISCOVERY_PATH, IssuerSite
from e2e.node.walkthrough import (
    ACCOUNT_ID,
    AGENT_NAMESPACE,
    AGENT_ROLE_ARN,
    DEMO_NAMESPACE,
    DEMO_POD,
    DEMO_ROLE_ARN,
    DEMO_SERVICE_ACCOUNT,
    DEMO_UID,
    NEGATIVE_NAMESPACE,
    REGION,
    TOKEN_EXPIRATION,
    AwsEmulators,
    PodReport,
    Release,
    apply_demo_objects,
    aws_emulators,
    kubectl,
    probe_pod,
)

TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
ROLE_NAME = DEMO_ROLE_ARN.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def aws(
    node: Node, node_images: Images, release: Release, issuer_site: IssuerSite
) -> Iterator[AwsEmulators]:
    with aws_emulators(node, issuer_site) as emulators:
        apply_demo_objects(node, node_images, emulators)
        yield emulators


def _calls(aws: AwsEmulators, action: str) -> list[Call]:
    return [c for c in aws.sts.calls if c.action == action]


def test_the_pod_has_the_five_variables_and_a_token_its_user_can_read(
    node: Node, aws: AwsEmulators
) -> None:
    report = probe_pod(node, DEMO_NAMESPACE, DEMO_POD)

    assert report.uid == DEMO_UID
    assert {k: v for k, v in report.env.items() if k != "AWS_ENDPOINT_URL_STS"} == {
        "AWS_ROLE_ARN": DEMO_ROLE_ARN,
        "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE,
        "AWS_STS_REGIONAL_ENDPOINTS": "regional",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    assert report.token_file == TOKEN_FILE
    assert report.token_readable, "the kubelet's projected token is not readable by uid 1000"


def test_kubectl_exec_shows_what_the_webhook_injected(node: Node, aws: AwsEmulators) -> None:
    shown = kubectl(node, "-n", DEMO_NAMESPACE, "exec", DEMO_POD, "--", "python3", "-c",
                    "import os; print(os.environ['AWS_ROLE_ARN'])")  # fmt: skip

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == DEMO_ROLE_ARN


def test_the_token_is_for_sts_this_service_account_and_the_cluster_issuer(
    node: Node, aws: AwsEmulators
) -> None:
    claims = probe_pod(node, DEMO_NAMESPACE, DEMO_POD).claims

    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["sub"] == f"system:serviceaccount:{DEMO_NAMESPACE}:{DEMO_SERVICE_ACCOUNT}"
    assert claims["iss"] == node.issuer
    assert claims["exp"] - claims["iat"] == TOKEN_EXPIRATION


def test_botocore_default_chain_assumes_the_role_and_get_caller_identity_names_it(
    node: Node, aws: AwsEmulators
) -> None:
    report = probe_pod(node, DEMO_NAMESPACE, DEMO_POD)

    assert report.error_code is None, f"{report.error_code}: {report.error_message}"
    assert report.credential_method == "assume-role-with-web-identity"
    assert report.caller_arn is not None
    assert report.caller_arn.startswith(f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{ROLE_NAME}/")
    issued = aws.credentials.lookup(report.access_key_id or "")
    assert issued is not None and issued.arn == report.caller_arn
    assert any(c.ok for c in _calls(aws, "AssumeRoleWithWebIdentity"))
    assert any(c.ok for c in _calls(aws, "GetCallerIdentity"))
    summary.add(
        f"walkthrough: GetCallerIdentity in {DEMO_NAMESPACE}/{DEMO_POD} -> {report.caller_arn}"
    )


def test_the_same_service_account_name_in_another_namespace_is_denied(
    node: Node, aws: AwsEmulators
) -> None:
    report: PodReport = probe_pod(node, NEGATIVE_NAMESPACE, DEMO_POD)

    # The webhook injected the role (the annotation is the same) ...
    assert report.env["AWS_ROLE_ARN"] == DEMO_ROLE_ARN
    # ... but the trust policy pins the namespace, so STS refuses it.
    assert report.error_code == "AccessDenied"
    assert "Not authorized to perform sts:AssumeRoleWithWebIdentity" in (report.error_message or "")
    assert report.caller_arn is None
    summary.add(
        f"walkthrough: {NEGATIVE_NAMESPACE}/{DEMO_SERVICE_ACCOUNT} -> "
        f"{report.error_code}: {report.error_message}"
    )


def test_pod_identity_mode_gets_credentials_from_the_agent_with_the_token_file(
    node: Node, aws: AwsEmulators
) -> None:
    report = probe_pod(node, AGENT_NAMESPACE, DEMO_POD)

    assert (
        report.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    )
    token_file = report.env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
    assert report.token_file == token_file and report.token_readable
    assert report.claims["aud"] == ["pods.eks.amazonaws.com"]
    assert "AWS_ROLE_ARN" not in report.env
    assert report.error_code is None, f"{report.error_code}: {report.error_message}"
    assert report.credential_method == "container-role"
    role_name = AGENT_ROLE_ARN.rsplit("/", 1)[1]
    assert report.caller_arn is not None and f":assumed-role/{role_name}/" in report.caller_arn
    assert any(c.ok for c in aws.agent.calls)
    summary.add(f"walkthrough: Pod Identity in {AGENT_NAMESPACE}/{DEMO_POD} -> {report.caller_arn}")


def test_the_issuer_documents_come_from_the_external_site_never_the_api_server(
    node: Node, aws: AwsEmulators, issuer_site: IssuerSite
) -> None:
    probe_pod(node, DEMO_NAMESPACE, DEMO_POD)  # at least one token verified
    probe_pod(node, AGENT_NAMESPACE, DEMO_POD)

    fetched = aws.sts.issuer_fetches(node.issuer)
    assert (f"{node.issuer}{DISCOVERY_PATH}", issuer_site.address) in fetched
    assert (issuer_site.jwks_uri, issuer_site.address) in fetched
    assert {address for _, address in fetched} == {issuer_site.address} != {node.node_ip}
    served = {(r.path, r.status) for r in issuer_site.served()}
    assert {("/piw-node/.well-known/openid-configuration", 200), ("/piw-node/keys.json", 200)} <= (
        served
    )
    # The API server knows the documents live elsewhere: its own discovery names the site.
    status, raw = node.rest.request("GET", DISCOVERY_PATH)
    assert status == 200
    assert json.loads(raw)["jwks_uri"] == issuer_site.jwks_uri
    summary.add(f"issuer: {node.issuer} served outside the API server")
