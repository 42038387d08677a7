"""PEM keys to JSON Web Keys and back, with kube-apiserver's key IDs.

kube-apiserver (pkg/serviceaccount/jwt.go, keyIDFromPublicKey) puts in every token header
    kid = base64url-without-padding( SHA-256( DER of the PKIX SubjectPublicKeyInfo ) )
so a JWKS built here matches the `kid` of tokens signed by the same key, whichever file format
(PKCS#8, PKCS#1, SEC1, PKIX, certificate) the key was read from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webhook.toolkit.render import InputError

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# cryptography curve name -> (JWK crv, JWS alg, coordinate length in bytes)
_CURVES: dict[str, tuple[str, str, int]] = {
    "secp256r1": ("P-256", "ES256", 32),
    "secp384r1": ("P-384", "ES384", 48),
    "secp521r1": ("P-521", "ES512", 66),
}
_CRV_TO_CURVE: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# JWK members that only a private key has: publishing them leaks the signing key.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PUBLIC_BLOCKS = {b"PUBLIC KEY", b"RSA PUBLIC KEY"}
_PRIVATE_BLOCKS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
# Blocks that may accompany a key (`openssl ecparam -genkey` prints EC PARAMETERS first).
_IGNORED_BLOCKS = {b"EC PARAMETERS"}


class KeyFormatError(InputError):
    """A key file that cannot be turned into a supported public key."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (padding optional); raises ValueError on anything else."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*=*", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise ValueError("not base64url") from err


def _int_to_b64url(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def _b64url_to_int(text: object, member: str) -> int:
    if not isinstance(text, str) or not text:
        raise ValueError(f'"{member}" is missing or not a string')
    try:
        return int.from_bytes(b64url_decode(text), "big")
    except ValueError:
        raise ValueError(f'"{member}" is not base64url') from None


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> str:
    """The `kid` kube-apiserver puts in tokens signed with this key's private half."""
    return b64url(hashlib.sha256(spki_der(key)).digest())


def signing_algorithm(key: PublicKey) -> str:
    """The JWS algorithm kube-apiserver signs with for this key type."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    return _CURVES[key.curve.name][1]


def describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    return f"ECDSA {_CURVES[key.curve.name][0]}"


def _checked(key: object, source: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise KeyFormatError(
                f"{source}: ECDSA curve {key.curve.name} is not supported "
                "(use P-256, P-384 or P-521)"
            )
        return key
    kind = type(key).__name__.removesuffix("PublicKey").lstrip("_") or "this"
    raise KeyFormatError(
        f"{source}: {kind} keys are not supported; service account tokens are signed "
        "with RSA or ECDSA keys"
    )


def _load_block(label: bytes, pem: bytes, source: str) -> PublicKey:
    name = label.decode("ascii")
    try:
        if label in _PUBLIC_BLOCKS:
            return _checked(serialization.load_pem_public_key(pem), source)
        if label in _PRIVATE_BLOCKS:
            return _checked(
                serialization.load_pem_private_key(pem, password=None).public_key(), source
            )
        if label == b"CERTIFICATE":
            return _checked(x509.load_pem_x509_certificate(pem).public_key(), source)
    except TypeError:
        # cryptography raises TypeError for an encrypted key loaded without a password.
        raise KeyFormatError(
            f"{source}: the {name} is encrypted; decrypt it first "
            "(openssl pkey -in KEY -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFormatError(f"{source}: cannot parse the {name} PEM block ({err})") from None
    if label == b"ENCRYPTED PRIVATE KEY":
        raise KeyFormatError(
            f"{source}: the private key is encrypted; decrypt it first "
            "(openssl pkey -in KEY -out plain.pem)"
        )
    raise KeyFormatError(
        f"{source}: unsupported PEM block '{name}' (expected a public or private key)"
    )


def load_public_keys(data: bytes, source: str = "key file") -> list[PublicKey]:
    """Every public key in a PEM file (public keys, private keys or certificates).

    A file with several blocks yields several keys (kube-apiserver accepts such bundles in
    --service-account-key-file). DER input is accepted as a fallback."""
    keys: list[PublicKey] = []
    blocks = list(_PEM_BLOCK.finditer(data))
    for match in blocks:
        label = match.group(1)
        if label in _IGNORED_BLOCKS:
            continue
        keys.append(_load_block(label, match.group(0), source))
    if keys:
        return keys
    if blocks:
        raise KeyFormatError(
            f"{source}: no key in the PEM file (only {blocks[0].group(1).decode()})"
        )
    if b"-----BEGIN" in data:
        raise KeyFormatError(f"{source}: malformed PEM (BEGIN line without a matching END line)")
    for loader in (serialization.load_der_public_key, _load_der_private_public):
        try:
            return [_checked(loader(data), source)]
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    raise KeyFormatError(f"{source}: not a PEM or DER encoded key")


def _load_der_private_public(data: bytes) -> object:
    return serialization.load_der_private_key(data, password=None).public_key()


def public_key_to_jwk(key: PublicKey, *, with_kid: bool = True) -> dict[str, str]:
    """JWK in go-jose's member order (use, kty, kid, crv, alg, ...), as kube-apiserver serves it."""
    jwk: dict[str, str] = {"use": "sig"}
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        jwk["kty"] = "RSA"
        if with_kid:
            jwk["kid"] = key_id(key)
        jwk["alg"] = "RS256"
        jwk["n"] = _int_to_b64url(numbers.n)
        jwk["e"] = _int_to_b64url(numbers.e)
        return jwk
    crv, alg, size = _CURVES[key.curve.name]
    point = key.public_numbers()
    jwk["kty"] = "EC"
    if with_kid:
        jwk["kid"] = key_id(key)
    jwk["crv"] = crv
    jwk["alg"] = alg
    jwk["x"] = _int_to_b64url(point.x, size)
    jwk["y"] = _int_to_b64url(point.y, size)
    return jwk


def build_jwks(
    keys: Iterable[PublicKey], *, include_empty_kid: bool = False
) -> dict[str, list[dict[str, str]]]:
    """A JWKS with one entry per distinct key, in input order (several keys = rotation).

    `include_empty_kid` adds a kid-less copy of each key, as upstream's self-hosted guide does,
    for verifiers of tokens minted before Kubernetes 1.16 (which had no `kid` header)."""
    seen: set[bytes] = set()
    entries: list[dict[str, str]] = []
    for key in keys:
        der = spki_der(key)
        if der in seen:
            continue
        seen.add(der)
        entries.append(public_key_to_jwk(key))
        if include_empty_kid:
            entries.append(public_key_to_jwk(key, with_kid=False))
    return {"keys": entries}


@dataclass(frozen=True)
class JsonWebKey:
    """One entry of a JWKS as published, parsed leniently so a check can report on it."""

    index: int
    raw: Mapping[str, object]
    key: PublicKey | None
    error: str | None

    def _str(self, member: str) -> str | None:
        value = self.raw.get(member)
        return value if isinstance(value, str) else None

    @property
    def kid(self) -> str | None:
        return self._str("kid")

    @property
    def alg(self) -> str | None:
        return self._str("alg")

    @property
    def use(self) -> str | None:
        return self._str("use")

    @property
    def kty(self) -> str | None:
        return self._str("kty")

    @property
    def private_members(self) -> list[str]:
        return [m for m in PRIVATE_MEMBERS if m in self.raw]

    def label(self) -> str:
        return f"keys[{self.index}]" + (f" (kid {self.kid})" if self.kid else "")


def jwk_to_public_key(raw: Mapping[str, object]) -> PublicKey:
    """The public key of a JWK; ValueError with a readable reason otherwise."""
    kty = raw.get("kty")
    if kty == "RSA":
        n = _b64url_to_int(raw.get("n"), "n")
        e = _b64url_to_int(raw.get("e"), "e")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as err:
            raise ValueError(f"invalid RSA key: {err}") from None
    if kty == "EC":
        crv = raw.get("crv")
        if not isinstance(crv, str) or crv not in _CRV_TO_CURVE:
            raise ValueError(f'unsupported or missing "crv": {crv!r}')
        x = _b64url_to_int(raw.get("x"), "x")
        y = _b64url_to_int(raw.get("y"), "y")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, _CRV_TO_CURVE[crv]).public_key()
        except ValueError as err:
            raise ValueError(f"invalid EC point: {err}") from None
    if kty is None:
        raise ValueError('missing "kty"')
    raise ValueError(f"unsupported key type {kty!r} (expected RSA or EC)")


def parse_jwks(document: object, source: str = "JWKS") -> list[JsonWebKey]:
    """Entries of a `{"keys": [...]}` document. A malformed document raises InputError; a
    malformed key is returned with `error` set so checks can name it."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InputError(f'{source} is not a JWKS: expected a JSON object {{"keys": [...]}}')
    parsed: list[JsonWebKey] = []
    for index, raw in enumerate(document["keys"]):
        if not isinstance(raw, dict):
            parsed.append(JsonWebKey(index, {}, None, "entry is not a JSON object"))
            continue
        try:
            parsed.append(JsonWebKey(index, raw, jwk_to_public_key(raw), None))
        except ValueError as err:
            parsed.append(JsonWebKey(index, raw, None, str(err)))
    return parsed


def algorithm_fits_key(alg: str, key: PublicKey) -> bool:
    """Whether a JWS `alg` can be verified with this key."""
    if isinstance(key, rsa.RSAPublicKey):
        return alg in RSA_ALGORITHMS
    return EC_ALGORITHMS.get(alg) == _CURVES[key.curve.name][0]
