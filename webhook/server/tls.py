"""TLS for the webhook port: upstream's flag spellings, TLS 1.2+ by default, live reloading.

The certificate is reloaded into the same SSLContext object the listener uses; OpenSSL copies
the context's certificate into each new connection at accept time, so new handshakes see the
new certificate while established connections are untouched. Reloads run on the event loop
thread, the same thread that accepts connections, so they never race a handshake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator

log = logging.getLogger("webhook.tls")

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.0": ssl.TLSVersion.TLSv1,
    "VersionTLS10": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "VersionTLS11": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "VersionTLS12": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
    "VersionTLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's cipher suite names (crypto/tls) → OpenSSL's. TLS 1.3 suites are accepted and, as in Go,
# not configurable: they are always enabled when TLS 1.3 is.
_TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
GO_CIPHER_SUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
}


# OpenSSL's names for the suites above, as OpenShift's TLS security profiles list them
# (`oc get apiserver cluster -o yaml`): `--tls-cipher-suites` takes either spelling.
OPENSSL_CIPHER_SUITES: frozenset[str] = frozenset(GO_CIPHER_SUITES.values())

# The DHE suites of OpenShift's profiles have no Go equivalent: skipped with a warning, as the
# chart and OpenShift's own Go components skip them, so the binary and the chart agree.
SKIPPED_DHE_SUITES: frozenset[str] = frozenset(
    {
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-SHA256",
        "DHE-RSA-AES256-SHA256",
    }
)

# With no --tls-cipher-suites, TLS 1.2 offers only ECDHE with AES-GCM or ChaCha20-Poly1305
# (OpenShift's Intermediate profile, Mozilla's "intermediate"); Python's own default also
# enables CBC and DHE suites. TLS 1.3 suites are not affected.
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSConfigError(ValueError):
    pass


def parse_min_version(text: str) -> ssl.TLSVersion:
    if text == "":
        return ssl.TLSVersion.TLSv1_2
    try:
        return TLS_VERSIONS[text]
    except KeyError:
        raise TLSConfigError(
            f"unsupported --tls-min-version {text!r} (use 1.0, 1.1, 1.2, 1.3 or VersionTLS12...)"
        ) from None


def openssl_ciphers(names_text: str) -> str | None:
    """`--tls-cipher-suites` (comma-separated Go or OpenSSL names) → an OpenSSL cipher string."""
    names = [n.strip() for n in names_text.split(",") if n.strip()]
    if not names:
        return None
    openssl: list[str] = []
    for name in names:
        if name in _TLS13_SUITES:
            continue
        if name in SKIPPED_DHE_SUITES:
            log.warning("--tls-cipher-suites: %s has no Go equivalent and is skipped", name)
            continue
        if name in OPENSSL_CIPHER_SUITES:
            openssl.append(name)
            continue
        try:
            openssl.append(GO_CIPHER_SUITES[name])
        except KeyError:
            raise TLSConfigError(
                f"unknown cipher suite {name!r} in --tls-cipher-suites (Go names such as "
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, or OpenSSL names such as "
                "ECDHE-RSA-AES128-GCM-SHA256)"
            ) from None
    return ":".join(dict.fromkeys(openssl)) if openssl else None


def server_context(
    cert: str, key: str, min_version: str = "", cipher_suites: str = ""
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = parse_min_version(min_version)
    legacy = version < ssl.TLSVersion.TLSv1_2
    if legacy:
        # OpenSSL's default security level forbids TLS < 1.2; honour an explicit request
        # (TLS 1.0 and 1.1 have no AEAD suites, so OpenSSL's defaults stay).
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        ctx.set_ciphers(DEFAULT_TLS12_CIPHERS)
    ctx.minimum_version = version
    ciphers = openssl_ciphers(cipher_suites)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers + (":@SECLEVEL=0" if legacy else ""))
        except ssl.SSLError as err:
            raise TLSConfigError(f"this OpenSSL cannot use --tls-cipher-suites: {err}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise TLSConfigError(f"cannot load --tls-cert {cert} / --tls-key {key}: {err}") from None
    return ctx


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path with `data` behind it, without writing to any filesystem (read-only roots)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pod-identity-webhook-tls", 0)
        try:
            with os.fdopen(os.dup(fd), "wb") as handle:
                handle.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile() as handle:  # pragma: no cover (non-Linux)
        handle.write(data)
        handle.flush()
        yield handle.name


def _load_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with _in_memory(cert_pem) as cert_path, _in_memory(key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path)


class CertificateReloader:
    """Re-reads the key pair into the live context.

    The files are read once; the bytes are checked in a scratch context and only those same
    bytes are loaded into the live one, so a pair caught mid-rotation is rejected (and
    retried by the watcher) instead of leaving the listener without a certificate.
    """

    def __init__(self, ctx: ssl.SSLContext, cert: str, key: str) -> None:
        self.ctx, self.cert, self.key = ctx, cert, key
        self.reloads = 0
        with open(cert, "rb") as c, open(key, "rb") as k:
            self._good = (c.read(), k.read())

    def reload(self) -> None:
        with open(self.cert, "rb") as c, open(self.key, "rb") as k:
            pair = (c.read(), k.read())
        if pair == self._good:
            return
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), *pair)  # raises if mismatched
        try:
            _load_pair(self.ctx, *pair)
        except (OSError, ssl.SSLError):
            _load_pair(self.ctx, *self._good)  # never leave the listener without a pair
            raise
        self._good = pair
        self.reloads += 1
        log.info("reloaded serving certificate from %s", self.cert)
