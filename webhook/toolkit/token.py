"""Projected ServiceAccount tokens: decode, verify, and predict what STS will answer.

A projected token, as kube-apiserver mints it for the webhook's volume, looks like
    header  {"alg": "RS256", "kid": "<key id>"}
    claims  {"aud": ["sts.amazonaws.com"], "exp", "iat", "nbf", "iss", "sub":
             "system:serviceaccount:<ns>:<sa>", "kubernetes.io": {"namespace", "serviceaccount":
             {"name", "uid"}, "pod": {"name", "uid"}, "node": {...}}}
The AWS SDK sends it to STS AssumeRoleWithWebIdentity; `sts_verdict` reproduces the checks STS
makes (provider lookup by `iss`, expiry, audience, trust policy) with STS's own error wording.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jwt

from webhook.toolkit.iam_conditions import Clause, PolicyError, describe_clause, evaluate
from webhook.toolkit.jwks import (
    EC_ALGORITHMS,
    RSA_ALGORITHMS,
    JsonWebKey,
    algorithm_fits_key,
    b64url_decode,
    describe_key,
)
from webhook.toolkit.render import InputError, duration, utc_time
from webhook.toolkit.trust_policy import (
    DEFAULT_AUDIENCE,
    SA_SUB_PREFIX,
    WEB_IDENTITY_ACTION,
    OidcProvider,
    Statement,
    TrustPolicyInputError,
    issuer_host_path,
    parse_policy,
    parse_provider_arn,
)

if TYPE_CHECKING:
    from jwt.types import Options

SUPPORTED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS)
ACCESS_DENIED = "AccessDenied"
INVALID_IDENTITY_TOKEN = "InvalidIdentityToken"
EXPIRED_TOKEN = "ExpiredTokenException"
NOT_AUTHORIZED = f"Not authorized to perform {WEB_IDENTITY_ACTION}"


class TokenFormatError(InputError):
    """Input that is not a compact JWS."""


# --- decode -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedToken:
    raw: str
    header: dict[str, object]
    claims: dict[str, object]

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None

    @property
    def alg(self) -> str | None:
        alg = self.header.get("alg")
        return alg if isinstance(alg, str) else None

    def claim_str(self, name: str) -> str | None:
        value = self.claims.get(name)
        return value if isinstance(value, str) else None

    def claim_time(self, name: str) -> int | None:
        value = self.claims.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value)

    @property
    def audiences(self) -> list[str]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return [aud]
        if isinstance(aud, list):
            return [a for a in aud if isinstance(a, str)]
        return []


def _json_segment(segment: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(b64url_decode(segment))
    except ValueError:
        raise TokenFormatError(f"the JWT {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenFormatError(f"the JWT {what} is not a JSON object")
    return value


def decode_unverified(token: str) -> DecodedToken:
    """Header and claims of a compact JWS, without checking the signature."""
    text = token.strip()
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    if not text:
        raise TokenFormatError("the token is empty")
    parts = text.split(".")
    if len(parts) == 5:
        raise TokenFormatError("this is an encrypted JWT (JWE); projected tokens are signed JWTs")
    if len(parts) != 3 or any(c.isspace() for c in text):
        raise TokenFormatError(
            "not a JWT: expected three base64url segments separated by dots "
            "(header.claims.signature)"
        )
    header = _json_segment(parts[0], "header")
    claims = _json_segment(parts[1], "claims")
    return DecodedToken(text, header, claims)


# --- inspect ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the token is for, from the `kubernetes.io` block and from `sub`."""

    namespace: str | None = None
    service_account: str | None = None
    service_account_uid: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    node: str | None = None
    sub_namespace: str | None = None
    sub_service_account: str | None = None

    @property
    def disagreements(self) -> list[str]:
        out = []
        if self.namespace and self.sub_namespace and self.namespace != self.sub_namespace:
            out.append(
                f"sub says namespace {self.sub_namespace} but kubernetes.io says {self.namespace}"
            )
        if (
            self.service_account
            and self.sub_service_account
            and self.service_account != self.sub_service_account
        ):
            out.append(
                f"sub says service account {self.sub_service_account} but kubernetes.io says "
                f"{self.service_account}"
            )
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "serviceAccountUid": self.service_account_uid,
            "pod": self.pod,
            "podUid": self.pod_uid,
            "node": self.node,
            "subNamespace": self.sub_namespace,
            "subServiceAccount": self.sub_service_account,
        }


def _ref(block: object, member: str) -> tuple[str | None, str | None]:
    ref = block.get(member) if isinstance(block, dict) else None
    if not isinstance(ref, dict):
        return None, None
    name, uid = ref.get("name"), ref.get("uid")
    return (name if isinstance(name, str) else None, uid if isinstance(uid, str) else None)


def service_account_identity(claims: Mapping[str, object]) -> Identity:
    k8s = claims.get("kubernetes.io")
    namespace = k8s.get("namespace") if isinstance(k8s, dict) else None
    sa_name, sa_uid = _ref(k8s, "serviceaccount")
    pod_name, pod_uid = _ref(k8s, "pod")
    node_name, _ = _ref(k8s, "node")
    sub = claims.get("sub")
    sub_ns = sub_sa = None
    if isinstance(sub, str) and sub.startswith(SA_SUB_PREFIX):
        rest = sub.removeprefix(SA_SUB_PREFIX).split(":")
        if len(rest) == 2:
            sub_ns, sub_sa = rest
    return Identity(
        namespace=namespace if isinstance(namespace, str) else None,
        service_account=sa_name,
        service_account_uid=sa_uid,
        pod=pod_name,
        pod_uid=pod_uid,
        node=node_name,
        sub_namespace=sub_ns,
        sub_service_account=sub_sa,
    )


@dataclass(frozen=True)
class Inspection:
    token: DecodedToken
    identity: Identity
    now: int
    notes: list[str]

    @property
    def expires_in(self) -> int | None:
        exp = self.token.claim_time("exp")
        return None if exp is None else exp - self.now

    @property
    def expired(self) -> bool:
        remaining = self.expires_in
        return remaining is not None and remaining <= 0

    @property
    def lifetime(self) -> int | None:
        exp, iat = self.token.claim_time("exp"), self.token.claim_time("iat")
        return None if exp is None or iat is None else exp - iat

    def times(self) -> dict[str, dict[str, object] | None]:
        out: dict[str, dict[str, object] | None] = {}
        for name in ("iat", "nbf", "exp"):
            value = self.token.claim_time(name)
            out[name] = None if value is None else {"epoch": value, "utc": utc_time(value)}
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "header": self.token.header,
            "claims": self.token.claims,
            "times": self.times(),
            "now": {"epoch": self.now, "utc": utc_time(self.now)},
            "expiresInSeconds": self.expires_in,
            "lifetimeSeconds": self.lifetime,
            "expired": self.expired,
            "identity": self.identity.to_dict(),
            "notes": self.notes,
        }


def inspect_token(token: str, *, now: float) -> Inspection:
    """Decode without verification and describe times and identity (`now` in epoch seconds)."""
    decoded = decode_unverified(token)
    identity = service_account_identity(decoded.claims)
    notes = list(identity.disagreements)
    if decoded.kid is None:
        notes.append("no kid in the header: verifiers must try every key (pre-1.16 style token)")
    if "kubernetes.io" not in decoded.claims:
        notes.append(
            "no kubernetes.io claim: not a projected ServiceAccount token (legacy secret token?)"
        )
    if "exp" not in decoded.claims:
        notes.append("no exp claim: the token never expires (legacy ServiceAccount secret token)")
    return Inspection(decoded, identity, int(now), notes)


# --- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str  # signature | issuer | audience | expiry | not-before
    ok: bool
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "message": self.message}


_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": False,
    "require": [],
}


def verify_signature(token: DecodedToken, keys: Sequence[JsonWebKey]) -> Check:
    """Verify with the JWKS key named by the header's kid (or, for a token without kid, with
    any key that fits the algorithm), as STS and kube-apiserver's verifiers do."""
    alg = token.alg
    if alg is None or alg.lower() == "none":
        return Check("signature", False, "the token is unsigned (alg none)")
    if alg not in SUPPORTED_ALGORITHMS:
        return Check("signature", False, f"unsupported signing algorithm {alg}")
    usable = [k for k in keys if k.key is not None]
    if token.kid is not None:
        candidates = [k for k in usable if k.kid == token.kid]
        if not candidates:
            known = ", ".join(k.kid or "<no kid>" for k in keys) or "none"
            return Check(
                "signature",
                False,
                f"no key with kid {token.kid} in the JWKS (it has: {known}); STS rejects the "
                "token with InvalidIdentityToken. Republish the JWKS with the current "
                "service-account signing key(s)",
            )
    else:
        candidates = sorted(usable, key=lambda k: k.kid is not None)
    tried: list[str] = []
    for entry in candidates:
        assert entry.key is not None
        if not algorithm_fits_key(alg, entry.key):
            tried.append(f"{entry.label()} is {describe_key(entry.key)}, which cannot verify {alg}")
            continue
        try:
            jwt.decode(token.raw, entry.key, algorithms=[alg], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError:
            tried.append(f"{entry.label()} does not match the signature")
            continue
        except jwt.PyJWTError as err:
            tried.append(f"{entry.label()}: {err}")
            continue
        return Check(
            "signature",
            True,
            f"{alg} signature verified with {entry.label()}, {describe_key(entry.key)}",
        )
    detail = "; ".join(tried) if tried else "the JWKS has no usable key"
    return Check(
        "signature",
        False,
        f"signature does not verify: {detail}. The token was signed by a key the JWKS does "
        "not publish",
    )


def check_claims(
    token: DecodedToken,
    *,
    issuers: Sequence[str] | None,
    audience: str,
    now: int,
) -> list[Check]:
    """iss (exactly one of `issuers`, when known), aud, exp and nbf at time `now`."""
    checks: list[Check] = []
    iss = token.claim_str("iss")
    if issuers is None:
        checks.append(Check("issuer", True, f"iss is {iss!r} (not checked: no issuer given)"))
    elif iss in issuers:
        checks.append(Check("issuer", True, f"iss {iss} is the expected issuer"))
    else:
        expected = " or ".join(issuers) or "<none>"
        hint = ""
        if iss and any(iss.rstrip("/") == i.rstrip("/") for i in issuers):
            hint = " (they differ only by a trailing slash, which counts as a different issuer)"
        checks.append(Check("issuer", False, f"iss is {iss!r} but expected {expected}{hint}"))
    auds = token.audiences
    if audience in auds:
        checks.append(Check("audience", True, f"aud contains {audience}"))
    else:
        checks.append(
            Check(
                "audience",
                False,
                f"aud is {auds or 'missing'} but must contain {audience} "
                "(the webhook's --token-audience / the annotation eks.amazonaws.com/audience)",
            )
        )
    exp = token.claim_time("exp")
    if exp is None:
        checks.append(Check("expiry", False, "no exp claim: not a projected token"))
    elif now >= exp:
        checks.append(
            Check("expiry", False, f"expired at {utc_time(exp)} ({duration(now - exp)} ago)")
        )
    else:
        checks.append(
            Check("expiry", True, f"valid until {utc_time(exp)} ({duration(exp - now)} left)")
        )
    nbf = token.claim_time("nbf")
    if nbf is not None and now < nbf:
        checks.append(
            Check(
                "not-before",
                False,
                f"not valid before {utc_time(nbf)} (in {duration(nbf - now)}): clock skew?",
            )
        )
    return checks


# --- what STS will answer ---------------------------------------------------------------------


@dataclass(frozen=True)
class StsVerdict:
    accepted: bool
    error: str | None = None  # STS error code
    message: str | None = None  # STS error message, verbatim
    reasons: list[str] = field(default_factory=list)
    statement: int | None = None  # statement that grants access
    notes: list[str] = field(default_factory=list)

    @property
    def sts_error(self) -> str | None:
        return f"{self.error}: {self.message}" if self.error else None

    def to_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "error": self.error,
            "message": self.message,
            "stsError": self.sts_error,
            "reasons": self.reasons,
            "statement": self.statement,
            "notes": self.notes,
        }


def _host_path(iss: str) -> str:
    try:
        return issuer_host_path(iss)
    except TrustPolicyInputError:
        return iss


def _trusts(statement: Statement, provider: OidcProvider | None, host_path: str) -> bool:
    """Whether the statement's principal names the token's provider. Without a known provider
    ARN, any oidc-provider ARN for the token's host/path counts."""
    if "*" in statement.principals:
        return True
    for federated in statement.principals.get("Federated", ()):
        parsed = parse_provider_arn(federated)
        if parsed is None:
            continue
        if provider is not None and parsed == provider:
            return True
        if provider is None and parsed.host_path == host_path:
            return True
    return False


def _explain(clause: Clause, host_path: str, sub: str | None, auds: list[str]) -> str:
    prefix, _, suffix = clause.key.rpartition(":")
    suffix = suffix.lower()
    if clause.key.lower().startswith(("https://", "http://")):
        return (
            f"{describe_clause(clause)}: IAM has no condition key with https:// (it is "
            f'"{clause.key.split("://", 1)[1]}"), so this condition never matches'
        )
    if prefix.lower() != host_path.lower() and suffix in ("sub", "aud"):
        return (
            f"{describe_clause(clause)}: the key names issuer {prefix}, but the token comes "
            f"from {host_path}, so the key is absent and the condition fails"
        )
    if suffix == "sub":
        expected = " or ".join(clause.values)
        return (
            f"{describe_clause(clause)}: the role expects sub {expected} but the token's sub "
            f"is {sub}"
        )
    if suffix == "aud":
        return (
            f"{describe_clause(clause)}: the role expects aud {' or '.join(clause.values)} but "
            f"the token's aud is {', '.join(auds) or 'missing'}"
        )
    return f"{describe_clause(clause)} does not hold for this token"


def _context(token: DecodedToken, host_path: str, audience: str) -> dict[str, list[str]]:
    """The condition keys STS sets from the token, lower-cased (IAM key names ignore case)."""
    context: dict[str, list[str]] = {}
    sub = token.claim_str("sub")
    if sub is not None:
        context[f"{host_path}:sub".lower()] = [sub]
    auds = token.audiences
    # STS puts the audience that matched the provider's client IDs in :aud.
    context[f"{host_path}:aud".lower()] = [audience] if audience in auds else auds
    amr = token.claims.get("amr")
    if isinstance(amr, list | str):
        context[f"{host_path}:amr".lower()] = (
            [amr] if isinstance(amr, str) else [a for a in amr if isinstance(a, str)]
        )
    return context


def _is_token_key(key: str) -> bool:
    prefix, _, _ = key.rpartition(":")
    return "." in prefix or key.lower().startswith(("https://", "http://"))


def sts_verdict(
    token: DecodedToken,
    policy: object,
    *,
    now: int,
    audience: str = DEFAULT_AUDIENCE,
    provider_arn: str | None = None,
) -> StsVerdict:
    """What STS AssumeRoleWithWebIdentity answers for this token and role trust policy.

    `audience` stands for the IAM OIDC provider's client-ID list; `provider_arn` is the
    provider registered in the role's account (by default: the ones the policy names). The
    signature is not part of the verdict; see `verify_signature`. PolicyError for a policy
    that is not an IAM policy."""
    statements = parse_policy(policy)
    iss = token.claim_str("iss") or ""
    host_path = _host_path(iss)
    provider: OidcProvider | None = None
    if provider_arn is not None:
        provider = parse_provider_arn(provider_arn)
        if provider is None:
            raise PolicyError(f"{provider_arn!r} is not an IAM OIDC provider ARN")
        registered = [provider]
    else:
        # Without an ARN, assume the providers the policy names exist in the account.
        registered = [p for s in statements for p in s.oidc_providers()]

    # 1. STS looks up the IAM OIDC provider by the token's iss.
    if not iss or host_path not in {p.host_path for p in registered}:
        names = ", ".join(p.arn for p in registered) or "no OIDC provider"
        source = "the account's OIDC provider is" if provider_arn else "the trust policy trusts"
        return StsVerdict(
            False,
            INVALID_IDENTITY_TOKEN,
            f"No OpenIDConnect provider found in your account for {iss}",
            [
                f"the token's iss is {iss or 'missing'}, but {source} {names}",
                f"create an IAM OIDC provider for {iss or '<issuer>'} and trust "
                f"oidc-provider/{host_path} in the role (the provider URL is the iss without "
                "https://), or fix --service-account-issuer",
            ]
            + (
                []
                if provider_arn
                else [
                    "if the account does have a provider for this issuer, STS answers "
                    f"{ACCESS_DENIED} instead, because the trust policy names another provider"
                ]
            ),
        )
    provider = provider or next(p for p in registered if p.host_path == host_path)

    # 2. Expiry.
    exp = token.claim_time("exp")
    if exp is not None and now >= exp:
        return StsVerdict(
            False,
            EXPIRED_TOKEN,
            f"Token expired: current date/time {now} must be before the expiration date/time {exp}",
            [
                f"the token expired at {utc_time(exp)}, {duration(now - exp)} ago; the kubelet "
                "refreshes projected tokens at 80% of their lifetime, so an expired token "
                "means the SDK read a stale copy or the clock is off",
            ],
        )

    # 3. Audience against the provider's client IDs.
    auds = token.audiences
    if audience not in auds:
        return StsVerdict(
            False,
            INVALID_IDENTITY_TOKEN,
            "Incorrect token audience",
            [
                f"the token's aud is {', '.join(auds) or 'missing'}, not {audience}, the "
                "client ID of the IAM OIDC provider (--audience); request tokens for it with "
                "the webhook's --token-audience or the eks.amazonaws.com/audience annotation, "
                "or add the token's audience to the provider's client IDs",
            ],
        )

    # 4. The trust policy.
    context = _context(token, host_path, audience)
    sub = token.claim_str("sub")

    def holds(statement: Statement) -> tuple[list[Clause], list[Clause]]:
        failing, unknown = [], []
        for clause in statement.conditions:
            if not _is_token_key(clause.key) and clause.key_lower not in context:
                unknown.append(clause)
                continue
            result = evaluate(clause, context)
            if result is None:
                unknown.append(clause)
            elif not result:
                failing.append(clause)
        return failing, unknown

    relevant = [
        s
        for s in statements
        if s.allows_action(WEB_IDENTITY_ACTION)
        and _trusts(s, provider, host_path)
        and not s.not_principal
    ]
    for statement in relevant:
        if statement.is_allow:
            continue
        failing, _ = holds(statement)
        if not failing:
            return StsVerdict(
                False,
                ACCESS_DENIED,
                NOT_AUTHORIZED,
                [f"statement {statement.index} explicitly denies this token"],
            )
    allows = [s for s in relevant if s.is_allow]
    if not allows:
        return StsVerdict(
            False,
            ACCESS_DENIED,
            NOT_AUTHORIZED,
            [f"no Allow statement grants {WEB_IDENTITY_ACTION} to {provider.arn}"],
        )
    reasons: list[str] = []
    for statement in allows:
        failing, unknown = holds(statement)
        notes = [
            f"statement {statement.index}: {describe_clause(c)} cannot be evaluated offline "
            "and was assumed to hold"
            for c in unknown
        ]
        if not failing:
            return StsVerdict(True, statement=statement.index, notes=notes)
        reasons += [
            f"statement {statement.index}: {_explain(c, host_path, sub, auds)}" for c in failing
        ]
    return StsVerdict(False, ACCESS_DENIED, NOT_AUTHORIZED, reasons)


# --- everything together ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    token: DecodedToken
    checks: list[Check]
    verdict: StsVerdict | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.verdict is None or self.verdict.accepted)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "header": self.token.header,
            "claims": self.token.claims,
            "identity": service_account_identity(self.token.claims).to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "sts": None if self.verdict is None else self.verdict.to_dict(),
        }


def trusted_issuers(policy: object) -> list[str]:
    """Issuer URLs (https://<host/path>) of the OIDC providers a trust policy names."""
    seen = dict.fromkeys(
        f"https://{p.host_path}" for s in parse_policy(policy) for p in s.oidc_providers()
    )
    return list(seen)


def verify_token(
    token: str,
    keys: Sequence[JsonWebKey],
    *,
    now: int,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str | None = None,
    trust_policy: object | None = None,
    provider_arn: str | None = None,
) -> Verification:
    """Signature, claims and (given a trust policy) STS's answer for one token.

    The expected issuer is `issuer` if given, else the issuers the trust policy trusts."""
    decoded = decode_unverified(token)
    issuers: list[str] | None = None
    if issuer is not None:
        issuers = [issuer]
    elif trust_policy is not None:
        issuers = trusted_issuers(trust_policy)
        iss = decoded.claim_str("iss")
        # IAM provider URLs carry no trailing slash; accept the token's spelling of the same URL.
        if iss and any(iss.rstrip("/") == i for i in issuers):
            issuers.append(iss)
    checks = [verify_signature(decoded, keys)]
    checks += check_claims(decoded, issuers=issuers, audience=audience, now=now)
    verdict = None
    if trust_policy is not None:
        verdict = sts_verdict(
            decoded, trust_policy, now=now, audience=audience, provider_arn=provider_arn
        )
    return Verification(decoded, checks, verdict)
