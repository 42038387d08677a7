"""Certificates for the webhook's TLS endpoint, built on `cryptography` (no openssl CLI).

The Kubernetes API server calls the webhook over HTTPS and verifies it against the `caBundle`
of the MutatingWebhookConfiguration. This module makes a small private CA, a serving
certificate signed by it and named for every DNS form under which the API server may reach
the Service, and writes them where the server (and a `kubernetes.io/tls` Secret) expect them.

Pure library: no printing, no argument parsing; `webhook.cli.certs` is the command on top.
Bad input raises `ValueError` (`CertificateError` for unusable certificates and keys);
filesystem failures raise `OSError`.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa", "rsa")
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
ManifestFormat = Literal["yaml", "json"]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

# Certificates start this long before "now" so that a peer whose clock runs slightly behind
# does not reject a certificate made a moment ago as "not yet valid".
CLOCK_SKEW = timedelta(minutes=5)
# Generous upper bound that keeps `now + days` far from datetime's year 9999 limit.
MAX_DAYS = 100 * 365
RSA_KEY_SIZE = 2048
# X.509 upper bound for a commonName (RFC 5280 ub-common-name).
_MAX_COMMON_NAME = 64

_T = TypeVar("_T")

_CERT_MODE = 0o644
_KEY_MODE = 0o600

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Service names are RFC 1035 labels (start with a letter); namespaces RFC 1123 labels.
_RFC1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


class CertificateError(ValueError):
    """A certificate or key is unusable: unparsable, mismatched, expired or not a CA."""


@dataclass(frozen=True, eq=False)
class CertKeyPair:
    """A certificate and the private key for its public key (compared by identity)."""

    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def not_valid_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_valid_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def is_ca(self) -> bool:
        try:
            constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            return False
        return constraints.value.ca

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertKeyPair:
        """Parse a PEM certificate and unencrypted PEM key; CertificateError if they don't pair."""
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as err:
            raise CertificateError(f"not a PEM certificate: {err}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise CertificateError(f"not an unencrypted PEM private key: {err}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateError(f"unsupported key type {type(key).__name__} (ECDSA or RSA)")
        if _spki(key.public_key()) != _spki(certificate.public_key()):
            raise CertificateError("private key does not match the certificate")
        return cls(certificate, key)

    @classmethod
    def load(
        cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
    ) -> CertKeyPair:
        """Read a PEM certificate and key; OSError if unreadable, CertificateError if bad."""
        return cls.from_pem(Path(cert_path).read_bytes(), Path(key_path).read_bytes())


@dataclass(frozen=True)
class BundlePaths:
    """Where `write_bundle` puts the four files (the names a `kubernetes.io/tls` Secret uses)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path

    @classmethod
    def in_dir(cls, out_dir: str | os.PathLike[str]) -> BundlePaths:
        directory = Path(out_dir)
        return cls(
            directory=directory,
            ca_cert=directory / CA_CERT_FILE,
            ca_key=directory / CA_KEY_FILE,
            tls_cert=directory / TLS_CERT_FILE,
            tls_key=directory / TLS_KEY_FILE,
        )


# --------------------------------------------------------------------------- names


def service_dns_names(service: str, namespace: str) -> list[str]:
    """Every name under which a client inside the cluster can reach `service` in `namespace`.

    `NAME`, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`; the API server itself uses
    `NAME.NS.svc`.
    """
    if not _RFC1035_LABEL.fullmatch(service):
        raise ValueError(
            f"invalid service name {service!r}: must be a DNS label (lowercase letters, digits "
            "and '-', starting with a letter, at most 63 characters)"
        )
    if not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(
            f"invalid namespace {namespace!r}: must be a DNS label (lowercase letters, digits "
            "and '-', at most 63 characters)"
        )
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def normalize_dns_name(name: str) -> str:
    """Lowercase `name` and check it is a DNS name (a leading `*.` wildcard label is allowed)."""
    candidate = name.strip().lower()
    labels = candidate.split(".")
    ok = (
        0 < len(candidate) <= 253
        and all(_DNS_LABEL.fullmatch(label) for label in labels[1:])
        and ((labels[0] == "*" and len(labels) > 1) or bool(_DNS_LABEL.fullmatch(labels[0])))
    )
    if not ok:
        raise ValueError(f"not a DNS name: {name!r}")
    return candidate


def split_sans(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort subject alternative names into (DNS names, IP addresses), normalized, in order.

    Anything that parses as an IPv4 or IPv6 address is an IP; everything else must be a DNS
    name. Raises ValueError naming the first value that is neither.
    """
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for value in values:
        try:
            ip_addresses.append(str(ipaddress.ip_address(value.strip())))
            continue
        except ValueError:
            pass
        try:
            dns_names.append(normalize_dns_name(value))
        except ValueError:
            raise ValueError(f"not a DNS name or IP address: {value!r}") from None
    return dns_names, ip_addresses


# --------------------------------------------------------------------------- generation


def generate_ca(
    common_name: str,
    days: int,
    *,
    key_type: KeyType = "ecdsa",
    now: datetime | None = None,
) -> CertKeyPair:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    _check_days(days)
    if not 0 < len(common_name) <= _MAX_COMMON_NAME:
        raise ValueError(f"CA common name must be 1 to {_MAX_COMMON_NAME} characters")
    now = _now(now)
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertKeyPair(certificate, key)


def generate_serving_cert(
    ca: CertKeyPair,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int,
    *,
    key_type: KeyType = "ecdsa",
    now: datetime | None = None,
) -> CertKeyPair:
    """A TLS server certificate for `dns_names` and `ip_addresses`, signed by `ca`.

    The common name is the first DNS name (clients match on the SANs; the CN is for humans).
    Validity starts CLOCK_SKEW before now and ends after `days`, but never after the CA.
    Duplicate names are dropped; at least one name or address is required.
    """
    _check_days(days)
    if not ca.is_ca:
        raise CertificateError("the issuing certificate is not a CA (BasicConstraints CA:false)")
    now = _now(now)
    if ca.not_valid_after <= now:
        raise CertificateError(f"the CA expired on {ca.not_valid_after:%Y-%m-%d %H:%M:%S} UTC")

    names = _dedupe(normalize_dns_name(name) for name in dns_names)
    ips = _dedupe(_parse_ip(address) for address in ip_addresses)
    if not names and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")

    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    general_names += [x509.IPAddress(ip) for ip in ips]
    common_name = names[0] if names else str(ips[0])
    subject = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        if len(common_name) <= _MAX_COMMON_NAME
        else x509.Name([])
    )

    key = _new_key(key_type)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca.not_valid_before))
        .not_valid_after(min(now + timedelta(days=days), ca.not_valid_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RFC 5280: the SAN extension must be critical when the subject is empty.
        .add_extension(x509.SubjectAlternativeName(general_names), critical=not subject)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return CertKeyPair(certificate, key)


# --------------------------------------------------------------------------- files


def write_bundle(
    out_dir: str | os.PathLike[str], ca: CertKeyPair, serving: CertKeyPair
) -> BundlePaths:
    """Write `ca.crt`, `ca.key`, `tls.crt`, `tls.key` into `out_dir` (created if missing).

    Each file is replaced atomically, so a reader sees the old or the new file, never half of
    one. Keys are mode 0600, certificates 0644. `tls.key` is replaced before `tls.crt`: a
    server that reloads when `tls.crt` changes then finds the matching key already in place.
    """
    paths = BundlePaths.in_dir(out_dir)
    paths.directory.mkdir(parents=True, exist_ok=True)
    write_file_atomic(paths.ca_key, ca.key_pem, _KEY_MODE)
    write_file_atomic(paths.ca_cert, ca.cert_pem, _CERT_MODE)
    write_file_atomic(paths.tls_key, serving.key_pem, _KEY_MODE)
    write_file_atomic(paths.tls_cert, serving.cert_pem, _CERT_MODE)
    return paths


def write_file_atomic(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Replace `path` with `data` (file mode `mode`) via a temporary file and `os.replace`."""
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)


def load_ca(
    out_dir: str | os.PathLike[str],
    *,
    valid_for: timedelta = timedelta(0),
    now: datetime | None = None,
) -> CertKeyPair | None:
    """The CA in `out_dir` if it can keep signing, None when `ca.crt` and `ca.key` are absent.

    Raises CertificateError (with the reason) when either file is present but the pair is
    unusable: one file missing or unreadable, unparsable, key and certificate mismatched,
    not a CA, not yet valid, or expiring within `valid_for`.
    """
    paths = BundlePaths.in_dir(out_dir)
    present = [path for path in (paths.ca_cert, paths.ca_key) if path.exists()]
    if not present:
        return None
    if len(present) == 1:
        missing = paths.ca_key if present[0] == paths.ca_cert else paths.ca_cert
        raise CertificateError(f"{missing.name} is missing")
    try:
        ca = CertKeyPair.load(paths.ca_cert, paths.ca_key)
    except OSError as err:
        raise CertificateError(f"cannot read the CA: {err.strerror or err}") from None
    if not ca.is_ca:
        raise CertificateError(f"{CA_CERT_FILE} is not a CA certificate")
    now = _now(now)
    if ca.not_valid_before > now:
        raise CertificateError(f"{CA_CERT_FILE} is not valid before {_fmt(ca.not_valid_before)}")
    if ca.not_valid_after <= now + valid_for:
        raise CertificateError(
            f"{CA_CERT_FILE} expires {_fmt(ca.not_valid_after)}, before {_fmt(now + valid_for)}"
        )
    return ca


def needs_renewal(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str] | None = None,
    *,
    within: timedelta,
    now: datetime | None = None,
) -> bool:
    """True when the certificate (and key, if given) is missing, unusable or expires within
    `within`: the test a "generate only if needed" script wants."""
    try:
        if key_path is None:
            certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        else:
            certificate = CertKeyPair.load(cert_path, key_path).certificate
    except (OSError, ValueError):
        return True
    return certificate.not_valid_after_utc <= _now(now) + within


# --------------------------------------------------------------------------- Kubernetes


def ca_bundle_b64(ca: CertKeyPair) -> str:
    """Base64 of the CA's PEM: the value a webhook configuration's `caBundle` field takes."""
    return base64.b64encode(ca.cert_pem).decode("ascii")


def secret_manifest(
    name: str, namespace: str, serving: CertKeyPair, ca: CertKeyPair
) -> dict[str, Any]:
    """A `kubernetes.io/tls` Secret holding `tls.crt`, `tls.key` and `ca.crt`."""
    check_secret_metadata(name, namespace)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            TLS_CERT_FILE: b64(serving.cert_pem),
            TLS_KEY_FILE: b64(serving.key_pem),
            CA_CERT_FILE: b64(ca.cert_pem),
        },
    }


def check_secret_metadata(name: str, namespace: str) -> None:
    """ValueError unless `name` is a valid Secret name and `namespace` a valid namespace."""
    if not 0 < len(name) <= 253 or not all(_DNS_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(
            f"invalid Secret name {name!r}: must be a DNS subdomain (lowercase letters, "
            "digits, '-' and '.')"
        )
    if not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(f"invalid namespace {namespace!r}: must be a DNS label")


def render_manifest(manifest: dict[str, Any], fmt: ManifestFormat) -> str:
    """`manifest` as YAML or as indented JSON, ending with a newline."""
    if fmt == "json":
        return json.dumps(manifest, indent=2) + "\n"
    if fmt == "yaml":
        rendered: str = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
        return rendered
    raise ValueError(f"unknown manifest format {fmt!r} (yaml or json)")


# --------------------------------------------------------------------------- descriptions


def describe_key(pair: CertKeyPair) -> str:
    """`ECDSA P-256` or `RSA 2048`, for summaries."""
    key = pair.private_key
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
    return f"ECDSA {curve.get(key.curve.name, key.curve.name)}"


def subject_alt_names(pair: CertKeyPair) -> list[str]:
    """The certificate's SANs as `DNS:name` / `IP:address` strings, in certificate order."""
    try:
        san = pair.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for general_name in san.value:
        if isinstance(general_name, x509.DNSName):
            out.append(f"DNS:{general_name.value}")
        elif isinstance(general_name, x509.IPAddress):
            out.append(f"IP:{general_name.value}")
    return out


# --------------------------------------------------------------------------- helpers


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _fmt(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 0 < days <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}, got {days!r}")


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    raise ValueError(f"unknown key type {key_type!r} (one of: {', '.join(KEY_TYPES)})")


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca: CertKeyPair) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _parse_ip(address: str) -> IPAddress:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {address!r}") from None


def _dedupe(items: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(items))


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
