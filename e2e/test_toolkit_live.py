"""The operator toolkit against the real API server's issuer: keys, discovery, tokens it
signs, and the trust policies STS would evaluate them against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from webhook.cli import main

NAMESPACE = "toolkit-live"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def token_for(
    cp: ControlPlane, sa: str, audience: str = "sts.amazonaws.com", seconds: int = 3600
) -> str:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": seconds},
    }
    status, body = cp.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{sa}/token", request
    )
    assert status == 201, body
    token: str = json.loads(body)["status"]["token"]
    return token


@pytest.fixture(scope="module")
def issuer(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cp = control_plane
    cp.ensure_namespace(NAMESPACE)
    for sa in ("app", "other"):
        cp.ensure_service_account(NAMESPACE, sa)
    work = tmp_path_factory.mktemp("toolkit")
    discovery = cp.get_json("/.well-known/openid-configuration", anonymous=True)
    (work / "discovery.json").write_text(json.dumps(discovery))
    return {"dir": work, "discovery": discovery, "issuer": discovery["issuer"]}


@pytest.fixture()
def keys_json(
    control_plane: ControlPlane, issuer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> Path:
    _, jwks, _ = run(capsys, "oidc", "keys", "--public-key", str(control_plane.sa_public_key_path))
    path: Path = issuer["dir"] / "keys.json"
    path.write_text(jwks)
    return path


def test_oidc_keys_from_the_signing_key_match_the_api_servers_jwks(
    control_plane: ControlPlane, issuer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for key_file in (control_plane.sa_public_key_path, control_plane.sa_signing_key_path):
        code, out, _ = run(capsys, "oidc", "keys", "--public-key", str(key_file))
        assert code == 0
        ours = json.loads(out)["keys"]
        served = control_plane.get_json("/openid/v1/jwks", anonymous=True)["keys"]
        assert [k["kid"] for k in ours] == [k["kid"] for k in served]
        assert {(k["n"], k["e"]) for k in ours} == {(k["n"], k["e"]) for k in served}


def test_a_token_the_api_server_minted_verifies_against_our_jwks(
    control_plane: ControlPlane,
    issuer: dict[str, Any],
    keys_json: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work: Path = issuer["dir"]
    (work / "token").write_text(token_for(control_plane, "app"))
    code, out, err = run(
        capsys,
        "token",
        "verify",
        str(work / "token"),
        "--jwks",
        str(keys_json),
        "--audience",
        "sts.amazonaws.com",
        "--output",
        "json",
    )
    assert code == 0, out + err
    code, out, _ = run(capsys, "token", "inspect", str(work / "token"), "--output", "json")
    assert code == 0 and f"system:serviceaccount:{NAMESPACE}:app" in out


def test_oidc_check_accepts_the_api_servers_discovery_and_a_real_token(
    control_plane: ControlPlane,
    issuer: dict[str, Any],
    keys_json: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work: Path = issuer["dir"]
    (work / "token").write_text(token_for(control_plane, "app"))
    code, out, err = run(
        capsys,
        "oidc",
        "check",
        "--issuer",
        issuer["issuer"],
        "--jwks",
        str(keys_json),
        "--discovery",
        str(work / "discovery.json"),
        "--token",
        str(work / "token"),
    )
    assert code == 0, out + err


def test_generated_trust_policy_admits_its_service_account_and_refuses_another(
    control_plane: ControlPlane,
    issuer: dict[str, Any],
    keys_json: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work: Path = issuer["dir"]
    code, policy, _ = run(
        capsys,
        "trust-policy",
        "generate",
        "--issuer",
        issuer["issuer"],
        "--account-id",
        "111122223333",
        "--namespace",
        NAMESPACE,
        "--service-account",
        "app",
    )
    assert code == 0
    (work / "policy.json").write_text(policy)
    assert run(capsys, "trust-policy", "lint", str(work / "policy.json"))[0] == 0
    for sa, expected in (("app", 0), ("other", 1)):
        (work / f"{sa}.token").write_text(token_for(control_plane, sa))
        code, out, err = run(
            capsys,
            "token",
            "verify",
            str(work / f"{sa}.token"),
            "--jwks",
            str(keys_json),
            "--role-trust-policy",
            str(work / "policy.json"),
        )
        assert code == expected, out + err
        if expected:
            assert (
                "AccessDenied" in out + err
                and f"system:serviceaccount:{NAMESPACE}:other" in out + err
            )


def test_a_token_for_another_audience_is_rejected_like_sts_does(
    control_plane: ControlPlane,
    issuer: dict[str, Any],
    keys_json: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work: Path = issuer["dir"]
    (work / "wrong-aud.token").write_text(
        token_for(control_plane, "app", audience="https://kubernetes.default.svc")
    )
    code, out, err = run(
        capsys,
        "token",
        "verify",
        str(work / "wrong-aud.token"),
        "--jwks",
        str(keys_json),
        "--audience",
        "sts.amazonaws.com",
    )
    assert code == 1
    assert "audience" in (out + err).lower()
