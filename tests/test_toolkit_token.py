"""`pod-identity-webhook token`: decode projected tokens and predict STS's answer.

Tokens are signed with real keys, shaped exactly like kube-apiserver's projected
ServiceAccount tokens; JWKS files come from `oidc keys` run on the same keys.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webhook.cli import main
from webhook.toolkit import iam_conditions, jwks
from webhook.toolkit import token as tokens
from webhook.toolkit.iam_conditions import Clause
from webhook.toolkit.trust_policy import generate_trust_policy

ISSUER = "https://oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
HOST_PATH = ISSUER.removeprefix("https://")
ACCOUNT = "111122223333"
PROVIDER_ARN = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST_PATH}"
NOW = 1_700_000_000
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public(key: PrivateKey) -> jwks.PublicKey:
    pub = key.public_key()
    assert isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return pub


def projected_token(
    key: PrivateKey,
    *,
    namespace: str = "payments",
    service_account: str = "api",
    iss: str = ISSUER,
    aud: list[str] | None = None,
    iat: int = NOW,
    ttl: int = 86400,
    kid: bool = True,
    **extra: Any,
) -> str:
    """A token as kube-apiserver mints it for the webhook's projected volume."""
    claims: dict[str, Any] = {
        "aud": aud if aud is not None else ["sts.amazonaws.com"],
        "exp": iat + ttl,
        "iat": iat,
        "iss": iss,
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "ip-10-0-1-23.ec2.internal", "uid": "7c9a1a5e-node"},
            "pod": {"name": f"{service_account}-6d5f8b7c9-x2x9q", "uid": "5a1f0e7e-pod"},
            "serviceaccount": {"name": service_account, "uid": "9f3c2d1b-sa"},
        },
        "nbf": iat,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        **extra,
    }
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    headers: dict[str, Any] = {"typ": None}
    if kid:
        headers["kid"] = jwks.key_id(public(key))
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def keyset(*keys: PrivateKey, include_empty_kid: bool = False) -> list[jwks.JsonWebKey]:
    document = jwks.build_jwks([public(k) for k in keys], include_empty_kid=include_empty_kid)
    return jwks.parse_jwks(document)


def policy_for(namespace: str = "payments", service_account: str = "api") -> dict[str, Any]:
    return generate_trust_policy(
        issuer=ISSUER, account_id=ACCOUNT, namespace=namespace, service_account=service_account
    )


def web_identity_policy(
    condition: dict[str, Any], *, provider: str = PROVIDER_ARN
) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": condition,
            }
        ],
    }


def verdict(token: str, policy: object, **kwargs: Any) -> tokens.StsVerdict:
    kwargs.setdefault("now", NOW + 60)
    return tokens.sts_verdict(tokens.decode_unverified(token), policy, **kwargs)


def write(tmp_path: Path, name: str, data: bytes | str | object) -> str:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(json.dumps(data))
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def jwks_file_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: PrivateKey) -> str:
    """keys.json exactly as an operator would publish it: `oidc keys` on the signing key."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    code, out, _ = run_cli(capsys, "oidc", "keys", "--public-key", write(tmp_path, "sa.key", pem))
    assert code == 0
    return write(tmp_path, "keys.json", out)


# --- decode / inspect -------------------------------------------------------------------------


def test_inspect_shows_identity_times_and_remaining_lifetime(rsa_key: rsa.RSAPrivateKey) -> None:
    report = tokens.inspect_token(projected_token(rsa_key), now=NOW + 3600)
    assert report.identity.namespace == report.identity.sub_namespace == "payments"
    assert report.identity.service_account == report.identity.sub_service_account == "api"
    assert report.identity.pod == "api-6d5f8b7c9-x2x9q"
    assert report.identity.service_account_uid == "9f3c2d1b-sa"
    assert report.expires_in == 86400 - 3600 and not report.expired
    assert report.lifetime == 86400
    assert report.times()["exp"] == {"epoch": NOW + 86400, "utc": "2023-11-15 22:13:20 UTC"}
    assert report.notes == []


def test_inspect_cli_human_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write(tmp_path, "token", projected_token(rsa_key) + "\n")
    code, out, _ = run_cli(capsys, "token", "inspect", path, "--now", str(NOW + 60))
    assert code == 0
    assert "NOT verified" in out
    assert "system:serviceaccount:payments:api" in out
    assert "2023-11-14 22:13:20 UTC" in out  # iat
    assert re.search(r"expires in\s+23h59m ", out)
    assert re.search(r"total lifetime\s+1d", out)
    assert "api-6d5f8b7c9-x2x9q" in out and "ip-10-0-1-23.ec2.internal" in out


def test_inspect_cli_json_shape_and_stdin(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    import io

    token = projected_token(ec_key)
    stdin = io.TextIOWrapper(io.BytesIO(token.encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, _ = run_cli(
        capsys, "token", "inspect", "-", "--output", "json", "--now", str(NOW + 86400 + 5)
    )
    report = json.loads(out)
    assert code == 0
    assert set(report) == {
        "header",
        "claims",
        "times",
        "now",
        "expiresInSeconds",
        "lifetimeSeconds",
        "expired",
        "identity",
        "notes",
    }
    assert report["header"] == {"alg": "ES256", "kid": jwks.key_id(public(ec_key))}
    assert report["expired"] is True and report["expiresInSeconds"] == -5
    assert report["identity"]["namespace"] == "payments"
    assert report["times"]["iat"]["epoch"] == NOW


def test_inspect_notes_a_sub_that_disagrees_with_the_kubernetes_io_block(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = projected_token(rsa_key, sub="system:serviceaccount:other:api")
    report = tokens.inspect_token(token, now=NOW)
    assert report.notes == ["sub says namespace other but kubernetes.io says payments"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("not a token", "not a JWT"),
        ("a.b.c.d.e", "encrypted JWT"),
        ("!!!.e30.sig", "header is not base64url"),
        (base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".e30.sig", "not a JSON object"),
    ],
)
def test_garbage_tokens_are_clear_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    code, out, err = run_cli(capsys, "token", "inspect", write(tmp_path, "t", text))
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


# --- verify -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_fixture", ["rsa_key", "ec_key"])
def test_a_token_verifies_through_the_jwks_built_by_oidc_keys(
    key_fixture: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key: PrivateKey = request.getfixturevalue(key_fixture)
    keys_json = jwks_file_via_cli(tmp_path, capsys, key)
    token_file = write(tmp_path, "token", projected_token(key))
    code, out, _ = run_cli(
        capsys, "token", "verify", token_file, "--jwks", keys_json, "--now", str(NOW + 60)
    )
    assert code == 0, out
    assert "signature verified" in out and "result: token is valid" in out


def test_verify_json_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    token_file = write(tmp_path, "token", projected_token(rsa_key))
    policy = write(tmp_path, "trust.json", policy_for())
    code, out, _ = run_cli(
        capsys,
        "token",
        "verify",
        token_file,
        "--jwks",
        keys_json,
        "--role-trust-policy",
        policy,
        "--now",
        str(NOW + 60),
        "--output",
        "json",
    )
    report = json.loads(out)
    assert code == 0
    assert set(report) == {"ok", "header", "claims", "identity", "checks", "sts"}
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["signature", "issuer", "audience", "expiry"]
    assert all(c["ok"] for c in report["checks"])
    assert report["sts"] == {
        "accepted": True,
        "error": None,
        "message": None,
        "stsError": None,
        "reasons": [],
        "statement": 0,
        "notes": [],
    }


def camel_case_violations(value: object, path: str = "$") -> list[str]:
    """Keys of our own reports that are not camelCase; the token's header and claims are the
    token's content, not ours, and are skipped."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("header", "claims"):
                continue
            if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", str(key)):
                found.append(f"{path}.{key}")
            found += camel_case_violations(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += camel_case_violations(item, f"{path}[{index}]")
    return found


def test_json_reports_use_camel_case_keys_like_kubernetes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    token_file = write(tmp_path, "token", projected_token(rsa_key))
    policy = write(tmp_path, "trust.json", policy_for())
    now = ["--now", str(NOW + 60)]
    reports = []
    for argv in (
        ["token", "inspect", token_file, *now],
        ["token", "verify", token_file, "--jwks", keys_json, "--role-trust-policy", policy, *now],
        ["trust-policy", "lint", policy],
    ):
        code, out, _ = run_cli(capsys, *argv, "-o", "json")
        assert code == 0, out
        reports.append(json.loads(out))
    assert [camel_case_violations(r) for r in reports] == [[], [], []]


def test_a_token_signed_by_another_key_does_not_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = projected_token(impostor, kid=False)
    header = json.loads(jwks.b64url_decode(forged.split(".")[0]))
    assert "kid" not in header
    # Same kid as the published key, different signing key.
    forged = jwt.encode(
        jwt.decode(forged, options={"verify_signature": False}),
        impostor,
        algorithm="RS256",
        headers={"kid": jwks.key_id(public(rsa_key)), "typ": None},
    )
    code, out, _ = run_cli(
        capsys,
        "token",
        "verify",
        write(tmp_path, "t", forged),
        "--jwks",
        keys_json,
        "--now",
        str(NOW + 60),
    )
    assert code == 1
    assert "FAIL signature" in out and "does not match the signature" in out


def test_a_kid_missing_from_the_jwks_is_named(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    check = tokens.verify_signature(
        tokens.decode_unverified(projected_token(ec_key)), keyset(rsa_key)
    )
    assert not check.ok
    assert f"no key with kid {jwks.key_id(public(ec_key))}" in check.message


def test_a_pre_1_16_token_without_kid_verifies_against_a_kidless_entry(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = tokens.decode_unverified(projected_token(rsa_key, kid=False))
    check = tokens.verify_signature(token, keyset(rsa_key, include_empty_kid=True))
    assert check.ok and "keys[1]" in check.message  # the kid-less copy is tried first


def test_unsigned_tokens_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    unsigned = jwt.encode({"iss": ISSUER}, key="", algorithm="none")
    check = tokens.verify_signature(tokens.decode_unverified(unsigned), keyset(rsa_key))
    assert not check.ok and "unsigned" in check.message


def test_claims_are_checked_for_issuer_audience_expiry_and_not_before(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = tokens.decode_unverified(projected_token(rsa_key, aud=["vault"]))
    checks = {
        c.name: c
        for c in tokens.check_claims(
            token, issuers=[ISSUER + "/"], audience="sts.amazonaws.com", now=NOW - 10
        )
    }
    assert not checks["issuer"].ok and "trailing slash" in checks["issuer"].message
    assert not checks["audience"].ok and "vault" in checks["audience"].message
    assert checks["expiry"].ok
    assert not checks["not-before"].ok

    checks = {
        c.name: c
        for c in tokens.check_claims(token, issuers=None, audience="vault", now=NOW + 86400)
    }
    assert checks["issuer"].ok and checks["audience"].ok
    assert (
        not checks["expiry"].ok and "expired at 2023-11-15 22:13:20 UTC" in checks["expiry"].message
    )


def test_verify_exits_1_for_an_expired_token_at_the_given_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys_json = jwks_file_via_cli(tmp_path, capsys, ec_key)
    token_file = write(tmp_path, "token", projected_token(ec_key, ttl=3600))
    argv = ["token", "verify", token_file, "--jwks", keys_json]
    assert run_cli(capsys, *argv, "--now", str(NOW + 3599))[0] == 0
    code, out, _ = run_cli(capsys, *argv, "--now", str(NOW + 3600))
    assert code == 1 and "FAIL expiry" in out


def test_verify_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    token_file = write(tmp_path, "token", projected_token(rsa_key))
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    cases = [
        (["--jwks", write(tmp_path, "bad.json", "[1, 2")], "is not valid JSON"),
        (["--jwks", write(tmp_path, "notjwks.json", {"kty": "RSA"})], "is not a JWKS"),
        (["--issuer-url", "http://insecure.example.com"], "https://"),
        (
            ["--jwks", keys_json, "--role-trust-policy", write(tmp_path, "p", {"a": 1})],
            "no IAM policy",
        ),
        (
            [
                "--jwks",
                keys_json,
                "--role-trust-policy",
                write(tmp_path, "q", policy_for()),
                "--provider-arn",
                "arn:aws:iam::1:role/x",
            ],
            "not an IAM OIDC provider ARN",
        ),
    ]
    for extra, message in cases:
        code, out, err = run_cli(capsys, "token", "verify", token_file, *extra)
        assert code == 2 and out == "", extra
        assert message in err and "Traceback" not in err, (extra, err)
    code, _, err = run_cli(
        capsys, "token", "verify", write(tmp_path, "g", "x.y"), "--jwks", keys_json
    )
    assert code == 2 and "not a JWT" in err


# --- what STS answers -------------------------------------------------------------------------


def test_sts_accepts_the_token_for_the_generated_policy(rsa_key: rsa.RSAPrivateKey) -> None:
    result = verdict(projected_token(rsa_key), policy_for())
    assert result.accepted and result.statement == 0 and result.sts_error is None


def test_wrong_service_account_is_access_denied_naming_both_subjects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    token_file = write(tmp_path, "token", projected_token(rsa_key, service_account="worker"))
    policy = write(tmp_path, "trust.json", policy_for(service_account="api"))
    code, out, _ = run_cli(
        capsys,
        "token",
        "verify",
        token_file,
        "--jwks",
        keys_json,
        "--role-trust-policy",
        policy,
        "--now",
        str(NOW + 60),
    )
    assert code == 1
    assert (
        "STS would answer: AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity"
    ) in out
    assert "expects sub system:serviceaccount:payments:api" in out
    assert "the token's sub is system:serviceaccount:payments:worker" in out


@pytest.mark.parametrize(
    ("operator", "pattern", "accepted"),
    [
        ("StringLike", "system:serviceaccount:payments:*", True),
        ("StringLike", "system:serviceaccount:pay*:a?i", True),
        ("StringLike", "system:serviceaccount:payments:a?", False),
        ("StringEquals", "system:serviceaccount:payments:*", False),  # literal asterisk
        ("StringEqualsIgnoreCase", "SYSTEM:SERVICEACCOUNT:PAYMENTS:API", True),
        ("ForAnyValue:StringLike", "system:serviceaccount:payments:api", True),
        ("StringNotEquals", "system:serviceaccount:payments:api", False),
        ("StringNotLike", "system:serviceaccount:kube-system:*", True),
    ],
)
def test_sub_conditions_are_evaluated_like_iam(
    rsa_key: rsa.RSAPrivateKey, operator: str, pattern: str, accepted: bool
) -> None:
    policy = web_identity_policy({operator: {f"{HOST_PATH}:sub": pattern}})
    result = verdict(projected_token(rsa_key), policy)
    assert result.accepted is accepted
    if not accepted:
        assert result.sts_error == (
            "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity"
        )


def test_condition_key_names_are_case_insensitive(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = web_identity_policy(
        {
            "StringEquals": {
                f"{HOST_PATH.upper()}:SUB": "system:serviceaccount:payments:api",
            }
        }
    )
    assert verdict(projected_token(rsa_key), policy).accepted


def test_a_token_for_another_audience_is_incorrect_token_audience(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    result = verdict(projected_token(rsa_key, aud=["vault.example.com"]), policy_for())
    assert result.sts_error == "InvalidIdentityToken: Incorrect token audience"
    assert "vault.example.com" in result.reasons[0]


def test_an_aud_condition_the_token_does_not_meet_is_access_denied(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    # The token's aud is the provider's client ID, so STS gets as far as the trust policy.
    policy = web_identity_policy(
        {
            "StringEquals": {
                f"{HOST_PATH}:sub": "system:serviceaccount:payments:api",
                f"{HOST_PATH}:aud": "sts.amazonaws.com.cn",
            }
        }
    )
    result = verdict(projected_token(rsa_key), policy)
    assert result.error == "AccessDenied"
    assert "expects aud sts.amazonaws.com.cn" in result.reasons[0]


def test_an_audience_matching_a_custom_client_id_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = generate_trust_policy(
        issuer=ISSUER,
        account_id=ACCOUNT,
        namespace="payments",
        service_account="api",
        audience="my-audience",
    )
    token = projected_token(rsa_key, aud=["my-audience"])
    assert verdict(token, policy, audience="my-audience").accepted
    assert verdict(token, policy).sts_error == "InvalidIdentityToken: Incorrect token audience"


def test_a_policy_for_another_cluster_means_no_openid_connect_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    other_cluster = generate_trust_policy(
        issuer="https://oidc.eks.us-west-2.amazonaws.com/id/OTHERCLUSTER",
        account_id=ACCOUNT,
        namespace="payments",
        service_account="api",
    )
    result = verdict(projected_token(rsa_key), other_cluster)
    assert result.sts_error == (
        f"InvalidIdentityToken: No OpenIDConnect provider found in your account for {ISSUER}"
    )
    assert "oidc-provider/OTHERCLUSTER" not in result.reasons[0]
    assert "id/OTHERCLUSTER" in result.reasons[0]

    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    code, out, _ = run_cli(
        capsys,
        "token",
        "verify",
        write(tmp_path, "t", projected_token(rsa_key)),
        "--jwks",
        keys_json,
        "--role-trust-policy",
        write(tmp_path, "p", other_cluster),
        "--now",
        str(NOW + 60),
        "--output",
        "json",
    )
    report = json.loads(out)
    assert code == 1
    assert report["sts"]["error"] == "InvalidIdentityToken"
    assert (
        report["sts"]["message"] == f"No OpenIDConnect provider found in your account for {ISSUER}"
    )
    assert {c["name"]: c["ok"] for c in report["checks"]}["issuer"] is False


def test_the_registered_provider_arn_decides_which_issuer_sts_knows(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    token = projected_token(rsa_key)
    elsewhere = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example.com/other"
    result = verdict(token, policy_for(), provider_arn=elsewhere)
    assert result.error == "InvalidIdentityToken"
    assert result.message is not None and result.message.startswith("No OpenIDConnect provider")

    # The provider exists, but the role trusts a provider of another account.
    other_account = PROVIDER_ARN.replace(ACCOUNT, "444455556666")
    result = verdict(token, policy_for(), provider_arn=other_account)
    assert result.error == "AccessDenied"
    assert verdict(token, policy_for(), provider_arn=PROVIDER_ARN).accepted


def test_a_provider_trusted_only_for_another_action_is_access_denied(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    policy = policy_for()
    policy["Statement"][0]["Action"] = "sts:AssumeRole"
    result = verdict(projected_token(rsa_key), policy)
    assert result.error == "AccessDenied"
    assert result.reasons == [
        f"no Allow statement grants sts:AssumeRoleWithWebIdentity to {PROVIDER_ARN}"
    ]


def test_an_expired_token_is_expired_token_exception(rsa_key: rsa.RSAPrivateKey) -> None:
    token = projected_token(rsa_key, ttl=3600)
    result = verdict(token, policy_for(), now=NOW + 7200)
    assert result.sts_error == (
        f"ExpiredTokenException: Token expired: current date/time {NOW + 7200} must be before "
        f"the expiration date/time {NOW + 3600}"
    )


def test_https_in_the_condition_key_makes_the_condition_never_match(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    policy = web_identity_policy(
        {
            "StringEquals": {
                f"{ISSUER}:sub": "system:serviceaccount:payments:api",
            }
        }
    )
    result = verdict(projected_token(rsa_key), policy)
    assert result.error == "AccessDenied"
    assert "no condition key with https://" in result.reasons[0]


def test_an_explicit_deny_wins(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = policy_for()
    policy["Statement"].append(
        {
            "Effect": "Deny",
            "Principal": {"Federated": PROVIDER_ARN},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringLike": {f"{HOST_PATH}:sub": "system:serviceaccount:payments:*"}},
        }
    )
    result = verdict(projected_token(rsa_key), policy)
    assert result.error == "AccessDenied" and "explicitly denies" in result.reasons[0]


def test_conditions_on_request_keys_are_assumed_and_noted(rsa_key: rsa.RSAPrivateKey) -> None:
    policy = policy_for()
    policy["Statement"][0]["Condition"]["StringLike"] = {"sts:RoleSessionName": "botocore-*"}
    result = verdict(projected_token(rsa_key), policy)
    assert result.accepted
    assert "sts:RoleSessionName" in result.notes[0]


def test_trust_policy_can_come_from_a_terraform_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    plan = {
        "format_version": "1.2",
        "planned_values": {
            "root_module": {
                "resources": [
                    {
                        "address": "aws_iam_role.api",
                        "type": "aws_iam_role",
                        "values": {"name": "api", "assume_role_policy": json.dumps(policy_for())},
                    },
                    {
                        "address": "aws_iam_role_policy.api",
                        "type": "aws_iam_role_policy",
                        "values": {
                            "policy": json.dumps(
                                {
                                    "Version": "2012-10-17",
                                    "Statement": [
                                        {
                                            "Effect": "Allow",
                                            "Action": "s3:GetObject",
                                            "Resource": "*",
                                        }
                                    ],
                                }
                            )
                        },
                    },
                ]
            }
        },
    }
    keys_json = jwks_file_via_cli(tmp_path, capsys, rsa_key)
    code, out, _ = run_cli(
        capsys,
        "token",
        "verify",
        write(tmp_path, "t", projected_token(rsa_key)),
        "--jwks",
        keys_json,
        "--role-trust-policy",
        write(tmp_path, "plan.json", plan),
        "--now",
        str(NOW + 60),
    )
    assert code == 0, out
    assert "STS would accept this token" in out


# --- IAM condition semantics ------------------------------------------------------------------


def clause(operator: str, key: str, *values: str) -> Clause:
    [parsed] = iam_conditions.parse_condition({operator: {key: list(values)}})
    return parsed


def test_string_like_wildcards() -> None:
    like = iam_conditions.string_like
    assert like("system:serviceaccount:*:api", "system:serviceaccount:payments:api")
    assert like("a*", "a") and like("*", "")
    assert like("a?c", "abc") and not like("a?c", "ac")
    assert not like("a.c", "abc")  # regex characters are literal
    assert like("literal${*}", "literal*") and not like("literal${*}", "literalX")


def test_missing_keys_follow_iam_rules() -> None:
    empty: dict[str, list[str]] = {}
    assert iam_conditions.evaluate(clause("StringEquals", "k", "v"), empty) is False
    assert iam_conditions.evaluate(clause("StringNotEquals", "k", "v"), empty) is True
    assert iam_conditions.evaluate(clause("StringEqualsIfExists", "k", "v"), empty) is True
    assert iam_conditions.evaluate(clause("ForAllValues:StringEquals", "k", "v"), empty) is True
    assert iam_conditions.evaluate(clause("ForAnyValue:StringEquals", "k", "v"), empty) is False
    assert iam_conditions.evaluate(clause("Null", "k", "true"), empty) is True
    assert iam_conditions.evaluate(clause("NumericLessThan", "k", "1"), empty) is None


def test_set_operators_over_multivalued_keys() -> None:
    context = {"amr": ["authenticated", "mfa"]}
    assert iam_conditions.evaluate(clause("ForAnyValue:StringEquals", "amr", "mfa"), context)
    assert not iam_conditions.evaluate(clause("ForAllValues:StringEquals", "amr", "mfa"), context)
    assert iam_conditions.evaluate(
        clause("ForAllValues:StringEquals", "AMR", "mfa", "authenticated"), context
    )


# --- --issuer-url: discovery and JWKS over real HTTPS (a local server, no internet) -----------


@pytest.fixture
def https_issuer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTPS server on 127.0.0.1 with a certificate the default trust store accepts (via
    SSL_CERT_FILE). Returns the issuer URL and the path -> body map it serves."""
    import datetime
    import ipaddress
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = write(tmp_path, "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    key_file = write(
        tmp_path,
        "server.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    monkeypatch.setenv("SSL_CERT_FILE", cert_file)
    routes: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def test_issuer_url_fetches_discovery_and_jwks_over_https(
    https_issuer: tuple[str, dict[str, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    issuer, routes = https_issuer
    routes["/.well-known/openid-configuration"] = json.dumps(
        {"issuer": issuer, "jwks_uri": f"{issuer}/openid/v1/jwks"}
    ).encode()
    routes["/openid/v1/jwks"] = json.dumps(jwks.build_jwks([public(rsa_key)])).encode()
    token_file = write(tmp_path, "token", projected_token(rsa_key, iss=issuer))
    argv = ["token", "verify", token_file, "--now", str(NOW + 60), "--output", "json"]

    code, out, _ = run_cli(capsys, *argv, "--issuer-url", issuer)
    report = json.loads(out)
    assert code == 0, out
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "signature": True,
        "issuer": True,
        "audience": True,
        "expiry": True,
    }

    # The URL is also the expected iss: a trailing slash makes it another issuer.
    code, out, _ = run_cli(capsys, *argv, "--issuer-url", issuer + "/")
    assert code == 1
    assert "trailing slash" in json.loads(out)["checks"][1]["message"]

    del routes["/openid/v1/jwks"]
    code, out, err = run_cli(capsys, *argv, "--issuer-url", issuer)
    assert code == 2 and out == "" and "HTTP 404" in err
