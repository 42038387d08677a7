"""Server-side AWS Signature Version 4 check (Authorization header form), on the standard library.

The signature is recomputed from the request as received, with the secret of the access key the
request names, exactly as the SigV4 specification defines the canonical request; a client's own
signer is never consulted. Failures carry STS's error code, message and HTTP status.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import posixpath
import re
import time
from collections.abc import Callable
from urllib.parse import quote, unquote

from e2e.emulators.credentials import IssuedCredentials
from e2e.emulators.server import Request

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 +Credential=(?P<credential>[^,\s]+), *"
    r"SignedHeaders=(?P<signed>[^,\s]+), *Signature=(?P<signature>[0-9a-f]{64})$"
)
INVALID_TOKEN = "The security token included in the request is invalid."
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your"
    " AWS Secret Access Key and signing method. Consult the service documentation for details."
)


class SignatureRejected(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def verify(
    request: Request,
    *,
    service: str,
    lookup: Callable[[str], IssuedCredentials | None],
    clock: Callable[[], float] = time.time,
) -> IssuedCredentials:
    """The credentials that signed `request`, or SignatureRejected as STS words it."""
    authorization = request.headers.get("Authorization")
    if not authorization:
        raise SignatureRejected(
            "MissingAuthenticationToken", "Request is missing Authentication Token", 403
        )
    parsed = _AUTH.match(authorization.strip())
    if parsed is None:
        raise SignatureRejected(
            "IncompleteSignature", f"Authorization header is not valid SigV4: {authorization}", 400
        )
    key_id, scope_date, region, scope_service, terminator = _split_credential(parsed["credential"])
    amz_date = request.headers.get("X-Amz-Date", "")
    signed_headers = parsed["signed"].split(";")
    if "host" not in signed_headers or not amz_date:
        raise SignatureRejected("IncompleteSignature", "Host and X-Amz-Date must be signed", 400)
    if scope_service != service or terminator != "aws4_request" or amz_date[:8] != scope_date:
        raise SignatureRejected(
            "SignatureDoesNotMatch", f"Credential should be scoped to a valid {service} scope", 403
        )
    _check_skew(amz_date, clock())

    credentials = lookup(key_id)
    if credentials is None:
        raise SignatureRejected("InvalidClientTokenId", INVALID_TOKEN, 403)
    if request.headers.get("X-Amz-Security-Token") != credentials.session_token:
        raise SignatureRejected("InvalidClientTokenId", INVALID_TOKEN, 403)

    scope = f"{scope_date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, _sha256(canonical_request(request, signed_headers)))
    )
    key = _signing_key(credentials.secret_access_key, scope_date, region, service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parsed["signature"]):
        raise SignatureRejected("SignatureDoesNotMatch", MISMATCH, 403)
    if credentials.expiration <= clock():
        # Checked after the signature, as AWS does: only a holder of the secret learns this.
        raise SignatureRejected(
            "ExpiredToken", "The security token included in the request is expired", 403
        )
    return credentials


def canonical_request(request: Request, signed_headers: list[str]) -> str:
    headers = []
    for name in signed_headers:
        values = request.headers.get_all(name) or []
        joined = ",".join(" ".join(v.split()) for v in values)
        headers.append(f"{name}:{joined}\n")
    payload_hash = request.headers.get("X-Amz-Content-SHA256") or _sha256(request.body)
    return "\n".join(
        (
            request.method,
            _canonical_uri(request.path),
            _canonical_query(request.query),
            "".join(headers),
            ";".join(signed_headers),
            payload_hash,
        )
    )


def _split_credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5:
        raise SignatureRejected(
            "IncompleteSignature",
            f"Credential is not <key>/<date>/<region>/<service>/aws4_request: {credential}",
            400,
        )
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def _check_skew(amz_date: str, now: float) -> None:
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise SignatureRejected(
            "IncompleteSignature", f"X-Amz-Date {amz_date!r} is invalid", 400
        ) from None
    if abs(now - signed_at) > MAX_SKEW_SECONDS:
        server = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        raise SignatureRejected(
            "SignatureDoesNotMatch",
            f"Signature expired: {amz_date} is now earlier or later than {server} +/- 15 min.",
            403,
        )


def _canonical_uri(path: str) -> str:
    # Non-S3 services normalise the path and then encode each segment once more.
    normalized = posixpath.normpath(unquote(path)) if path not in ("", "/") else "/"
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return quote(normalized, safe="/~")


def _canonical_query(query: str) -> str:
    pairs = []
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
