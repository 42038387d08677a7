"""The external issuer of the node e2e (e2e/node/issuer.py) on loopback: documents published by
the project's own `oidc keys` / `oidc discovery`, served over HTTPS from a CA of its own, and
the STS emulator configured like an IAM OIDC provider (issuer URL, client ID, trusted CA), the
host name resolved only through the emulator's hosts map."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import jwt
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from e2e.emulators import OidcProvider, StsEmulator
from e2e.node.issuer import IssuerSite
from webhook.toolkit.jwks import key_id

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/issuer-site-test"
SUB = "system:serviceaccount:demo:s3-reader"
AUDIENCE = "sts.amazonaws.com"
# A name no resolver knows: only the emulator's hosts map leads it to the site.
HOST = "oidc.issuer-site-test.example"
PATH = "/cluster-1"


class SigningKey:
    def __init__(self, directory: Path, name: str) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = key_id(self.key.public_key())
        self.public_file = directory / f"{name}.pub"
        self.public_file.write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, iss: str, *, sub: str = SUB) -> str:
        now = int(time.time())
        claims = {"iss": iss, "sub": sub, "aud": [AUDIENCE], "iat": now, "nbf": now}
        claims["exp"] = now + 3600
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


def trust_policy(issuer: str) -> dict[str, Any]:
    provider = issuer.removeprefix("https://")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{provider}:sub": SUB, f"{provider}:aud": AUDIENCE}
                },
            }
        ],
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[IssuerSite]:
    # Port 0: the issuer URL then carries the port the site got.
    served = IssuerSite(tmp_path / "site", host=HOST, path=PATH, address="127.0.0.1", port=0)
    served.start()
    yield served
    served.stop()


@pytest.fixture
def old_key(tmp_path: Path) -> SigningKey:
    return SigningKey(tmp_path, "old")


@pytest.fixture
def new_key(tmp_path: Path) -> SigningKey:
    return SigningKey(tmp_path, "new")


def emulator(site: IssuerSite, *, trusted: bool = True) -> StsEmulator:
    provider = OidcProvider(
        site.issuer, [AUDIENCE], site.client_context() if trusted else None, site.hosts
    )
    return StsEmulator("127.0.0.1", 0, ACCOUNT, [provider], {ROLE: trust_policy(site.issuer)})


def assume(sts: StsEmulator, token: str) -> tuple[str, str]:
    """(assumed-role ARN, "") or ("", "Code: message")."""
    client = botocore.session.get_session().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=sts.url,
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )
    try:
        answer = client.assume_role_with_web_identity(
            RoleArn=ROLE, RoleSessionName="site-test", WebIdentityToken=token
        )
    except ClientError as e:
        error = e.response["Error"]
        return "", f"{error['Code']}: {error['Message']}"
    return str(answer["AssumedRoleUser"]["Arn"]), ""


def test_publish_writes_what_oidc_keys_and_oidc_discovery_print(
    site: IssuerSite, old_key: SigningKey, new_key: SigningKey
) -> None:
    published = site.publish([old_key.public_file, new_key.public_file])

    discovery = json.loads(published.discovery.read_text())
    jwks = json.loads(published.jwks.read_text())
    assert discovery["issuer"] == site.issuer == f"https://{HOST}:{site.port}{PATH}"
    assert discovery["jwks_uri"] == f"{site.issuer}/keys.json"
    assert [k["kid"] for k in jwks["keys"]] == [old_key.kid, new_key.kid]
    assert published.kids == (old_key.kid, new_key.kid)
    assert all("d" not in k for k in jwks["keys"])  # public members only


def test_only_the_issuers_two_documents_are_served(site: IssuerSite, old_key: SigningKey) -> None:
    site.publish([old_key.public_file])

    assert site.file_for("/cluster-1/keys.json") == site.root.resolve() / "keys.json"
    assert site.file_for("/cluster-1/.well-known/openid-configuration") is not None
    for path in ("/keys.json", "/cluster-1/../cluster-1/keys.json", "/cluster-1/%2e%2e/hosts",
                 "/cluster-1/", "/cluster-10/keys.json"):  # fmt: skip
        assert site.file_for(path) is None, path


def test_sts_fetches_discovery_and_keys_from_the_site_by_its_host_name(
    site: IssuerSite, old_key: SigningKey
) -> None:
    site.publish([old_key.public_file])

    with emulator(site) as sts:
        arn, error = assume(sts, old_key.token(site.issuer))
        fetched = sts.issuer_fetches(site.issuer)

    assert error == ""
    assert arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/issuer-site-test/site-test"
    assert fetched == [
        (f"{site.issuer}/.well-known/openid-configuration", "127.0.0.1"),
        (f"{site.issuer}/keys.json", "127.0.0.1"),
    ]
    assert [(r.path, r.status) for r in site.served()] == [
        ("/cluster-1/.well-known/openid-configuration", 200),
        ("/cluster-1/keys.json", 200),
    ]


def test_a_site_whose_ca_the_provider_does_not_trust_gives_no_keys(
    site: IssuerSite, old_key: SigningKey
) -> None:
    site.publish([old_key.public_file])

    with emulator(site, trusted=False) as sts:
        _, error = assume(sts, old_key.token(site.issuer))

    assert error.startswith("InvalidIdentityToken: Couldn't retrieve verification key")


def test_rotation_new_key_refused_until_republished_then_both_keys_verify(
    site: IssuerSite, old_key: SigningKey, new_key: SigningKey
) -> None:
    site.publish([old_key.public_file])
    old_token = old_key.token(site.issuer)

    with emulator(site) as sts:
        assert assume(sts, old_token)[1] == ""
        before = assume(sts, new_key.token(site.issuer))
        site.publish([old_key.public_file, new_key.public_file])
        after = assume(sts, new_key.token(site.issuer))
        old = assume(sts, old_token)

    assert before[1].startswith("InvalidIdentityToken: Couldn't retrieve verification key")
    assert after[1] == "" and after[0].endswith("/site-test")
    assert old[1] == ""


def test_token_verify_against_the_published_keys_names_the_missing_kid(
    site: IssuerSite, old_key: SigningKey, new_key: SigningKey, tmp_path: Path
) -> None:
    site.publish([old_key.public_file])
    token_file = tmp_path / "token"
    token_file.write_text(new_key.token(site.issuer))
    jwks_file = tmp_path / "keys.json"
    jwks_file.write_bytes((site.root / "keys.json").read_bytes())

    result = site.toolkit("token", "verify", str(token_file), "--jwks", str(jwks_file),
                          isolated=False)  # fmt: skip

    assert result.returncode == 1
    assert f"no key with kid {new_key.kid} in the JWKS" in result.stdout
