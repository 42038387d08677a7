"""OpenShift details of the chart (issue 19 §3): what the values schema accepts from an
OpenShift user, how the cluster's TLS security profile maps to the values and reaches a TLS
context the server can build, the run-level exclusion and the required-SCC annotation."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import yaml

from tests.chart_tools import (
    CHART,
    REPO,
    RenderError,
    deployment_flags,
    hooks,
    one,
    template,
    tool,
)
from webhook.server import tls

OPENSHIFT_DOC = REPO / "docs" / "openshift.md"
OPENSHIFT_CI = CHART / "ci" / "openshift-values.yaml"


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


def _pod_spec(objs: list[dict[str, object]]) -> dict[str, object]:
    spec: dict[str, object] = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_run_as_user_null_lets_the_scc_pick_the_uid(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "podSecurityContext: {runAsNonRoot: true, runAsUser: null, fsGroup: null}\n"
        "securityContext: {runAsNonRoot: true, runAsUser: null, runAsGroup: null}\n"
    )
    objs = template(helm, values=(values,))
    pod = _pod_spec(objs)
    (ctr,) = pod["containers"]  # type: ignore[misc]
    for context in (pod["securityContext"], ctr["securityContext"]):
        assert context["runAsNonRoot"] is True  # type: ignore[index]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context)  # type: ignore[call-overload]


@pytest.mark.parametrize("spelling", ["VersionTLS12", "VersionTLS13", "1.2"])
def test_tls_min_version_takes_the_spellings_the_binary_takes(helm: str, spelling: str) -> None:
    flags = deployment_flags(template(helm, f"config.tlsMinVersion={spelling}"))
    assert flags["tls-min-version"] == spelling
    assert tls.parse_min_version(spelling)  # the server accepts what the chart passes


def test_openssl_cipher_names_become_go_names(helm: str) -> None:
    objs = template(
        helm,
        'json:config.tlsCipherSuites=["ECDHE-RSA-AES128-GCM-SHA256",'
        '"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384","DHE-RSA-AES256-GCM-SHA384"]',
    )
    assert deployment_flags(objs)["tls-cipher-suites"] == (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    )


def test_an_unknown_cipher_name_fails_the_render_naming_it(helm: str) -> None:
    with pytest.raises(RenderError, match='unknown cipher suite "ECDHE-RSA-NOPE"'):
        template(helm, 'json:config.tlsCipherSuites=["ECDHE-RSA-NOPE"]')


def test_every_openssl_name_the_chart_translates_is_one_the_binary_knows() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers[helpers.index('define "piw.tlsCipherSuites"') :]
    block = block[: block.index("-}}\n{{- $dropped")]
    pairs = re.findall(r'"([A-Z0-9-]+)" "(TLS_[A-Z0-9_]+)"', block)
    assert len(pairs) >= 12
    for openssl_name, go_name in pairs:
        assert tls.GO_CIPHER_SUITES[go_name] == openssl_name


def _profile_values() -> str:
    """The values block of docs/openshift.md's TLS profile section."""
    text = OPENSHIFT_DOC.read_text()
    section = text[text.index("## The cluster's TLS security profile") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "docs/openshift.md: no values block in the TLS profile section"
    return match.group(1)


def test_the_documented_intermediate_profile_serves_tls12_without_cbc(
    helm: str, tmp_path: Path
) -> None:
    values = tmp_path / "intermediate.yaml"
    values.write_text(_profile_values())
    flags = deployment_flags(template(helm, values=(values,)))
    assert flags["tls-min-version"] == "VersionTLS12"
    suites = flags["tls-cipher-suites"].split(",")
    assert not [s for s in suites if "CBC" in s or "DHE_RSA" in s.replace("ECDHE", "")]

    # The server builds its context from exactly these flags.
    cert, key = _self_signed(tmp_path)
    ctx = tls.server_context(cert, key, flags["tls-min-version"], flags["tls-cipher-suites"])
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {tls.GO_CIPHER_SUITES[s] for s in suites if s in tls.GO_CIPHER_SUITES}
    assert not [
        name for name in tls12 if "-SHA" in name and "GCM" not in name and "CHACHA" not in name
    ]


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "piw.test.svc")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_openshift_ci_values_leave_run_levels_0_and_1_alone(helm: str) -> None:
    objs = template(helm, values=(OPENSHIFT_CI,))
    (entry,) = one(objs, "MutatingWebhookConfiguration")["webhooks"]
    expressions = entry["namespaceSelector"]["matchExpressions"]
    assert {"key": "openshift.io/run-level", "operator": "NotIn", "values": ["0", "1"]} in (
        expressions
    )
    documented = yaml.safe_load(
        OPENSHIFT_DOC.read_text()
        .split("## Namespaces of the platform")[1]
        .split("```yaml\n")[1]
        .split("```")[0]
    )
    assert documented["webhook"]["namespaceSelector"]["matchExpressions"][0] in expressions


def test_required_scc_annotation_pins_the_pods_scc(helm: str) -> None:
    objs = template(helm, "openshift.requiredSCC=restricted-v2", "tests.enabled=true")
    pod_annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["openshift.io/required-scc"] == "restricted-v2"
    tester = one(hooks(objs), "Pod")
    assert tester["metadata"]["annotations"]["openshift.io/required-scc"] == "restricted-v2"
    # Off by default: no annotation.
    default = one(template(helm), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "openshift.io/required-scc" not in default
