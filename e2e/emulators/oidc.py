"""OIDC token verification as AWS does it for an IAM OIDC identity provider.

Keys come from the issuer itself: `<iss>/.well-known/openid-configuration`, then its `jwks_uri`,
over HTTPS with the provider's TLS context (IAM's trusted CA / thumbprint) and, like an
/etc/hosts of the emulator, an optional map of host names to addresses (a test issuer's name
resolves nowhere else). The JWKS is cached and fetched again once when a token
names a key ID the cache lacks (the issuer rotated its keys). Written on pyjwt and the standard
library only, independent of the webhook's own token code.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import jwt

# What AWS accepts for OIDC ID tokens: asymmetric signatures only (an "alg: none" or HMAC token
# must never pass just because a JWKS happens to parse).
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
FETCH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class OidcProvider:
    """An IAM OIDC identity provider: its issuer URL and the client IDs (audiences) it accepts.

    `ssl_context` is how the emulator reaches the issuer (its CA); None means the system default.
    `hosts` maps host names to addresses, as /etc/hosts would; other names resolve as usual.
    """

    issuer: str
    client_ids: Sequence[str]
    ssl_context: ssl.SSLContext | None = None
    hosts: Mapping[str, str] = field(default_factory=dict)

    @property
    def provider_id(self) -> str:
        """The issuer without its scheme: IAM's provider name and condition-key prefix."""
        return self.issuer.removeprefix("https://").rstrip("/")

    def arn(self, account_id: str) -> str:
        return f"arn:aws:iam::{account_id}:oidc-provider/{self.provider_id}"


class Failure(Enum):
    MALFORMED = "malformed"
    UNKNOWN_ISSUER = "unknown issuer"
    AUDIENCE = "audience"
    KEYS_UNAVAILABLE = "keys unavailable"
    SIGNATURE = "signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    CLAIMS = "claims"


class TokenRejected(Exception):
    """Why a token failed; each emulator turns it into its own service's error."""

    def __init__(self, failure: Failure, detail: str, claims: Mapping[str, Any] | None = None):
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail
        self.claims: Mapping[str, Any] = claims or {}


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload without any check: only to learn `iss` (and report `sub`) before verifying."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise TokenRejected(Failure.MALFORMED, str(e)) from e
    return claims


class IssuerKeys:
    """The JWKS of one issuer, found through its discovery document and cached."""

    def __init__(
        self,
        issuer: str,
        ssl_context: ssl.SSLContext | None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._context = ssl_context or ssl.create_default_context()
        self._hosts = dict(hosts or {})
        self._keys: dict[str, jwt.PyJWK] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many times the JWKS was downloaded (tests check the caching)
        # Every GET as (url, address connected to): where the keys really came from.
        self.fetched: list[tuple[str, str]] = []

    def key(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            found = self._lookup(kid)
            if found is None:
                self._keys = self._fetch()  # rotated keys: one refetch, then give up
                found = self._lookup(kid)
        if found is None:
            raise TokenRejected(Failure.KEYS_UNAVAILABLE, f"no key with kid {kid!r} in the JWKS")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))  # a lone key needs no kid
        return self._keys.get(kid) if kid is not None else None

    def _get_json(self, url: str) -> Any:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise TokenRejected(Failure.KEYS_UNAVAILABLE, f"{url} is not HTTPS")
        host = parts.hostname
        address = self._hosts.get(host, host)
        port = parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            raw = socket.create_connection((address, port), timeout=FETCH_TIMEOUT_SECONDS)
            # The certificate must name the host of the URL, whatever address it resolved to.
            tls = self._context.wrap_socket(raw, server_hostname=host)
            connection = http.client.HTTPConnection(parts.netloc, timeout=FETCH_TIMEOUT_SECONDS)
            connection.sock = tls
            try:
                # kube-apiserver answers its JWKS as application/jwk-set+json and 406s a narrower Accept.
                connection.request(
                    "GET", target, headers={"Accept": "application/json, application/jwk-set+json"}
                )
                response = connection.getresponse()
                body = response.read()
            finally:
                connection.close()
            self.fetched.append((url, address))
            if response.status != 200:
                raise OSError(f"HTTP {response.status} {response.reason}")
            return json.loads(body)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise TokenRejected(Failure.KEYS_UNAVAILABLE, f"GET {url}: {e}") from e

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        discovery = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
        if not isinstance(jwks_uri, str):
            raise TokenRejected(Failure.KEYS_UNAVAILABLE, "discovery document has no jwks_uri")
        document = self._get_json(jwks_uri)
        self.fetches += 1
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                keys[str(entry.get("kid", ""))] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we cannot use; others in the set may still match
        return keys


def verify(
    token: str,
    keys: IssuerKeys,
    *,
    issuer: str,
    audiences: Sequence[str],
    leeway_seconds: float = 0,
) -> dict[str, Any]:
    """Verified claims of `token`: signature by a key of the issuer's JWKS, `iss`, `aud`, times.

    The audience is compared first, from the unverified claims, so that the most common
    misconfiguration is reported as itself; nothing is granted before the signature verifies.
    The caller has already matched `iss` to a registered provider.
    """
    claims = unverified_claims(token)
    token_aud = claims.get("aud")
    token_audiences = [token_aud] if isinstance(token_aud, str) else list(token_aud or [])
    if not set(token_audiences) & set(audiences):
        raise TokenRejected(
            Failure.AUDIENCE, f"aud {token_audiences} not in {list(audiences)}", claims
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenRejected(Failure.MALFORMED, str(e), claims) from e
    if header.get("alg") not in ALGORITHMS:
        raise TokenRejected(Failure.SIGNATURE, f"algorithm {header.get('alg')!r} refused", claims)
    key = keys.key(header.get("kid"))
    try:
        verified: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(ALGORITHMS),
            audience=list(audiences),
            issuer=issuer,
            leeway=leeway_seconds,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise TokenRejected(Failure.EXPIRED, str(e), claims) from e
    except jwt.ImmatureSignatureError as e:
        raise TokenRejected(Failure.NOT_YET_VALID, str(e), claims) from e
    except jwt.InvalidSignatureError as e:
        raise TokenRejected(Failure.SIGNATURE, str(e), claims) from e
    except jwt.PyJWTError as e:
        raise TokenRejected(Failure.CLAIMS, str(e), claims) from e
    return verified
