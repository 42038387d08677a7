"""`pod-identity-webhook oidc`: JWKS with kube-apiserver's key IDs, discovery, issuer check.

Real keys (cryptography) and real signed tokens (pyjwt) throughout; the CLI is driven through
`webhook.cli.main` with files in tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from webhook.cli import main
from webhook.toolkit import jwks, oidc
from webhook.toolkit.render import Finding, Severity

ISSUER = "https://oidc.example.com/id/CLUSTER1"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Known answer, computed independently with:
#   openssl pkey -pubin -in ec.pub -outform DER | openssl dgst -sha256 -binary | base64url
FIXED_EC_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEg2miSzzS53jcmxoZTj1GeUJzdyCo
Vkc2yZ/tvCFcO9XqXTxStEXktdTRiHt8F6t1U3fK8tVyEDcLomb+N3MwnQ==
-----END PUBLIC KEY-----
"""
FIXED_EC_KID = "SnchvaxynoxSDosYy1Zuvrnkye9sngaMHL-xBSz8IcY"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def expected_kid(key: PrivateKey) -> str:
    """kube-apiserver's keyIDFromPublicKey, written out independently of the module."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def private_pem(key: PrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_pem(key: PrivateKey, fmt: serialization.PublicFormat) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, fmt)


def sign_token(key: PrivateKey, *, iss: str = ISSUER, kid: str | None = "auto") -> str:
    """A token shaped like kube-apiserver's projected ServiceAccount tokens."""
    now = int(time.time())
    claims = {
        "aud": ["sts.amazonaws.com"],
        "exp": now + 86400,
        "iat": now,
        "iss": iss,
        "kubernetes.io": {
            "namespace": "default",
            "pod": {"name": "app-7d9f", "uid": "0e8c3f0a-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": "app", "uid": "0e8c3f0a-0000-4000-8000-000000000002"},
        },
        "nbf": now,
        "sub": "system:serviceaccount:default:app",
    }
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    headers: dict[str, Any] = {"typ": None}
    if kid is not None:
        headers["kid"] = expected_kid(key) if kid == "auto" else kid
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


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


def codes(findings: list[Finding], severity: Severity | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity is severity}


def good_issuer(key: PrivateKey) -> tuple[dict[str, Any], dict[str, Any]]:
    public = key.public_key()
    assert isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    document = oidc.discovery_document(ISSUER, algorithms=oidc.algorithms_for_keys([public]))
    return document, jwks.build_jwks([public])


# --- kid --------------------------------------------------------------------------------------


def test_kid_matches_an_independently_computed_known_answer() -> None:
    [key] = jwks.load_public_keys(FIXED_EC_PUBLIC_PEM)
    assert jwks.key_id(key) == FIXED_EC_KID


@pytest.mark.parametrize("key_fixture", ["rsa_key", "ec_key"])
def test_kid_is_unpadded_base64url_sha256_of_the_der_subject_public_key_info(
    key_fixture: str, request: pytest.FixtureRequest
) -> None:
    key: PrivateKey = request.getfixturevalue(key_fixture)
    public = key.public_key()
    assert isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    kid = jwks.key_id(public)
    assert kid == expected_kid(key)
    assert len(kid) == 43 and "=" not in kid


def test_every_pem_flavour_of_one_rsa_key_gives_the_same_jwk(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    flavours = [
        private_pem(rsa_key, serialization.PrivateFormat.PKCS8),  # PRIVATE KEY
        private_pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),  # RSA PRIVATE KEY
        public_pem(rsa_key, serialization.PublicFormat.SubjectPublicKeyInfo),  # PUBLIC KEY
        public_pem(rsa_key, serialization.PublicFormat.PKCS1),  # RSA PUBLIC KEY
    ]
    assert b"RSA PRIVATE KEY" in flavours[1] and b"RSA PUBLIC KEY" in flavours[3]
    documents = [jwks.build_jwks(jwks.load_public_keys(pem)) for pem in flavours]
    assert all(doc == documents[0] for doc in documents)
    assert documents[0]["keys"][0]["kid"] == expected_kid(rsa_key)


def test_ec_private_key_in_sec1_form_after_an_ec_parameters_block(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    sec1 = private_pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    openssl_style = (
        b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    )
    [key] = jwks.load_public_keys(openssl_style + sec1)
    assert jwks.key_id(key) == expected_kid(ec_key)


# --- JWKS members -----------------------------------------------------------------------------


def test_rsa_jwk_has_kube_apiserver_members_in_go_jose_order(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = jwks.public_key_to_jwk(rsa_key.public_key())
    assert list(jwk) == ["use", "kty", "kid", "alg", "n", "e"]
    assert jwk["use"] == "sig" and jwk["kty"] == "RSA" and jwk["alg"] == "RS256"
    assert jwk["e"] == "AQAB"
    n = int.from_bytes(jwks.b64url_decode(jwk["n"]), "big")
    assert n == rsa_key.public_key().public_numbers().n


@pytest.mark.parametrize(
    ("curve", "crv", "alg", "size"),
    [
        (ec.SECP256R1(), "P-256", "ES256", 32),
        (ec.SECP384R1(), "P-384", "ES384", 48),
        (ec.SECP521R1(), "P-521", "ES512", 66),
    ],
)
def test_ec_jwk_names_curve_and_algorithm_with_fixed_size_coordinates(
    curve: ec.EllipticCurve, crv: str, alg: str, size: int
) -> None:
    key = ec.generate_private_key(curve)
    jwk = jwks.public_key_to_jwk(key.public_key())
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", crv, alg, "sig")
    assert len(jwks.b64url_decode(jwk["x"])) == size == len(jwks.b64url_decode(jwk["y"]))
    assert jwk["kid"] == expected_kid(key)


def test_jwk_round_trips_to_the_same_public_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = jwks.public_key_to_jwk(ec_key.public_key())
    assert jwks.key_id(jwks.jwk_to_public_key(jwk)) == expected_kid(ec_key)


# --- oidc keys --------------------------------------------------------------------------------


def test_oidc_keys_prints_a_jwks_from_private_and_public_key_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    private = write(tmp_path, "sa.key", private_pem(rsa_key, serialization.PrivateFormat.PKCS8))
    public = write(
        tmp_path, "sa.pub", public_pem(rsa_key, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out, err = run_cli(capsys, "oidc", "keys", "--public-key", private)
    assert code == 0 and err == ""
    from_private = json.loads(out)  # the default is the JWKS itself: `> keys.json` works
    assert [k["kid"] for k in from_private["keys"]] == [expected_kid(rsa_key)]

    code, out, _ = run_cli(capsys, "oidc", "keys", "--public-key", public, "-o", "json")
    assert code == 0 and json.loads(out) == from_private
    code, out, _ = run_cli(capsys, "oidc", "keys", "--public-key", public, "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == from_private


def test_oidc_keys_text_is_for_people_not_the_json_again(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    old = write(tmp_path, "old.key", private_pem(rsa_key, serialization.PrivateFormat.PKCS8))
    again = write(tmp_path, "old.pub", public_pem(rsa_key, serialization.PublicFormat.PKCS1))
    new = write(tmp_path, "new.key", private_pem(ec_key, serialization.PrivateFormat.PKCS8))
    argv = ["oidc", "keys", "--public-key", old, "--public-key", again, "--public-key", new]
    code, out, _ = run_cli(capsys, *argv, "--output", "text")
    assert code == 0
    assert "{" not in out and '"kty"' not in out
    lines = out.splitlines()
    assert lines[0] == "2 key(s) in the JWKS"
    assert f"  kid {expected_kid(rsa_key)}" in lines
    assert f"    RSA 2048-bit, signs RS256, from {old}" in lines
    assert f"  {again}: same key as above, published once" in lines
    assert f"    ECDSA P-256, signs ES256, from {new}" in lines


def test_oidc_keys_warns_about_rsa_keys_sts_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write(tmp_path, "weak.key", private_pem(weak, serialization.PrivateFormat.PKCS8))
    code, out, err = run_cli(capsys, "oidc", "keys", "--public-key", path)
    assert code == 0 and json.loads(out)["keys"]  # still published: rotating away needs it
    assert f"warning: {path}: RSA 1024-bit key; STS and `oidc check` need at least 2048" in err


def test_oidc_discovery_text_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["oidc", "discovery", "--issuer", "https://issuer.example/cluster"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and json.loads(out)["issuer"] == "https://issuer.example/cluster"
    code, out, _ = run_cli(capsys, *argv, "-o", "text")
    assert code == 0 and "{" not in out
    assert "issuer              https://issuer.example/cluster" in out
    assert "https://issuer.example/cluster/.well-known/openid-configuration" in out


def test_several_keys_publish_a_rotation_and_identical_keys_are_deduplicated(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    old = write(tmp_path, "old.key", private_pem(rsa_key, serialization.PrivateFormat.PKCS8))
    old_pub = write(tmp_path, "old.pub", public_pem(rsa_key, serialization.PublicFormat.PKCS1))
    new = write(
        tmp_path, "new.key", private_pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL)
    )
    code, out, _ = run_cli(
        capsys,
        "oidc",
        "keys",
        "--public-key",
        old,
        "--public-key",
        old_pub,
        "--public-key",
        new,
        "--output",
        "json",
    )
    assert code == 0
    keys = json.loads(out)["keys"]
    assert [(k["kid"], k["alg"]) for k in keys] == [
        (expected_kid(rsa_key), "RS256"),
        (expected_kid(ec_key), "ES256"),
    ]


def test_include_empty_kid_adds_a_kidless_copy_of_each_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write(tmp_path, "sa.key", private_pem(rsa_key, serialization.PrivateFormat.PKCS8))
    code, out, _ = run_cli(
        capsys, "oidc", "keys", "--public-key", path, "--include-empty-kid", "--output", "json"
    )
    assert code == 0
    with_kid, without_kid = json.loads(out)["keys"]
    assert with_kid["kid"] == expected_kid(rsa_key)
    assert "kid" not in without_kid
    assert {k: v for k, v in with_kid.items() if k != "kid"} == without_kid


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello world", "not a PEM or DER encoded key"),
        (b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n", "cannot parse"),
        (b"-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n", "malformed PEM"),
        (b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n", "unsupported PEM block 'FOO'"),
    ],
)
def test_unusable_key_files_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = write(tmp_path, "bad.pem", content)
    code, out, err = run_cli(capsys, "oidc", "keys", "--public-key", path)
    assert code == 2 and out == ""
    assert message in err and path in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_encrypted_and_unsupported_keys_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    code, _, err = run_cli(
        capsys, "oidc", "keys", "--public-key", write(tmp_path, "enc.pem", encrypted)
    )
    assert code == 2 and "encrypted" in err

    edwards = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, _, err = run_cli(
        capsys, "oidc", "keys", "--public-key", write(tmp_path, "ed.pem", edwards)
    )
    assert code == 2 and "not supported" in err

    code, _, err = run_cli(capsys, "oidc", "keys", "--public-key", str(tmp_path / "missing"))
    assert code == 2 and "cannot read key file" in err


# --- oidc discovery ---------------------------------------------------------------------------


def test_discovery_document_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "oidc", "discovery", "--issuer", ISSUER)
    assert code == 0
    assert json.loads(out) == {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/keys.json",
        "authorization_endpoint": "urn:kubernetes:programmatic_authorization",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["sub", "iss"],
    }


def test_discovery_keeps_the_issuer_verbatim_and_takes_algorithms_from_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key = write(
        tmp_path, "ec.pub", public_pem(ec_key, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out, _ = run_cli(
        capsys,
        "oidc",
        "discovery",
        "--issuer",
        "https://issuer.example.com/",
        "--public-key",
        key,
        "--output",
        "json",
    )
    document = json.loads(out)
    assert code == 0
    assert document["issuer"] == "https://issuer.example.com/"
    assert document["jwks_uri"] == "https://issuer.example.com/keys.json"
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]

    code, out, _ = run_cli(
        capsys,
        "oidc",
        "discovery",
        "--issuer",
        ISSUER,
        "--alg",
        "RS256",
        "--alg",
        "ES256",
        "--jwks-uri",
        "https://cdn.example.com/jwks.json",
    )
    document = json.loads(out)
    assert document["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert document["jwks_uri"] == "https://cdn.example.com/jwks.json"


def test_discovery_refuses_a_plain_http_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "oidc", "discovery", "--issuer", "http://example.com")
    assert code == 2 and out == "" and "https://" in err


# --- oidc check -------------------------------------------------------------------------------


def test_a_consistent_issuer_and_a_token_from_it_pass_the_check(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    discovery, keyset = good_issuer(rsa_key)
    findings = oidc.check_issuer(ISSUER, discovery, keyset, token=sign_token(rsa_key))
    assert codes(findings) == {"token-signature"}
    assert all(f.severity is Severity.INFO for f in findings)


def test_check_end_to_end_with_files_built_by_keys_and_discovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key = write(tmp_path, "sa.key", private_pem(ec_key, serialization.PrivateFormat.PKCS8))
    _, keys_out, _ = run_cli(capsys, "oidc", "keys", "--public-key", key)
    _, discovery_out, _ = run_cli(
        capsys, "oidc", "discovery", "--issuer", ISSUER, "--public-key", key
    )
    keys_file = write(tmp_path, "keys.json", keys_out)
    discovery_file = write(tmp_path, "openid-configuration", discovery_out)
    token_file = write(tmp_path, "token", sign_token(ec_key))
    argv = [
        "oidc",
        "check",
        "--issuer",
        ISSUER,
        "--jwks",
        keys_file,
        "--discovery",
        discovery_file,
        "--token",
        token_file,
    ]

    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "no problems found" in out

    code, out, _ = run_cli(capsys, *argv, "--output", "json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["issuer"] == ISSUER
    assert report["summary"] == {"error": 0, "warning": 0, "info": 1}
    assert set(report["findings"][0]) == {"severity", "code", "message", "where", "statement"}


def test_issuer_must_be_https(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    discovery["issuer"] = "http://oidc.example.com/id/CLUSTER1"
    findings = oidc.check_issuer("http://oidc.example.com/id/CLUSTER1", discovery, keyset)
    assert "issuer-not-https" in codes(findings, Severity.ERROR)


def test_trailing_slash_mismatch_is_called_out(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    discovery["issuer"] = ISSUER + "/"
    findings = oidc.check_issuer(ISSUER, discovery, keyset)
    assert codes(findings, Severity.ERROR) == {"issuer-trailing-slash"}
    assert "trailing slash" in findings[0].message


def test_a_different_discovery_issuer_is_an_error(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    discovery["issuer"] = "https://other.example.com"
    assert codes(oidc.check_issuer(ISSUER, discovery, keyset), Severity.ERROR) == {
        "issuer-mismatch"
    }


def test_jwks_uri_must_be_https_and_should_be_on_the_issuer_host(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    discovery, keyset = good_issuer(rsa_key)
    discovery["jwks_uri"] = "http://oidc.example.com/keys.json"
    assert "jwks-uri-not-https" in codes(
        oidc.check_issuer(ISSUER, discovery, keyset), Severity.ERROR
    )
    discovery["jwks_uri"] = "https://bucket.s3.amazonaws.com/keys.json"
    findings = oidc.check_issuer(ISSUER, discovery, keyset)
    assert codes(findings) == {"jwks-uri-other-host"} and not any(
        f.severity is Severity.ERROR for f in findings
    )


def test_advertised_algorithms_must_cover_the_key_types(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    discovery, keyset = good_issuer(ec_key)
    discovery["id_token_signing_alg_values_supported"] = ["RS256"]
    findings = oidc.check_issuer(ISSUER, discovery, keyset)
    assert "alg-not-advertised" in codes(findings, Severity.ERROR)
    assert "alg-without-key" in codes(findings, Severity.WARNING)


def test_missing_discovery_fields_are_errors(rsa_key: rsa.RSAPrivateKey) -> None:
    _, keyset = good_issuer(rsa_key)
    findings = oidc.check_issuer(ISSUER, {"issuer": ISSUER}, keyset)
    assert {f.where for f in findings if f.code == "discovery-missing-field"} == {
        "discovery.jwks_uri",
        "discovery.response_types_supported",
        "discovery.subject_types_supported",
        "discovery.id_token_signing_alg_values_supported",
    }


def test_jwks_keys_need_kid_use_and_alg(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    bare = {k: v for k, v in keyset["keys"][0].items() if k not in ("kid", "use", "alg")}
    findings = oidc.check_issuer(ISSUER, discovery, {"keys": [bare]})
    assert {"jwk-no-kid", "jwk-no-use", "jwk-no-alg"} <= codes(findings, Severity.WARNING)

    wrong = dict(keyset["keys"][0], use="enc", alg="ES256")
    findings = oidc.check_issuer(ISSUER, discovery, {"keys": [wrong]})
    assert {"jwk-use", "jwk-alg-mismatch"} <= codes(findings, Severity.ERROR)


def test_a_kidless_copy_next_to_the_kid_key_is_only_informational(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    public = rsa_key.public_key()
    discovery = oidc.discovery_document(ISSUER)
    keyset = jwks.build_jwks([public], include_empty_kid=True)
    findings = oidc.check_issuer(ISSUER, discovery, keyset)
    assert [(f.code, f.severity) for f in findings] == [("jwk-no-kid", Severity.INFO)]


def test_a_kid_other_than_kube_apiservers_is_flagged(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    keyset["keys"][0]["kid"] = "my-key-1"
    findings = oidc.check_issuer(ISSUER, discovery, keyset, token=sign_token(rsa_key))
    assert "jwk-kid-not-derived" in codes(findings, Severity.WARNING)
    assert "token-signature" in codes(findings, Severity.ERROR)  # STS cannot find the kid


def test_rsa_keys_below_2048_bits_are_errors() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    discovery, keyset = good_issuer(weak)
    assert "jwk-weak-rsa" in codes(oidc.check_issuer(ISSUER, discovery, keyset), Severity.ERROR)


def test_private_key_material_in_the_jwks_is_an_error(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, keyset = good_issuer(rsa_key)
    keyset["keys"][0]["d"] = "AQAB"
    assert "jwk-private" in codes(oidc.check_issuer(ISSUER, discovery, keyset), Severity.ERROR)


def test_a_token_from_another_issuer_or_key_fails_the_check(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    discovery, keyset = good_issuer(rsa_key)
    foreign_iss = sign_token(rsa_key, iss=ISSUER + "/")
    findings = oidc.check_issuer(ISSUER, discovery, keyset, token=foreign_iss)
    assert codes(findings, Severity.ERROR) == {"token-issuer-mismatch"}
    assert "trailing slash" in findings[0].message

    other_key = sign_token(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    findings = oidc.check_issuer(ISSUER, discovery, keyset, token=other_key)
    assert codes(findings, Severity.ERROR) == {"token-signature"}


def test_check_exits_1_on_errors_and_2_on_unreadable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    discovery, keyset = good_issuer(rsa_key)
    discovery["issuer"] = ISSUER + "/"
    argv = [
        "oidc",
        "check",
        "--issuer",
        ISSUER,
        "--jwks",
        write(tmp_path, "k.json", keyset),
        "--discovery",
        write(tmp_path, "d.json", discovery),
    ]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 1 and "ERROR   issuer-trailing-slash" in out

    code, out, err = run_cli(
        capsys,
        "oidc",
        "check",
        "--issuer",
        ISSUER,
        "--jwks",
        write(tmp_path, "bad", "{nope"),
        "--discovery",
        argv[-1],
    )
    assert code == 2 and out == "" and "is not valid JSON" in err

    code, _, err = run_cli(capsys, *argv, "--token", write(tmp_path, "t", "garbage"))
    assert code == 2 and "not a JWT" in err


def test_a_document_that_is_not_a_jwks_is_a_finding(rsa_key: rsa.RSAPrivateKey) -> None:
    discovery, _ = good_issuer(rsa_key)
    findings = oidc.check_issuer(ISSUER, discovery, ["not", "a", "jwks"])
    assert codes(findings, Severity.ERROR) == {"jwks-invalid"}
