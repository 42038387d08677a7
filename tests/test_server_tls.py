"""The TLS context `serve` builds from --tls-min-version and --tls-cipher-suites (issue 19 §3):
Go and OpenSSL cipher names, one clear error for an unknown name, and the TLS 1.2 default of
ECDHE with AES-GCM or ChaCha20-Poly1305 only, shown by real handshakes (in memory)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from webhook.server import tls

from .serverproc import CertFiles, client_context, handshake_in_memory, make_certs

README = Path(__file__).resolve().parent.parent / "README.md"

# CBC suites a TLS 1.2 client may offer: Go's default (CBC-SHA) and Python's (CBC-SHA256/384).
GO_DEFAULT_CBC = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
OPENSSL_DEFAULT_CBC = (
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384"
)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


def tls12_client(cert_files: CertFiles, ciphers: str) -> ssl.SSLContext:
    ctx = client_context(cert_files.ca.cert_pem, maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(ciphers)
    return ctx


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[str, str]:
    """A complete TLS handshake in memory: (version, cipher) or ssl.SSLError."""
    client = handshake_in_memory(client_ctx, server_ctx)
    cipher = client.cipher()
    assert cipher is not None
    return str(client.version()), cipher[0]


def server(cert_files: CertFiles, min_version: str = "", suites: str = "") -> ssl.SSLContext:
    return tls.server_context(
        str(cert_files.tls_cert), str(cert_files.tls_key), min_version, suites
    )


def tls12_names(ctx: ssl.SSLContext) -> set[str]:
    return {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}


# -- the default -------------------------------------------------------------------------------


@pytest.mark.parametrize("offered", [GO_DEFAULT_CBC, OPENSSL_DEFAULT_CBC], ids=["go", "openssl"])
def test_by_default_a_tls12_client_offering_only_cbc_suites_is_refused(
    cert_files: CertFiles, offered: str
) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(tls12_client(cert_files, offered), server(cert_files))


@pytest.mark.parametrize(
    "offered", ["ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE+CHACHA20"]
)
def test_by_default_a_tls12_client_offering_aes_gcm_or_chacha20_gets_in(
    cert_files: CertFiles, offered: str
) -> None:
    version, cipher = handshake(tls12_client(cert_files, offered), server(cert_files))
    assert version == "TLSv1.2"
    assert cipher in offered or "CHACHA20" in cipher


def test_the_default_tls12_suites_are_exactly_ecdhe_with_aead_and_tls13_is_unaffected(
    cert_files: CertFiles,
) -> None:
    names = tls12_names(server(cert_files))
    assert names == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }
    assert handshake(client_context(cert_files.ca.cert_pem), server(cert_files))[0] == "TLSv1.3"


def test_an_explicit_cipher_list_may_still_enable_cbc(cert_files: CertFiles) -> None:
    ctx = server(cert_files, suites="TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA")
    assert handshake(tls12_client(cert_files, GO_DEFAULT_CBC), ctx) == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-SHA",
    )


def test_the_readme_lists_the_default_as_a_difference_from_upstream_with_this_test() -> None:
    table = README.read_text().split("## What differs from upstream, and why", 1)[1]
    table = table.split("\n## ", 1)[0]
    (row,) = [line for line in table.splitlines() if line.startswith("| With no `--tls-cipher")]
    assert "tests/test_server_tls.py::test_by_default_a_tls12_client_offering_only_cbc" in row


# -- names -------------------------------------------------------------------------------------


def test_openssl_names_configure_the_same_suites_as_go_names(cert_files: CertFiles) -> None:
    go = server(
        cert_files,
        suites="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    )
    openssl = server(
        cert_files, suites="ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES256-GCM-SHA384"
    )
    assert (
        tls12_names(go)
        == tls12_names(openssl)
        == {
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
        }
    )
    with pytest.raises(ssl.SSLError):  # AES-128 was not asked for
        handshake(tls12_client(cert_files, "ECDHE+AESGCM+AES128"), openssl)


def test_every_openssl_name_with_a_go_equivalent_is_accepted() -> None:
    for go_name, openssl_name in tls.GO_CIPHER_SUITES.items():
        assert tls.openssl_ciphers(openssl_name) == tls.openssl_ciphers(go_name) == openssl_name


def test_the_dhe_suites_of_openshift_profiles_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="webhook.tls"):
        ciphers = tls.openssl_ciphers("ECDHE-RSA-AES128-GCM-SHA256,DHE-RSA-AES256-GCM-SHA384")
    assert ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert [r.getMessage() for r in caplog.records] == [
        "--tls-cipher-suites: DHE-RSA-AES256-GCM-SHA384 has no Go equivalent and is skipped"
    ]


@pytest.mark.parametrize(
    "name", ["ECDHE-RSA-NOPE", "TLS_MADE_UP_SUITE", "ecdhe-rsa-aes128-gcm-sha256"]
)
def test_an_unknown_name_is_one_line_naming_it(name: str) -> None:
    with pytest.raises(tls.TLSConfigError) as caught:
        tls.openssl_ciphers(f"ECDHE-RSA-AES128-GCM-SHA256,{name}")
    message = str(caught.value)
    assert "\n" not in message
    assert f"unknown cipher suite {name!r}" in message
