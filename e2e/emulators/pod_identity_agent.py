"""An EKS Pod Identity agent emulator, with the EKS Auth check it delegates to built in.

`GET /v1/credentials` with `Authorization: <projected service-account token>` (what botocore's
container provider sends from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). Like the real agent
(aws/eks-pod-identity-agent), it first checks the address it was called on and the token's
basic claims without verifying them, answering 403/400 in plain text; then, like EKS Auth's
AssumeRoleForPodIdentity, it verifies the signature against the cluster issuer's JWKS, the
audience `pods.eks.amazonaws.com` and the times, and maps the token's namespace and service
account to an association's role. Success is the agent's JSON: AccessKeyId, SecretAccessKey,
Token, AccountId, Expiration. EKS Auth failures come back as the agent relays them,
`[<request id>]: (<Code>): <message>, fault: client`, with EKS Auth's HTTP status.

    with PodIdentityAgentEmulator("169.254.170.23", 80, issuer=cp.issuer, ssl_context=ctx,
            account_id="111122223333", associations={("demo", "s3-reader"): role_arn}) as agent:
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"{agent.url}/v1/credentials"
"""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from e2e.emulators import oidc
from e2e.emulators.credentials import CredentialStore
from e2e.emulators.oidc import Failure, IssuerKeys, TokenRejected
from e2e.emulators.server import Call, EmulatorServer, Request, Response

AUDIENCE = "pods.eks.amazonaws.com"
# The agent's own bind addresses; it refuses calls that name any other host.
AGENT_HOSTS = ("169.254.170.23", "fd00:ec2::23")
CREDENTIALS_SECONDS = 6 * 3600  # EKS Pod Identity hands out six-hour credentials
ACTION = "AssumeRoleForPodIdentity"
_ROLE_NAME = re.compile(r"arn:aws:iam::\d{12}:role/(?:.*/)?(?P<name>[^/]+)")


class AgentError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class PodIdentityAgentEmulator(EmulatorServer):
    """The agent on http://host:port; `associations` maps (namespace, service account) -> role ARN.

    `allowed_hosts` are the addresses callers may name in Host (default: `host` itself, as the
    agent accepts exactly its bind addresses). `credentials` may be an StsEmulator's store so
    GetCallerIdentity recognises what the agent issued. Attributes: url, calls, credentials.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        issuer: str,
        account_id: str,
        associations: Mapping[tuple[str, str], str],
        ssl_context: ssl.SSLContext | None = None,
        issuer_hosts: Mapping[str, str] | None = None,
        cluster_name: str = "cluster",
        credentials: CredentialStore | None = None,
        allowed_hosts: Sequence[str] | None = None,
        audience: str = AUDIENCE,
    ) -> None:
        super().__init__(host, port)
        self.issuer = issuer.rstrip("/")
        self.account_id = account_id
        self.associations = dict(associations)
        self.cluster_name = cluster_name
        self.credentials = credentials or CredentialStore()
        self.allowed_hosts = tuple(allowed_hosts or (host,))
        self.audience = audience
        self._keys = IssuerKeys(self.issuer, ssl_context, issuer_hosts)

    def handle(self, request: Request) -> Response:
        if request.path != "/v1/credentials":
            return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        subject = ""
        try:
            self._check_host(request.headers.get("Host", ""))
            token = request.headers.get("Authorization", "")
            subject = str(_basic_claims(token).get("sub", ""))
            body, call = self._assume_role_for_pod_identity(token)
        except AgentError as e:
            self.record(Call(ACTION, e.status, e.code, e.message, subject=subject))
            return Response(e.status, f"{e.message}\n".encode(), "text/plain; charset=utf-8")
        self.record(call)
        return Response(200, body, "application/json")

    def _check_host(self, host_header: str) -> None:
        host = urlsplit(f"//{host_header}").hostname or ""  # drops the port and IPv6 brackets
        if host not in self.allowed_hosts:
            raise AgentError(
                403,
                "Access Denied. Called agent through invalid address, please use either"
                f" [{' '.join(self.allowed_hosts)}] address not {host}",
                "AccessDenied",
            )

    def _assume_role_for_pod_identity(self, token: str) -> tuple[bytes, Call]:
        try:
            claims = oidc.verify(token, self._keys, issuer=self.issuer, audiences=[self.audience])
        except TokenRejected as e:
            raise _eks_auth_error(e) from e
        namespace, service_account, pod = _identity(claims)
        role_arn = self.associations.get((namespace, service_account))
        match = _ROLE_NAME.fullmatch(role_arn or "")
        if match is None:
            raise _eks_auth(
                404,
                "ResourceNotFoundException",
                f"No Pod Identity Association found for cluster {self.cluster_name}, namespace"
                f" {namespace} and service account {service_account}",
            )
        session = f"eks-{self.cluster_name}-{pod or service_account}-{uuid.uuid4()}"
        issued = self.credentials.issue(
            account_id=self.account_id,
            role_name=match["name"],
            session_name=re.sub(r"[^\w+=,.@-]", "-", session)[:64],
            duration_seconds=CREDENTIALS_SECONDS,
        )
        answer = {
            "AccessKeyId": issued.access_key_id,
            "SecretAccessKey": issued.secret_access_key,
            "Token": issued.session_token,
            "AccountId": issued.account_id,
            "Expiration": issued.expiration_iso,
        }
        call = Call(
            ACTION, 200, arn=issued.arn, subject=str(claims["sub"]), role_arn=role_arn or ""
        )
        return json.dumps(answer).encode(), call


def _basic_claims(token: str) -> dict[str, Any]:
    """The agent's own pre-check (golang-jwt's default validator): a parseable JWT whose exp and
    nbf hold, signature unchecked."""
    if not token:
        raise AgentError(400, "Service account token cannot be empty", "RequestValidation")
    try:
        claims = oidc.unverified_claims(token)
    except TokenRejected as e:
        raise AgentError(
            400, f"Service account token cannot be parsed: {e.detail}", "RequestValidation"
        ) from e
    now = time.time()
    problems = []
    if isinstance(claims.get("exp"), int | float) and claims["exp"] <= now:
        problems.append("token is expired")
    if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now:
        problems.append("token is not valid yet")
    if problems:
        raise AgentError(
            400,
            "Service account token failed basic claim validations: token has invalid claims: "
            + ", ".join(problems),
            "RequestValidation",
        )
    return claims


def _identity(claims: Mapping[str, Any]) -> tuple[str, str, str]:
    """(namespace, service account, pod name) from the kubernetes.io claim, else from `sub`."""
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, Mapping):
        service_account = k8s.get("serviceaccount")
        pod = k8s.get("pod")
        return (
            str(k8s.get("namespace", "")),
            str(service_account.get("name", "")) if isinstance(service_account, Mapping) else "",
            str(pod.get("name", "")) if isinstance(pod, Mapping) else "",
        )
    parts = str(claims.get("sub", "")).split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return parts[2], parts[3], ""
    return "", "", ""


def _eks_auth(status: int, code: str, message: str) -> AgentError:
    # How the agent relays an EKS Auth error: request ID, code, message and fault.
    return AgentError(status, f"[{uuid.uuid4()}]: ({code}): {message}, fault: client", code)


def _eks_auth_error(rejected: TokenRejected) -> AgentError:
    if rejected.failure is Failure.EXPIRED:
        return _eks_auth(400, "ExpiredTokenException", "Service account token is expired")
    reasons = {
        Failure.AUDIENCE: f"Token audience is not {AUDIENCE}",
        Failure.SIGNATURE: "Token signature could not be verified",
        Failure.KEYS_UNAVAILABLE: "Token signing key could not be found for the cluster issuer",
        Failure.CLAIMS: f"Token claims are invalid: {rejected.detail}",
    }
    reason = reasons.get(rejected.failure, f"Token is invalid: {rejected.detail}")
    return _eks_auth(400, "InvalidTokenException", reason)
