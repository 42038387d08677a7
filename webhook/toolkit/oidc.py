"""Self-hosted OIDC issuer kit: discovery document, JWKS and a consistency check.

STS validates a projected token by fetching `<iss>/.well-known/openid-configuration`, then the
`jwks_uri` it names, then the key whose `kid` the token header carries. Every link of that
chain is checked here, over already-loaded documents; `fetch_issuer_metadata` is the only
function that does I/O (HTTPS GETs for `token verify --issuer-url`).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

from webhook.toolkit.jwks import (
    JsonWebKey,
    PublicKey,
    algorithm_fits_key,
    describe_key,
    key_id,
    parse_jwks,
    signing_algorithm,
    spki_der,
)
from webhook.toolkit.render import Finding, InputError, Severity, parse_json
from webhook.toolkit.token import decode_unverified, verify_signature

AUTHORIZATION_ENDPOINT = "urn:kubernetes:programmatic_authorization"
DISCOVERY_PATH = "/.well-known/openid-configuration"
REQUIRED_DISCOVERY_FIELDS = (
    "issuer",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
)
MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 1 << 20


def validate_issuer_url(issuer: str) -> str:
    """The issuer unchanged if it is an https URL STS can use; InputError otherwise."""
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.netloc:
        raise InputError(f"issuer {issuer!r} must be an https:// URL (STS only fetches over HTTPS)")
    if parts.query or parts.fragment:
        raise InputError(f"issuer {issuer!r} must not have a query or fragment")
    return issuer


def default_jwks_uri(issuer: str) -> str:
    return issuer.rstrip("/") + "/keys.json"


def discovery_document(
    issuer: str,
    *,
    jwks_uri: str | None = None,
    algorithms: Sequence[str] = ("RS256",),
) -> dict[str, object]:
    """The discovery document to publish at `<issuer>/.well-known/openid-configuration`.

    `issuer` is copied verbatim: it must equal kube-apiserver's --service-account-issuer (and
    so every token's iss) byte for byte."""
    validate_issuer_url(issuer)
    uri = jwks_uri if jwks_uri is not None else default_jwks_uri(issuer)
    if urlsplit(uri).scheme != "https":
        raise InputError(f"jwks_uri {uri!r} must be an https:// URL")
    return {
        "issuer": issuer,
        "jwks_uri": uri,
        "authorization_endpoint": AUTHORIZATION_ENDPOINT,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(dict.fromkeys(algorithms)),
        "claims_supported": ["sub", "iss"],
    }


def algorithms_for_keys(keys: Sequence[PublicKey]) -> list[str]:
    return list(dict.fromkeys(signing_algorithm(k) for k in keys))


# --- check ------------------------------------------------------------------------------------


def _err(code: str, message: str, where: str | None = None) -> Finding:
    return Finding(Severity.ERROR, code, message, where)


def _warn(code: str, message: str, where: str | None = None) -> Finding:
    return Finding(Severity.WARNING, code, message, where)


def _info(code: str, message: str, where: str | None = None) -> Finding:
    return Finding(Severity.INFO, code, message, where)


def _check_issuer_url(issuer: str) -> list[Finding]:
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.netloc:
        return [
            _err(
                "issuer-not-https",
                f"issuer {issuer!r} is not an https:// URL; STS only "
                "fetches discovery documents over HTTPS",
                "issuer",
            )
        ]
    if parts.query or parts.fragment:
        return [_err("issuer-invalid", "issuer must not have a query or fragment", "issuer")]
    return []


def _check_discovery(issuer: str, discovery: object) -> tuple[list[Finding], list[str] | None]:
    """Findings, and the advertised algorithms (None when the document lacks them)."""
    if not isinstance(discovery, dict):
        return [
            _err("discovery-invalid", "discovery document is not a JSON object", "discovery")
        ], None
    out = [
        _err("discovery-missing-field", f'required field "{name}" is missing', f"discovery.{name}")
        for name in REQUIRED_DISCOVERY_FIELDS
        if name not in discovery
    ]
    doc_issuer = discovery.get("issuer")
    if "issuer" in discovery and doc_issuer != issuer:
        if isinstance(doc_issuer, str) and doc_issuer.rstrip("/") == issuer.rstrip("/"):
            out.append(
                _err(
                    "issuer-trailing-slash",
                    f"discovery issuer {doc_issuer!r} and the issuer {issuer!r} differ only by a "
                    "trailing slash; OIDC compares issuers exactly, so STS rejects tokens "
                    "whose iss is spelled the other way. Use one spelling in "
                    "--service-account-issuer, the discovery document and the IAM OIDC provider",
                    "discovery.issuer",
                )
            )
        else:
            out.append(
                _err(
                    "issuer-mismatch",
                    f"discovery issuer {doc_issuer!r} is not the issuer {issuer!r}; it must be "
                    "identical to the tokens' iss",
                    "discovery.issuer",
                )
            )
    jwks_uri = discovery.get("jwks_uri")
    if "jwks_uri" in discovery:
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme != "https":
            out.append(
                _err(
                    "jwks-uri-not-https",
                    f"jwks_uri {jwks_uri!r} is not an https:// URL",
                    "discovery.jwks_uri",
                )
            )
        elif urlsplit(jwks_uri).hostname != urlsplit(issuer).hostname:
            out.append(
                _warn(
                    "jwks-uri-other-host",
                    f"jwks_uri is on {urlsplit(jwks_uri).hostname}, not on the issuer's host "
                    f"{urlsplit(issuer).hostname}; STS follows it, but the IAM OIDC provider "
                    "thumbprint must then match that host's certificate chain",
                    "discovery.jwks_uri",
                )
            )
    algs = discovery.get("id_token_signing_alg_values_supported")
    if "id_token_signing_alg_values_supported" not in discovery:
        return out, None
    if not isinstance(algs, list) or not all(isinstance(a, str) for a in algs) or not algs:
        out.append(
            _err(
                "discovery-invalid",
                "id_token_signing_alg_values_supported must be a non-empty list of strings",
                "discovery.id_token_signing_alg_values_supported",
            )
        )
        return out, None
    if "none" in algs:
        out.append(
            _err(
                "alg-none",
                'advertising "none" invites unsigned tokens',
                "discovery.id_token_signing_alg_values_supported",
            )
        )
    return out, [str(a) for a in algs]


def _check_keys(keys: Sequence[JsonWebKey]) -> list[Finding]:
    out: list[Finding] = []
    if not keys:
        return [_err("jwks-empty", "the JWKS has no keys: no token can be verified", "jwks")]
    with_kid = {spki_der(k.key) for k in keys if k.key is not None and k.kid}
    kid_owner: dict[str, bytes] = {}
    for entry in keys:
        where = f"keys[{entry.index}]"
        if entry.error is not None:
            out.append(_err("jwk-invalid", f"{entry.label()}: {entry.error}", where))
            continue
        if entry.private_members:
            out.append(
                _err(
                    "jwk-private",
                    f"{entry.label()} contains private key members "
                    f"({', '.join(entry.private_members)}): the signing key is published; "
                    "rotate it",
                    where,
                )
            )
        key = entry.key
        assert key is not None
        der = spki_der(key)
        if entry.kid:
            if kid_owner.setdefault(entry.kid, der) != der:
                out.append(
                    _err(
                        "jwk-duplicate-kid", f"kid {entry.kid} is used by two different keys", where
                    )
                )
            derived = key_id(key)
            if entry.kid != derived:
                out.append(
                    _warn(
                        "jwk-kid-not-derived",
                        f"{entry.label()}: kube-apiserver signs with this key using kid {derived}, "
                        "which this JWKS does not advertise; STS cannot find the key for its "
                        "tokens",
                        where,
                    )
                )
        elif der in with_kid:
            out.append(
                _info(
                    "jwk-no-kid",
                    f"{entry.label()} is a kid-less copy of another key "
                    "(for tokens minted before Kubernetes 1.16)",
                    where,
                )
            )
        else:
            out.append(
                _warn(
                    "jwk-no-kid",
                    f"{entry.label()} has no kid; tokens carry kid {key_id(key)}",
                    where,
                )
            )
        if entry.use is None:
            out.append(
                _warn("jwk-no-use", f'{entry.label()} has no "use"; publish "use": "sig"', where)
            )
        elif entry.use != "sig":
            out.append(
                _err(
                    "jwk-use",
                    f'{entry.label()} has "use": "{entry.use}", so it cannot '
                    'verify signatures; it must be "sig"',
                    where,
                )
            )
        if entry.alg is None:
            out.append(
                _warn(
                    "jwk-no-alg",
                    f'{entry.label()} has no "alg"; publish "alg": "{signing_algorithm(key)}"',
                    where,
                )
            )
        elif not algorithm_fits_key(entry.alg, key):
            out.append(
                _err(
                    "jwk-alg-mismatch",
                    f"{entry.label()} declares alg {entry.alg}, "
                    f"which a {describe_key(key)} key cannot verify",
                    where,
                )
            )
        if entry.kty == "RSA" and key.key_size < MIN_RSA_BITS:
            out.append(
                _err(
                    "jwk-weak-rsa",
                    f"{entry.label()} is a {key.key_size}-bit RSA key; "
                    f"STS and kube-apiserver need at least {MIN_RSA_BITS} bits",
                    where,
                )
            )
    return out


def _check_algorithms(keys: Sequence[JsonWebKey], advertised: list[str]) -> list[Finding]:
    out: list[Finding] = []
    used: set[str] = set()
    for entry in keys:
        if entry.key is None:
            continue
        alg = entry.alg or signing_algorithm(entry.key)
        used.add(alg)
        if alg not in advertised:
            out.append(
                _err(
                    "alg-not-advertised",
                    f"{entry.label()} signs with {alg}, but "
                    f"id_token_signing_alg_values_supported is "
                    f"{advertised}; add {alg} to the discovery document",
                    "discovery.id_token_signing_alg_values_supported",
                )
            )
    for alg in advertised:
        if alg != "none" and alg not in used:
            out.append(
                _warn(
                    "alg-without-key",
                    f"{alg} is advertised but no key in the JWKS uses it",
                    "discovery.id_token_signing_alg_values_supported",
                )
            )
    return out


def check_issuer(
    issuer: str,
    discovery: object,
    jwks: object,
    *,
    token: str | None = None,
) -> list[Finding]:
    """Consistency of a self-hosted issuer: URL, discovery document, JWKS and (optionally) a
    token that should verify against them. Raises TokenFormatError for a token that is not a
    JWT; everything else is reported as findings."""
    findings = _check_issuer_url(issuer)
    discovery_findings, advertised = _check_discovery(issuer, discovery)
    findings += discovery_findings
    try:
        keys = parse_jwks(jwks)
    except InputError as err:
        findings.append(_err("jwks-invalid", str(err), "jwks"))
        keys = []
    else:
        findings += _check_keys(keys)
        if advertised is not None:
            findings += _check_algorithms(keys, advertised)
    if token is not None:
        decoded = decode_unverified(token)
        iss = decoded.claim_str("iss")
        if iss != issuer:
            hint = ""
            if iss and iss.rstrip("/") == issuer.rstrip("/"):
                hint = " (they differ only by a trailing slash)"
            findings.append(
                _err(
                    "token-issuer-mismatch",
                    f"the token's iss is {iss!r}, not the issuer {issuer!r}{hint}",
                    "token.iss",
                )
            )
        signature = verify_signature(decoded, keys)
        if signature.ok:
            findings.append(_info("token-signature", signature.message, "token"))
        else:
            findings.append(_err("token-signature", signature.message, "token"))
    return findings


# --- fetch ------------------------------------------------------------------------------------


def fetch_json(url: str, *, timeout: float = 10.0) -> object:
    """GET an https URL and parse it as JSON; InputError with the reason on any failure."""
    if urlsplit(url).scheme != "https":
        raise InputError(f"refusing to fetch {url!r}: only https:// URLs are used")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pod-identity-webhook"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise InputError(f"GET {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise InputError(f"GET {url}: {err.reason}") from None
    except (TimeoutError, OSError) as err:
        raise InputError(f"GET {url}: {err}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise InputError(f"GET {url}: response larger than {MAX_DOCUMENT_BYTES} bytes")
    return parse_json(body, url)


def fetch_issuer_metadata(issuer: str, *, timeout: float = 10.0) -> tuple[object, object]:
    """(discovery document, JWKS) as STS would fetch them for tokens from `issuer`."""
    validate_issuer_url(issuer)
    discovery = fetch_json(issuer.rstrip("/") + DISCOVERY_PATH, timeout=timeout)
    jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
    if not isinstance(jwks_uri, str):
        raise InputError(f"the discovery document of {issuer} has no jwks_uri")
    return discovery, fetch_json(jwks_uri, timeout=timeout)
