"""Rotating the service-account signing key of a self-managed cluster, as operators do it.

The node's API server issues tokens for an external issuer (a static HTTPS site, see
e2e/node/issuer.py). A second signing key is added: kube-apiserver restarts verifying with both
public keys and signing with the new one. Until keys.json is republished, STS (the emulator,
configured like an IAM OIDC provider) cannot find the new key, and the toolkit (`oidc check`,
`token verify`) names the kid it misses. Once `oidc keys` republishes both keys, a pod with a
new-key token and a pod with an old-key token (minted before the rotation, still mounted) both
get credentials.

The module leaves the node rotated (both keys verified and published, the new one signing): a
steady state every other suite works with.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s_client

from e2e.controlplane import _write_key
from e2e.images import Images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.issuer import IssuerSite
from e2e.node.walkthrough import (
    ACCOUNT_ID,
    DEMO_NAMESPACE,
    DEMO_ROLE_ARN,
    DEMO_SERVICE_ACCOUNT,
    ROLE_ANNOTATION,
    AwsEmulators,
    PodReport,
    Release,
    aws_emulators,
    demo_pod,
    ensure_namespace,
    ensure_service_account,
    probe_pod,
    recreate_pod,
    typed_api,
)
from webhook.toolkit.jwks import key_id, load_public_keys

OLD_POD = "rotation-old-key"
NEW_POD = "rotation-new-key"
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
ROLE_NAME = DEMO_ROLE_ARN.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Toolkit:
    """What `oidc check` and `token verify` (the token doctor) said about a token."""

    check_rc: int
    check_out: str
    verify_rc: int
    verify_out: str


@dataclass(frozen=True)
class Rotation:
    old_kid: str
    new_kid: str
    old_token_kid: str
    new_token_kid: str
    baseline: PodReport  # the old-key pod, before anything changed
    before: PodReport  # the new-key pod, keys.json not yet republished
    before_toolkit: Toolkit
    published_before: tuple[str, ...]
    after: PodReport  # the new-key pod, both keys republished
    after_toolkit: Toolkit
    published_after: tuple[str, ...]
    old_after: PodReport  # the old-key pod, after the republish


def _kid_of(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def _kid_of_key(path: Path) -> str:
    """The kid kube-apiserver puts in the tokens this key signs."""
    return key_id(load_public_keys(path.read_bytes(), str(path))[0])


def _pod_token(node: Node, pod: str) -> str:
    result = node.exec_in_pod(DEMO_NAMESPACE, pod, "app", ["cat", TOKEN_FILE])
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def _new_signing_key(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / "sa-2.key", directory / "sa-2.pub"
    _write_key(private, key)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _toolkit(site: IssuerSite, token: str, workdir: Path) -> Toolkit:
    """Both commands as an operator runs them on the published documents: `oidc check` on
    the two files the site serves, `token verify` fetching them from the issuer URL."""
    token_file = workdir / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    try:
        check = site.toolkit(
            "oidc", "check", "--issuer", site.issuer,
            "--discovery", str(site.root / ".well-known" / "openid-configuration"),
            "--jwks", str(site.root / "keys.json"), "--token", str(token_file),
        )  # fmt: skip
        verify = site.toolkit("token", "verify", str(token_file), "--issuer-url", site.issuer)
    finally:
        token_file.unlink()
    return Toolkit(
        check.returncode,
        check.stdout + check.stderr,
        verify.returncode,
        verify.stdout + verify.stderr,
    )


@pytest.fixture(scope="module")
def aws(
    node: Node, node_images: Images, release: Release, issuer_site: IssuerSite
) -> Iterator[AwsEmulators]:
    with aws_emulators(node, issuer_site) as emulators:
        ensure_namespace(node, DEMO_NAMESPACE)
        ensure_service_account(
            node, DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT, {ROLE_ANNOTATION: DEMO_ROLE_ARN}
        )
        yield emulators


@pytest.fixture(scope="module")
def rotation(
    node: Node,
    node_images: Images,
    aws: AwsEmulators,
    issuer_site: IssuerSite,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rotation]:
    workdir = tmp_path_factory.mktemp("rotation")
    old_public = node.pki.sa_pub_file
    old_kid = _kid_of_key(old_public)

    # Before: the old key signs, keys.json has it; a pod gets its token now.
    published_before = issuer_site.publish([old_public]).kids
    recreate_pod(node, DEMO_NAMESPACE, demo_pod(OLD_POD, DEMO_SERVICE_ACCOUNT, node_images,
                                                aws.sts.url))  # fmt: skip
    baseline = probe_pod(node, DEMO_NAMESPACE, OLD_POD)
    old_token_kid = _kid_of(_pod_token(node, OLD_POD))

    # The operator adds a second key: verify with both, sign with the new one.
    new_private, new_public = _new_signing_key(workdir)
    new_kid = _kid_of_key(new_public)
    node.restart_apiserver(
        service_account_key_files=[old_public, new_public],
        service_account_signing_key_file=new_private,
    )
    recreate_pod(node, DEMO_NAMESPACE, demo_pod(NEW_POD, DEMO_SERVICE_ACCOUNT, node_images,
                                                aws.sts.url))  # fmt: skip
    new_token = _pod_token(node, NEW_POD)
    before = probe_pod(node, DEMO_NAMESPACE, NEW_POD)
    before_toolkit = _toolkit(issuer_site, new_token, workdir)

    # Republish keys.json with both keys, with the project's own `oidc keys`.
    published_after = issuer_site.publish([old_public, new_public]).kids
    after = probe_pod(node, DEMO_NAMESPACE, NEW_POD)
    after_toolkit = _toolkit(issuer_site, new_token, workdir)
    old_after = probe_pod(node, DEMO_NAMESPACE, OLD_POD)

    yield Rotation(
        old_kid=old_kid,
        new_kid=new_kid,
        old_token_kid=old_token_kid,
        new_token_kid=_kid_of(new_token),
        baseline=baseline,
        before=before,
        before_toolkit=before_toolkit,
        published_before=published_before,
        after=after,
        after_toolkit=after_toolkit,
        published_after=published_after,
        old_after=old_after,
    )
    core: Any = typed_api(k8s_client.CoreV1Api, node.api)
    for pod in (OLD_POD, NEW_POD):
        with contextlib.suppress(Exception):
            core.delete_namespaced_pod(pod, DEMO_NAMESPACE, grace_period_seconds=0)


def _outcome(report: PodReport) -> str:
    return report.caller_arn or f"{report.error_code}: {report.error_message}"


def _assumed(report: PodReport) -> bool:
    return report.error_code is None and (report.caller_arn or "").startswith(
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{ROLE_NAME}/"
    )


def test_each_pod_token_is_signed_by_the_key_that_signed_at_its_creation(
    rotation: Rotation,
) -> None:
    assert rotation.old_kid != rotation.new_kid
    assert rotation.old_token_kid == rotation.old_kid
    assert rotation.new_token_kid == rotation.new_kid
    assert rotation.published_before == (rotation.old_kid,)


def test_before_the_rotation_the_old_key_token_gets_credentials(rotation: Rotation) -> None:
    assert _assumed(rotation.baseline), _outcome(rotation.baseline)


def test_before_republish_sts_refuses_the_new_key_token_as_invalid_identity_token(
    rotation: Rotation,
) -> None:
    before = rotation.before

    assert before.error_code == "InvalidIdentityToken", _outcome(before)
    assert (before.error_message or "").startswith(
        "Couldn't retrieve verification key from your identity provider"
    )
    assert before.caller_arn is None
    summary.add(f"rotation: before republish -> {_outcome(before)}")


def test_before_republish_oidc_check_and_token_verify_name_the_missing_kid(
    rotation: Rotation,
) -> None:
    toolkit = rotation.before_toolkit
    missing = f"no key with kid {rotation.new_kid} in the JWKS"

    assert toolkit.check_rc == 1 and missing in toolkit.check_out, toolkit.check_out
    assert toolkit.verify_rc == 1 and missing in toolkit.verify_out, toolkit.verify_out
    summary.add(
        f"rotation: before republish, oidc check and token verify -> {missing} "
        f"(it has: {rotation.old_kid})"
    )


def test_after_republish_the_new_key_token_gets_credentials(rotation: Rotation) -> None:
    after = rotation.after

    assert rotation.published_after == (rotation.old_kid, rotation.new_kid)
    assert _assumed(after), _outcome(after)
    toolkit = rotation.after_toolkit
    assert toolkit.check_rc == 0, toolkit.check_out
    assert toolkit.verify_rc == 0, toolkit.verify_out
    summary.add(f"rotation: after republish -> {_outcome(after)}")


def test_after_republish_a_pod_with_an_old_key_token_still_gets_credentials(
    rotation: Rotation,
) -> None:
    old = rotation.old_after

    assert _assumed(old), _outcome(old)
    summary.add(f"rotation: old-key token -> {_outcome(old)}")
