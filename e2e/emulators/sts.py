"""An AWS STS emulator for the two calls an IRSA pod's SDK makes: AssumeRoleWithWebIdentity and
GetCallerIdentity, on the AWS query protocol (form POST or GET query, Version=2011-06-15).

AssumeRoleWithWebIdentity follows IAM/STS: the token's `iss` must be a registered OIDC provider;
its signature must verify against the issuer's published JWKS; `aud` must be one of the
provider's client IDs; `exp`/`nbf`/`iat` must hold; then the role's trust policy must allow the
provider's federated principal under the request's `<provider>:sub` / `<provider>:aud` context.
GetCallerIdentity must be SigV4-signed with credentials this emulator (or a Pod Identity agent
emulator sharing its CredentialStore) issued. Answers and errors are STS's XML, so botocore
returns or raises exactly what a user would see from AWS.

    with StsEmulator("127.0.0.1", 0, "111122223333", [OidcProvider(iss, ["sts.amazonaws.com"],
                     ssl_context=ctx)], {role_arn: trust_policy}) as sts:
        os.environ["AWS_ENDPOINT_URL_STS"] = sts.url
        ...
        assert sts.calls[-1].ok
"""

from __future__ import annotations

import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from e2e.emulators import oidc, sigv4, trust_policy
from e2e.emulators.credentials import CredentialStore, IssuedCredentials
from e2e.emulators.oidc import Failure, IssuerKeys, OidcProvider, TokenRejected
from e2e.emulators.server import Call, EmulatorServer, Request, Response

VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
DEFAULT_DURATION_SECONDS = 3600
MAX_SESSION_DURATION_SECONDS = 3600  # a role's MaxSessionDuration unless raised in IAM
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
_ROLE_ARN = re.compile(
    r"arn:aws:iam::(?P<account>\d{12}):role/(?:[\w+=,.@/-]*/)?(?P<name>[\w+=,.@-]{1,64})"
)

DENIED = "Not authorized to perform sts:AssumeRoleWithWebIdentity"
NO_KEYS = (
    "Couldn't retrieve verification key from your identity provider,  please reference"
    " AssumeRoleWithWebIdentity documentation for requirements"
)


class StsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.subject = ""  # the token's `sub`, once read: the call record names it


class StsEmulator(EmulatorServer):
    """STS on http://host:port. `roles` maps role ARN -> trust policy (JSON text or parsed).

    Attributes: url, calls (list[Call]), credentials (CredentialStore, shareable with a
    PodIdentityAgentEmulator), providers (issuer -> OidcProvider), jwks_fetches(issuer).
    """

    def __init__(
        self,
        host: str,
        port: int,
        account_id: str,
        providers: Sequence[OidcProvider],
        roles: Mapping[str, Mapping[str, Any] | str],
        *,
        credentials: CredentialStore | None = None,
    ) -> None:
        super().__init__(host, port)
        self.account_id = account_id
        self.providers = {p.issuer.rstrip("/"): p for p in providers}
        self.roles = {
            arn: json.loads(doc) if isinstance(doc, str) else dict(doc)
            for arn, doc in roles.items()
        }
        self.credentials = credentials or CredentialStore()
        self._keys = {
            issuer: IssuerKeys(issuer, p.ssl_context, p.hosts)
            for issuer, p in self.providers.items()
        }

    def jwks_fetches(self, issuer: str) -> int:
        return self._keys[issuer.rstrip("/")].fetches

    def issuer_fetches(self, issuer: str) -> list[tuple[str, str]]:
        """Every GET made for `issuer`'s keys as (url, address connected to)."""
        return list(self._keys[issuer.rstrip("/")].fetched)

    def handle(self, request: Request) -> Response:
        params = request.params()
        action = params.get("Action", "")
        handlers = {
            "AssumeRoleWithWebIdentity": self._assume_role_with_web_identity,
            "GetCallerIdentity": self._get_caller_identity,
        }
        try:
            handler = handlers.get(action) if params.get("Version") == VERSION else None
            if handler is None:
                raise StsError(
                    "InvalidAction",
                    f"Could not find operation {action} for version {params.get('Version', '')}",
                )
            body, call = handler(request, params)
        except StsError as e:
            role_arn = params.get("RoleArn", "")
            self.record(
                Call(action, e.status, e.code, e.message, subject=e.subject, role_arn=role_arn)
            )
            return Response(e.status, _error_xml(e), "text/xml")
        self.record(call)
        return Response(200, body, "text/xml")

    # --- AssumeRoleWithWebIdentity -------------------------------------------------------------

    def _assume_role_with_web_identity(
        self, request: Request, params: Mapping[str, str]
    ) -> tuple[bytes, Call]:
        role_arn = _required(params, "RoleArn")
        session_name = _required(params, "RoleSessionName")
        token = _required(params, "WebIdentityToken")
        if not _SESSION_NAME.fullmatch(session_name):
            raise StsError(
                "ValidationError",
                f"1 validation error detected: Value '{session_name}' at 'roleSessionName' failed"
                " to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
            )
        duration = _duration(params.get("DurationSeconds"))

        subject = _subject_of(token)  # unverified, only so the call record can name it
        try:
            provider, verified = self._verify(token)
            role_name = self._authorize(role_arn, provider, verified)
        except StsError as e:
            e.subject = subject
            raise
        issued = self.credentials.issue(
            account_id=self.account_id,
            role_name=role_name,
            session_name=session_name,
            duration_seconds=duration,
        )
        audience = _matched_audience(verified, provider)
        result = {
            "Credentials": _credentials_xml(issued),
            "SubjectFromWebIdentityToken": subject,
            "AssumedRoleUser": {"AssumedRoleId": issued.assumed_role_id, "Arn": issued.arn},
            "Provider": provider.arn(self.account_id),
            "Audience": audience,
        }
        call = Call(
            "AssumeRoleWithWebIdentity",
            200,
            arn=issued.arn,
            subject=subject,
            role_arn=role_arn,
        )
        return _response_xml("AssumeRoleWithWebIdentity", result), call

    def _verify(self, token: str) -> tuple[OidcProvider, dict[str, Any]]:
        """The registered provider that issued `token`, and its verified claims."""
        try:
            iss = str(oidc.unverified_claims(token).get("iss", ""))
            provider = self.providers.get(iss.rstrip("/"))
            if provider is None:
                raise StsError(
                    "InvalidIdentityToken",
                    f"No OpenIDConnect provider found in your account for {iss}",
                )
            keys = self._keys[iss.rstrip("/")]
            verified = oidc.verify(
                token, keys, issuer=provider.issuer, audiences=provider.client_ids
            )
        except TokenRejected as e:
            raise _token_error(e) from e
        return provider, verified

    def _authorize(self, role_arn: str, provider: OidcProvider, claims: Mapping[str, Any]) -> str:
        """The role's name, if its trust policy lets this token's subject assume it."""
        match = _ROLE_ARN.fullmatch(role_arn)
        policy = self.roles.get(role_arn)
        if match is None or match["account"] != self.account_id or policy is None:
            raise StsError("AccessDenied", DENIED, 403)  # STS never says whether the role exists
        prefix = provider.provider_id
        context = {
            f"{prefix}:sub": [str(claims.get("sub", ""))],
            f"{prefix}:aud": [_matched_audience(claims, provider)],
        }
        if not trust_policy.allows(
            policy, federated=provider.arn(self.account_id), context=context
        ):
            raise StsError("AccessDenied", DENIED, 403)
        return match["name"]

    # --- GetCallerIdentity ---------------------------------------------------------------------

    def _get_caller_identity(
        self, request: Request, params: Mapping[str, str]
    ) -> tuple[bytes, Call]:
        try:
            signer = sigv4.verify(request, service="sts", lookup=self.credentials.lookup)
        except sigv4.SignatureRejected as e:
            raise StsError(e.code, e.message, e.status) from e
        result = {
            "Arn": signer.arn,
            "UserId": signer.assumed_role_id,
            "Account": signer.account_id,
        }
        call = Call("GetCallerIdentity", 200, arn=signer.arn)
        return _response_xml("GetCallerIdentity", result), call


def _subject_of(token: str) -> str:
    try:
        return str(oidc.unverified_claims(token).get("sub", ""))
    except TokenRejected:
        return ""


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        member = name[0].lower() + name[1:]
        raise StsError(
            "ValidationError",
            f"1 validation error detected: Value null at '{member}' failed to satisfy constraint:"
            " Member must not be null",
        )
    return value


def _duration(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_DURATION_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise StsError("ValidationError", f"Invalid DurationSeconds {raw!r}") from None
    if seconds < 900:
        raise StsError(
            "ValidationError",
            f"1 validation error detected: Value '{seconds}' at 'durationSeconds' failed to"
            " satisfy constraint: Member must have value greater than or equal to 900",
        )
    if seconds > MAX_SESSION_DURATION_SECONDS:
        raise StsError(
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        )
    return seconds


def _matched_audience(claims: Mapping[str, Any], provider: OidcProvider) -> str:
    # IAM's `<provider>:aud` is the audience that matched one of the provider's client IDs.
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else [str(a) for a in aud or []]
    return next((a for a in audiences if a in provider.client_ids), "")


def _token_error(rejected: TokenRejected) -> StsError:
    if rejected.failure is Failure.EXPIRED:
        exp = rejected.claims.get("exp", "")
        return StsError(
            "ExpiredTokenException",
            f"Token expired: current date/time {int(time.time())} must be before the expiration"
            f" date/time {exp}",
        )
    messages = {
        Failure.AUDIENCE: "Incorrect token audience",
        Failure.KEYS_UNAVAILABLE: NO_KEYS,
        Failure.SIGNATURE: "Token signature is invalid",
        Failure.NOT_YET_VALID: "Token is not yet valid (iat or nbf is in the future)",
        Failure.MALFORMED: "The ID Token provided is not a valid JWT.",
    }
    return StsError(
        "InvalidIdentityToken", messages.get(rejected.failure, f"Invalid token: {rejected.detail}")
    )


def _credentials_xml(issued: IssuedCredentials) -> dict[str, str]:
    return {
        "AccessKeyId": issued.access_key_id,
        "SecretAccessKey": issued.secret_access_key,
        "SessionToken": issued.session_token,
        "Expiration": issued.expiration_iso,
    }


def _fill(parent: ET.Element, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        child = ET.SubElement(parent, name)
        if isinstance(value, Mapping):
            _fill(child, value)
        else:
            child.text = str(value)


def _response_xml(action: str, result: Mapping[str, Any]) -> bytes:
    root = ET.Element(f"{action}Response", xmlns=NAMESPACE)
    _fill(ET.SubElement(root, f"{action}Result"), result)
    _fill(root, {"ResponseMetadata": {"RequestId": str(uuid.uuid4())}})
    return ET.tostring(root)  # us-ascii: non-ASCII text becomes character references


def _error_xml(error: StsError) -> bytes:
    root = ET.Element("ErrorResponse", xmlns=NAMESPACE)
    kind = "Sender" if error.status < 500 else "Receiver"
    _fill(root, {"Error": {"Type": kind, "Code": error.code, "Message": error.message}})
    _fill(root, {"RequestId": str(uuid.uuid4())})
    return ET.tostring(root)
