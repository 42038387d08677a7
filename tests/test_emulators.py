"""The STS and EKS Pod Identity agent emulators (e2e/emulators), driven by real botocore.

A local HTTPS OIDC issuer (its own CA, discovery document and JWKS) mints RS256 tokens; botocore's
own credential providers, in a subprocess with nothing but the variables the webhook injects,
exchange them with the emulators. Loopback only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.session
import jwt
import pytest
from botocore import UNSIGNED
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from e2e.emulators import (
    CredentialStore,
    OidcProvider,
    PodIdentityAgentEmulator,
    StsEmulator,
    trust_policy,
)
from e2e.emulators.probe import ProbeResult, run_probe
from e2e.emulators.server import EmulatorServer, Request, Response

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/eks-irsa-lab-demo-s3-reader-role"
SUB = "system:serviceaccount:demo:s3-reader"
STS_AUDIENCE = "sts.amazonaws.com"
DENIED = (
    "An error occurred (AccessDenied) when calling the AssumeRoleWithWebIdentity operation:"
    " Not authorized to perform sts:AssumeRoleWithWebIdentity"
)


# --- a local HTTPS OIDC issuer ----------------------------------------------------------------


class Issuer:
    """Serves /.well-known/openid-configuration and /openid/v1/jwks over HTTPS on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_cert = _certificate("emulator-test-ca", self.ca_key, self.ca_key, None, ca=True)
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.signing_keys: dict[str, rsa.RSAPrivateKey] = {}
        self.rotate()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server_cert = _certificate("127.0.0.1", server_key, self.ca_key, self.ca_cert, ca=False)
        (workdir / "server.pem").write_bytes(
            server_cert.public_bytes(serialization.Encoding.PEM)
            + server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(workdir / "server.pem")
        self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def rotate(self) -> str:
        """Adds a new signing key (kept in the JWKS with the old ones); returns its kid."""
        kid = uuid.uuid4().hex
        self.signing_keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.current_kid = kid
        return kid

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.signing_keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(
        self,
        *,
        sub: str = SUB,
        aud: str | list[str] = STS_AUDIENCE,
        lifetime: int = 3600,
        issued_ago: int = 0,
        iss: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        not_before_in: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        now = int(time.time()) - issued_ago
        claims = {
            "iss": iss or self.url,
            "sub": sub,
            "aud": [aud] if isinstance(aud, str) else aud,
            "iat": now,
            "nbf": now + not_before_in,
            "exp": now + lifetime,
            **(extra or {}),
        }
        signer = key or self.signing_keys[self.current_kid]
        return jwt.encode(
            claims, signer, algorithm="RS256", headers={"kid": kid or self.current_kid}
        )

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents = {
                    "/.well-known/openid-configuration": {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/openid/v1/jwks",
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    },
                    "/openid/v1/jwks": issuer.jwks(),
                }
                document = documents.get(self.path)
                body = json.dumps(document).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _certificate(
    name: str,
    key: rsa.RSAPrivateKey,
    signer: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    *,
    ca: bool,
) -> x509.Certificate:

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def least_privilege_policy(issuer: Issuer, sub: str = SUB) -> dict[str, Any]:
    """The trust policy IRSA guides teach: StringEquals on <provider>:sub and <provider>:aud."""
    provider = issuer.url.removeprefix("https://")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{provider}:sub": sub, f"{provider}:aud": STS_AUDIENCE}
                },
            }
        ],
    }


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    served = Issuer(tmp_path_factory.mktemp("issuer"))
    yield served
    served.stop()


@pytest.fixture
def sts(issuer: Issuer) -> Iterator[StsEmulator]:
    provider = OidcProvider(issuer.url, [STS_AUDIENCE], ssl_context=issuer.client_context())
    with StsEmulator(
        "127.0.0.1", 0, ACCOUNT, [provider], {ROLE: json.dumps(least_privilege_policy(issuer))}
    ) as emulator:
        yield emulator


@pytest.fixture
def agent(issuer: Issuer, sts: StsEmulator) -> Iterator[PodIdentityAgentEmulator]:
    with PodIdentityAgentEmulator(
        "127.0.0.1",
        0,
        issuer=issuer.url,
        ssl_context=issuer.client_context(),
        account_id=ACCOUNT,
        associations={("demo", "s3-reader"): ROLE},
        credentials=sts.credentials,
    ) as emulator:
        yield emulator


def sts_client(sts: StsEmulator, **kwargs: Any) -> BaseClient:
    session = botocore.session.Session()
    client: BaseClient = session.create_client(
        "sts", region_name="us-east-1", endpoint_url=sts.url, **kwargs
    )
    return client


def unsigned_client(sts: StsEmulator) -> BaseClient:
    return sts_client(sts, config=Config(signature_version=UNSIGNED))


def assume(sts: StsEmulator, token: str, role: str = ROLE) -> dict[str, Any]:
    answer: dict[str, Any] = unsigned_client(sts).assume_role_with_web_identity(
        RoleArn=role, RoleSessionName="test-session", WebIdentityToken=token
    )
    return answer


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    error = raised.value.response["Error"]
    return error["Code"], error["Message"]


def default_chain(tmp_path: Path, env: Mapping[str, str]) -> ProbeResult:
    """botocore in a fresh process, configured only by what the webhook injects into a pod."""
    return run_probe({"AWS_DEFAULT_REGION": "us-east-1", **env}, home=tmp_path)


def irsa_env(tmp_path: Path, sts: StsEmulator, token: str) -> dict[str, str]:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    return {
        "AWS_ROLE_ARN": ROLE,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ENDPOINT_URL_STS": sts.url,
    }


# --- (a) IRSA through botocore's default credential chain -----------------------------------------


@pytest.mark.parametrize(
    "injected",
    [
        pytest.param({}, id="minimal"),
        # What the webhook adds with --sts-regional-endpoint and --aws-default-region: the
        # endpoint override must still win over the regional STS endpoint.
        pytest.param(
            {"AWS_STS_REGIONAL_ENDPOINTS": "regional", "AWS_REGION": "eu-west-1"},
            id="as-the-webhook-injects",
        ),
    ],
)
def test_default_chain_assumes_the_role_and_get_caller_identity_names_it(
    tmp_path: Path, issuer: Issuer, sts: StsEmulator, injected: Mapping[str, str]
) -> None:
    env = {**irsa_env(tmp_path, sts, issuer.token()), **injected}

    result = default_chain(tmp_path, env)

    assert result.error is None
    assert result.method == "assume-role-with-web-identity"
    assert str(result.access_key).startswith("ASIA")
    assert str(result.arn).startswith(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-irsa-lab-demo-s3-reader-role/"
    )
    # Both calls reached the emulator named by AWS_ENDPOINT_URL_STS, and nothing else answered.
    assert [(c.action, c.ok) for c in sts.calls] == [
        ("AssumeRoleWithWebIdentity", True),
        ("GetCallerIdentity", True),
    ]
    assert sts.calls[0].subject == SUB
    assert sts.calls[1].arn == result.arn


def test_assume_role_answer_has_sts_fields(issuer: Issuer, sts: StsEmulator) -> None:
    answer = assume(sts, issuer.token())

    provider = issuer.url.removeprefix("https://")
    assert answer["SubjectFromWebIdentityToken"] == SUB
    assert answer["Audience"] == STS_AUDIENCE
    assert answer["Provider"] == f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"
    user = answer["AssumedRoleUser"]
    assert (
        user["Arn"]
        == f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-irsa-lab-demo-s3-reader-role/test-session"
    )
    assert user["AssumedRoleId"].startswith("AROA")
    assert user["AssumedRoleId"].endswith(":test-session")
    credentials = answer["Credentials"]
    lifetime = credentials["Expiration"] - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)
    assert credentials["AccessKeyId"].startswith("ASIA")


def test_jwks_is_cached_and_refetched_once_after_key_rotation(
    issuer: Issuer, sts: StsEmulator
) -> None:
    assume(sts, issuer.token())
    assume(sts, issuer.token())
    assert sts.jwks_fetches(issuer.url) == 1

    issuer.rotate()
    assume(sts, issuer.token())  # a kid the cache lacks: fetched again, then it verifies

    assert sts.jwks_fetches(issuer.url) == 2
    assert all(c.ok for c in sts.calls)


# --- (b) what STS refuses ----------------------------------------------------------------------


def test_namespace_pinning_refuses_the_same_name_in_another_namespace(
    tmp_path: Path, issuer: Issuer, sts: StsEmulator
) -> None:
    token = issuer.token(sub="system:serviceaccount:demo2:s3-reader")

    result = default_chain(tmp_path, irsa_env(tmp_path, sts, token))

    assert result.error == DENIED
    assert [(c.code, c.status, c.subject) for c in sts.calls] == [
        ("AccessDenied", 403, "system:serviceaccount:demo2:s3-reader")
    ]


@pytest.mark.parametrize(
    ("make_token", "code", "message"),
    [
        pytest.param(
            lambda i: i.token(aud="some-other-client"),
            "InvalidIdentityToken",
            "Incorrect token audience",
            id="wrong-aud",
        ),
        pytest.param(
            lambda i: i.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "InvalidIdentityToken",
            "Token signature is invalid",
            id="bad-signature",
        ),
        pytest.param(
            lambda i: i.token(iss="https://oidc.example.com/id/OTHER"),
            "InvalidIdentityToken",
            "No OpenIDConnect provider found in your account for https://oidc.example.com/id/OTHER",
            id="unknown-issuer",
        ),
        pytest.param(
            lambda i: "not.a-jwt",
            "InvalidIdentityToken",
            "The ID Token provided is not a valid JWT.",
            id="malformed",
        ),
    ],
)
def test_invalid_tokens_are_refused_as_sts_refuses_them(
    issuer: Issuer, sts: StsEmulator, make_token: Any, code: str, message: str
) -> None:
    assert error_of(lambda: assume(sts, make_token(issuer))) == (code, message)
    assert [(c.code, c.status) for c in sts.calls] == [(code, 400)]


def test_expired_token_names_both_times(issuer: Issuer, sts: StsEmulator) -> None:
    token = issuer.token(issued_ago=7200, lifetime=3600)
    expired_at = jwt.decode(token, options={"verify_signature": False})["exp"]

    code, message = error_of(lambda: assume(sts, token))

    assert code == "ExpiredTokenException"
    prefix = "Token expired: current date/time "
    assert message.startswith(prefix)
    current = int(message.removeprefix(prefix).split()[0])
    assert abs(current - time.time()) < 60
    assert message.endswith(f" must be before the expiration date/time {expired_at}")


def test_a_key_id_missing_from_the_jwks_is_refetched_once_then_refused(
    issuer: Issuer, sts: StsEmulator
) -> None:
    assume(sts, issuer.token())
    stray = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    code, message = error_of(lambda: assume(sts, issuer.token(key=stray, kid="not-published")))

    assert code == "InvalidIdentityToken"
    assert message.startswith("Couldn't retrieve verification key from your identity provider")
    assert sts.jwks_fetches(issuer.url) == 2


def test_the_issuer_is_reached_over_verified_tls(issuer: Issuer) -> None:
    # Registered with the system CAs only: the issuer's self-signed chain must not be trusted.
    provider = OidcProvider(issuer.url, [STS_AUDIENCE], ssl_context=ssl.create_default_context())
    policy = least_privilege_policy(issuer)

    with StsEmulator("127.0.0.1", 0, ACCOUNT, [provider], {ROLE: policy}) as sts:
        code, message = error_of(lambda: assume(sts, issuer.token()))

    assert code == "InvalidIdentityToken"
    assert message.startswith("Couldn't retrieve verification key")


def test_a_token_not_yet_valid_is_refused(issuer: Issuer, sts: StsEmulator) -> None:
    code, _ = error_of(lambda: assume(sts, issuer.token(not_before_in=600)))

    assert code == "InvalidIdentityToken"


def test_query_protocol_get_form_and_unknown_actions(issuer: Issuer, sts: StsEmulator) -> None:

    query = urllib.parse.urlencode(
        {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "RoleArn": ROLE,
            "RoleSessionName": "via-get",
            "WebIdentityToken": issuer.token(),
        }
    )
    with urllib.request.urlopen(f"{sts.url}/?{query}", timeout=10) as response:
        body = response.read().decode()
    assert "<AssumeRoleWithWebIdentityResponse" in body
    assert "assumed-role/eks-irsa-lab-demo-s3-reader-role/via-get</Arn>" in body

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{sts.url}/?Action=AssumeRole&Version=2011-06-15", timeout=10)
    assert raised.value.code == 400
    assert "<Code>InvalidAction</Code>" in raised.value.read().decode()
    assert sts.summary_lines()[-1] == (
        "StsEmulator: AssumeRole -> 400 InvalidAction: Could not find operation AssumeRole"
        " for version 2011-06-15"
    )


def test_unknown_role_is_access_denied_like_a_refused_trust_policy(
    issuer: Issuer, sts: StsEmulator
) -> None:
    other_role = f"arn:aws:iam::{ACCOUNT}:role/does-not-exist"
    other_account = "arn:aws:iam::444455556666:role/eks-irsa-lab-demo-s3-reader-role"

    for role in (other_role, other_account):
        code, message = error_of(lambda role=role: assume(sts, issuer.token(), role))
        assert (code, message) == (
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        )


def test_trust_policy_wildcards_and_explicit_deny(issuer: Issuer) -> None:
    provider = issuer.url.removeprefix("https://")
    federated = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"
    allow_demo_namespace = {
        "Effect": "Allow",
        "Principal": {"Federated": federated},
        "Action": ["sts:AssumeRoleWithWebIdentity"],
        "Condition": {"StringLike": {f"{provider}:sub": "system:serviceaccount:demo:*"}},
    }
    deny_one = {
        "Effect": "Deny",
        "Principal": {"Federated": federated},
        "Action": "sts:*",
        "Condition": {"StringEquals": {f"{provider}:sub": "system:serviceaccount:demo:blocked"}},
    }
    policy = {"Version": "2012-10-17", "Statement": [allow_demo_namespace, deny_one]}
    oidc_provider = OidcProvider(issuer.url, [STS_AUDIENCE], ssl_context=issuer.client_context())

    with StsEmulator("127.0.0.1", 0, ACCOUNT, [oidc_provider], {ROLE: policy}) as sts:
        assume(sts, issuer.token(sub="system:serviceaccount:demo:anything"))
        for refused in ("system:serviceaccount:demo:blocked", "system:serviceaccount:demo2:x"):
            code, _ = error_of(lambda refused=refused: assume(sts, issuer.token(sub=refused)))
            assert code == "AccessDenied"

    assert [c.ok for c in sts.calls] == [True, False, False]


FEDERATED = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.example.com/id/X"
CONTEXT = {
    "oidc.example.com/id/X:sub": ["system:serviceaccount:demo:s3-reader"],
    "oidc.example.com/id/X:aud": ["sts.amazonaws.com"],
}


def statement(condition: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Principal": {"Federated": FEDERATED},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": condition,
        **overrides,
    }


@pytest.mark.parametrize(
    ("policy_statement", "allowed"),
    [
        (
            {
                "StringEquals": {
                    "OIDC.example.com/id/X:SUB": ["x", "system:serviceaccount:demo:s3-reader"]
                }
            },
            True,
        ),
        (
            {"StringEquals": {"oidc.example.com/id/X:sub": "system:serviceaccount:demo:S3-reader"}},
            False,
        ),
        (
            {
                "StringNotEquals": {
                    "oidc.example.com/id/X:sub": "system:serviceaccount:demo2:s3-reader"
                }
            },
            True,
        ),
        ({"ForAnyValue:StringLike": {"oidc.example.com/id/X:aud": ["sts.*", "other"]}}, True),
        ({"StringLike": {"oidc.example.com/id/X:sub": "system:serviceaccount:dem?:*"}}, True),
        (
            {"StringLike": {"oidc.example.com/id/X:sub": "system:serviceaccount:demo:s3-[r]eader"}},
            False,
        ),
        ({"StringEqualsIfExists": {"oidc.example.com/id/X:amr": "authenticated"}}, True),
        ({"StringEquals": {"oidc.example.com/id/X:amr": "authenticated"}}, False),
        ({"NumericLessThan": {"oidc.example.com/id/X:sub": "1"}}, False),
        ({}, True),
    ],
)
def test_trust_policy_conditions(policy_statement: Mapping[str, Any], allowed: bool) -> None:
    policy = {"Version": "2012-10-17", "Statement": [statement(policy_statement)]}

    assert trust_policy.allows(policy, federated=FEDERATED, context=CONTEXT) is allowed


@pytest.mark.parametrize(
    "overrides",
    [
        {"Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/other.example.com"}},
        {"Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}},
        {"Action": "sts:AssumeRole"},
        {"Effect": "Deny"},
    ],
)
def test_trust_policy_needs_the_principal_the_action_and_an_allow(overrides: Any) -> None:
    policy = {"Version": "2012-10-17", "Statement": statement({}, **overrides)}

    assert not trust_policy.allows(policy, federated=FEDERATED, context=CONTEXT)


# --- (c) GetCallerIdentity needs a valid signature by issued credentials -------------------------


def signed_client(sts: StsEmulator, credentials: Mapping[str, str]) -> BaseClient:
    return sts_client(
        sts,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def test_get_caller_identity_with_issued_credentials(issuer: Issuer, sts: StsEmulator) -> None:
    credentials = assume(sts, issuer.token())["Credentials"]

    identity = signed_client(sts, credentials).get_caller_identity()

    assert (
        identity["Arn"]
        == f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-irsa-lab-demo-s3-reader-role/test-session"
    )
    assert identity["Account"] == ACCOUNT
    assert identity["UserId"].endswith(":test-session")


def test_tampered_signature_does_not_match(issuer: Issuer, sts: StsEmulator) -> None:
    client = signed_client(sts, assume(sts, issuer.token())["Credentials"])

    def flip_last_digit(request: Any, **_: Any) -> None:
        authorization = request.headers["Authorization"]  # bytes, as botocore sends it
        last = b"0" if authorization[-1:] != b"0" else b"1"
        request.headers["Authorization"] = authorization[:-1] + last

    client.meta.events.register("before-send.sts.GetCallerIdentity", flip_last_digit)

    code, message = error_of(client.get_caller_identity)
    assert code == "SignatureDoesNotMatch"
    assert message.startswith("The request signature we calculated does not match")


@pytest.mark.slow
def test_unsigned_unknown_wrong_token_and_expired_credentials(
    issuer: Issuer, sts: StsEmulator
) -> None:
    issued = assume(sts, issuer.token())["Credentials"]
    expired = sts.credentials.issue(
        account_id=ACCOUNT, role_name="r", session_name="s", duration_seconds=-60
    )
    never_issued = {**issued, "AccessKeyId": "ASIAXXXXXXXXXXXXXXXX"}
    wrong_token = {**issued, "SessionToken": "not-the-session-token"}
    as_mapping = {
        "AccessKeyId": expired.access_key_id,
        "SecretAccessKey": expired.secret_access_key,
        "SessionToken": expired.session_token,
    }

    assert error_of(unsigned_client(sts).get_caller_identity) == (
        "MissingAuthenticationToken",
        "Request is missing Authentication Token",
    )
    invalid = ("InvalidClientTokenId", "The security token included in the request is invalid.")
    assert error_of(signed_client(sts, never_issued).get_caller_identity) == invalid
    assert error_of(signed_client(sts, wrong_token).get_caller_identity) == invalid
    assert error_of(signed_client(sts, as_mapping).get_caller_identity) == (
        "ExpiredToken",
        "The security token included in the request is expired",
    )


def test_credentials_from_another_store_are_not_recognised(
    issuer: Issuer, sts: StsEmulator
) -> None:
    foreign = CredentialStore().issue(
        account_id=ACCOUNT, role_name="r", session_name="s", duration_seconds=3600
    )
    client = sts_client(
        sts,
        aws_access_key_id=foreign.access_key_id,
        aws_secret_access_key=foreign.secret_access_key,
        aws_session_token=foreign.session_token,
    )

    assert error_of(client.get_caller_identity)[0] == "InvalidClientTokenId"


# --- (d) EKS Pod Identity through botocore's container provider -----------------------------------


def pod_identity_env(
    tmp_path: Path, agent: PodIdentityAgentEmulator, sts: StsEmulator, token: str
) -> dict[str, str]:
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(token)
    return {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent.url}/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_ENDPOINT_URL_STS": sts.url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def pod_token(issuer: Issuer, **kwargs: Any) -> str:
    claims = {
        "kubernetes.io": {
            "namespace": "demo",
            "serviceaccount": {"name": "s3-reader", "uid": str(uuid.uuid4())},
            "pod": {"name": "demo-pod", "uid": str(uuid.uuid4())},
        }
    }
    return issuer.token(aud="pods.eks.amazonaws.com", extra=claims, **kwargs)


def test_container_provider_gets_credentials_from_the_agent(
    tmp_path: Path, issuer: Issuer, sts: StsEmulator, agent: PodIdentityAgentEmulator
) -> None:
    result = default_chain(tmp_path, pod_identity_env(tmp_path, agent, sts, pod_token(issuer)))

    assert result.error is None
    assert result.method == "container-role"
    # The agent's credentials sign a GetCallerIdentity the STS emulator recognises.
    assert str(result.arn).startswith(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/eks-irsa-lab-demo-s3-reader-role/eks-cluster-demo-pod-"
    )
    assert [(c.action, c.ok, c.subject) for c in agent.calls] == [
        ("AssumeRoleForPodIdentity", True, SUB)
    ]


def test_agent_answers_the_agents_json(issuer: Issuer, agent: PodIdentityAgentEmulator) -> None:

    request = urllib.request.Request(
        f"{agent.url}/v1/credentials", headers={"Authorization": pod_token(issuer)}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)

    assert sorted(answer) == ["AccessKeyId", "AccountId", "Expiration", "SecretAccessKey", "Token"]
    assert answer["AccountId"] == ACCOUNT
    assert answer["AccessKeyId"].startswith("ASIA")


def agent_refusal(
    agent: PodIdentityAgentEmulator, token: str, host: str | None = None
) -> tuple[int, str]:

    headers = {"Authorization": token}
    if host is not None:
        headers["Host"] = host
    request = urllib.request.Request(f"{agent.url}/v1/credentials", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    return raised.value.code, raised.value.read().decode()


@pytest.mark.slow
def test_container_provider_is_refused_a_token_for_the_wrong_audience(
    tmp_path: Path, issuer: Issuer, sts: StsEmulator, agent: PodIdentityAgentEmulator
) -> None:
    sts_token = issuer.token()  # the IRSA token, not the Pod Identity one

    result = default_chain(tmp_path, pod_identity_env(tmp_path, agent, sts, sts_token))

    assert "Received non 200 response 400 from container metadata" in str(result.error)
    assert "(InvalidTokenException): Token audience is not pods.eks.amazonaws.com" in str(
        result.error
    )
    assert {c.code for c in agent.calls} == {"InvalidTokenException"}


def test_agent_refusals(issuer: Issuer, agent: PodIdentityAgentEmulator) -> None:
    status, body = agent_refusal(agent, "")
    assert (status, body) == (400, "Service account token cannot be empty\n")

    status, body = agent_refusal(agent, pod_token(issuer, issued_ago=7200))
    assert status == 400
    assert body.startswith("Service account token failed basic claim validations")

    stranger = issuer.token(aud="pods.eks.amazonaws.com", sub="system:serviceaccount:demo:other")
    status, body = agent_refusal(agent, stranger)
    assert status == 404
    assert "(ResourceNotFoundException)" in body

    status, body = agent_refusal(agent, pod_token(issuer), host="169.254.170.2")
    assert status == 403
    assert body.startswith("Access Denied. Called agent through invalid address")


# --- the server base ----------------------------------------------------------------------------


def _ipv6_loopback() -> bool:

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "loopback",
    [
        "127.0.0.1",
        pytest.param(
            "::1",  # IPv6, as the agent's fd00:ec2::23 needs
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_an_emulator_fault_is_answered_and_recorded_not_dropped(loopback: str) -> None:

    class Faulty(EmulatorServer):
        def handle(self, request: Request) -> Response:
            raise ValueError("broken on purpose")

    with Faulty(loopback, 0) as faulty, pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{faulty.url}/", timeout=10)

    raised.value.close()  # an HTTPError holds the response's connection open
    assert raised.value.code == 500
    assert [(c.code, c.message) for c in faulty.calls] == [
        ("InternalFailure", "ValueError: broken on purpose")
    ]
