"""The SDKs users run, on a real node: beside botocore (test_walkthrough.py), the AWS SDKs for
Go v2, JavaScript v3 and Java 2.x each call STS GetCallerIdentity through their default
credential chain, from nothing but what the webhook injected, in IRSA mode and in EKS Pod
Identity mode.

One pod of the SDK image (e2e/images/sdks.py; programs in e2e/sdk) per mode, made like the
walkthrough's botocore pod (same helper, same ServiceAccounts, same emulators); only the image
differs. Each program prints one JSON object: the SDK's version and the ARN or the error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.emulators import Call
from e2e.images import Images
from e2e.images.sdks import SDK_PROGRAMS
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.issuer import IssuerSite
from e2e.node.walkthrough import (
    ACCOUNT_ID,
    AGENT_NAMESPACE,
    AGENT_ROLE_ARN,
    AGENT_SERVICE_ACCOUNT,
    DEMO_NAMESPACE,
    DEMO_ROLE_ARN,
    DEMO_SERVICE_ACCOUNT,
    ROLE_ANNOTATION,
    AwsEmulators,
    Release,
    aws_emulators,
    demo_pod,
    ensure_namespace,
    ensure_service_account,
    recreate_pod,
)

SDK_POD = "sdk-demo"
# The error AWS SDK for Java 2.x gives when IRSA is configured but the `sts` module is not on
# the class path (WebIdentityTokenFileCredentialsProvider loads it by reflection).
JAVA_NO_STS = "To use web identity tokens, the 'sts' service module must be on the class path."


@dataclass(frozen=True)
class Mode:
    name: str  # as printed: "irsa" or "pod-identity"
    namespace: str
    service_account: str
    role_arn: str

    @property
    def assumed_role_prefix(self) -> str:
        return f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{self.role_arn.rsplit('/', 1)[1]}/"

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


IRSA = Mode("irsa", DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT, DEMO_ROLE_ARN)
POD_IDENTITY = Mode("pod-identity", AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, AGENT_ROLE_ARN)
MODES = (IRSA, POD_IDENTITY)
SDKS = ("go", "javascript", "java")


@dataclass(frozen=True)
class SdkResult:
    sdk: str
    version: str
    arn: str | None
    error: str | None


def sdk_pod(images: Images, service_account: str, sts_url: str) -> dict[str, Any]:
    """The walkthrough's pod (non-root, read-only root filesystem, AWS_ENDPOINT_URL_STS in
    its own spec) with the SDK image instead of the botocore one."""
    body = demo_pod(SDK_POD, service_account, images, sts_url)
    body["metadata"]["labels"] = {"app": SDK_POD}
    body["spec"]["containers"][0]["image"] = images.sdks.ref
    return body


@pytest.fixture(scope="module")
def aws(
    node: Node, node_images: Images, release: Release, issuer_site: IssuerSite
) -> Iterator[AwsEmulators]:
    with aws_emulators(node, issuer_site) as emulators:
        for mode in MODES:
            annotations = {ROLE_ANNOTATION: mode.role_arn} if mode is IRSA else {}
            ensure_namespace(node, mode.namespace)
            ensure_service_account(node, mode.namespace, mode.service_account, annotations)
            recreate_pod(
                node, mode.namespace, sdk_pod(node_images, mode.service_account, emulators.sts.url)
            )
        yield emulators


def run_sdk(node: Node, mode: Mode, program: str) -> SdkResult:
    """Exec the program in the mode's pod (as `kubectl exec`); its one JSON line."""
    result = node.exec_in_pod(mode.namespace, SDK_POD, "app", SDK_PROGRAMS[program], timeout=120)
    assert result.rc == 0, f"{program} exited {result.rc}: {result.stderr[-2000:]}"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{program} printed no result: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    data = json.loads(lines[-1])
    return SdkResult(data["sdk"], data["version"], data.get("arn"), data.get("error"))


def _new(calls: list[Call], before: int, action: str) -> list[Call]:
    return [c for c in calls[before:] if c.action == action]


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
@pytest.mark.parametrize("program", SDKS)
def test_the_sdk_default_chain_gets_the_role_and_get_caller_identity_names_it(
    node: Node, aws: AwsEmulators, program: str, mode: Mode
) -> None:
    sts_before, agent_before = len(aws.sts.calls), len(aws.agent.calls)

    got = run_sdk(node, mode, program)

    summary.add(f"sdk: {got.sdk} {got.version} {mode.name} -> {got.arn or got.error}")
    assert got.error is None, got.error
    assert got.arn is not None and got.arn.startswith(mode.assumed_role_prefix), got.arn
    # The credentials came the way the mode says, for this pod's ServiceAccount ...
    if mode is IRSA:
        exchanges = _new(aws.sts.calls, sts_before, "AssumeRoleWithWebIdentity")
        assert [(c.ok, c.subject) for c in exchanges] == [(True, mode.subject)]
        assert not aws.agent.calls[agent_before:]
    else:
        fetched = aws.agent.calls[agent_before:]
        assert [(c.ok, c.subject) for c in fetched] == [(True, mode.subject)]
        assert not _new(aws.sts.calls, sts_before, "AssumeRoleWithWebIdentity")
    # ... and the signed GetCallerIdentity reached the emulator (its SigV4 checked there).
    identities = _new(aws.sts.calls, sts_before, "GetCallerIdentity")
    assert [(c.ok, c.arn) for c in identities] == [(True, got.arn)]


def test_java_without_the_sts_module_fails_irsa_naming_the_missing_module(
    node: Node, aws: AwsEmulators
) -> None:
    sts_before = len(aws.sts.calls)

    got = run_sdk(node, IRSA, "java-without-sts")

    assert got.arn is None
    assert got.error is not None
    assert got.error.startswith("SdkClientException: Unable to load credentials from any of")
    assert f"WebIdentityTokenFileCredentialsProvider(): {JAVA_NO_STS}" in got.error
    assert not aws.sts.calls[sts_before:], "the provider gave up before calling STS"
    summary.add(
        f"sdk: {got.sdk}-without-sts {got.version} {IRSA.name} -> SdkClientException: "
        f"Unable to load credentials from any of the providers in the chain ...: "
        f"[..., WebIdentityTokenFileCredentialsProvider(): {JAVA_NO_STS}, ...]"
    )


def test_java_without_the_sts_module_still_resolves_pod_identity_credentials(
    node: Node, aws: AwsEmulators
) -> None:
    agent_before = len(aws.agent.calls)

    got = run_sdk(node, POD_IDENTITY, "java-without-sts")

    # The container provider needs no STS client: only IRSA depends on the module.
    assert got.error is None, got.error
    assert got.arn is not None and got.arn.startswith("resolved ")
    assert [c.ok for c in aws.agent.calls[agent_before:]] == [True]
    summary.add(
        f"sdk: {got.sdk}-without-sts {got.version} {POD_IDENTITY.name} -> credentials resolved "
        "(the default chain alone: GetCallerIdentity itself needs the sts module)"
    )


def test_the_sdk_image_runs_as_a_user_with_the_runtimes_and_no_jdk(
    node: Node, aws: AwsEmulators
) -> None:
    probe = (
        "id -u; command -v javac || echo no-javac; java -version 2>&1 | head -n 1; node --version"
    )

    result = node.exec_in_pod(IRSA.namespace, SDK_POD, "app", ["sh", "-c", probe])

    assert result.rc == 0, result.stderr
    uid, javac, java, nodejs = result.stdout.splitlines()
    assert (uid, javac) == ("1000", "no-javac")
    assert java.startswith('openjdk version "17.'), java  # Debian's openjdk-17-jre-headless
    assert nodejs.startswith("v18."), nodejs  # Debian bookworm's nodejs
