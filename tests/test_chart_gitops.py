"""What GitOps tools get from the chart (issue 19 §1): `helm template` leaves the `helm test`
hook out unless asked, a GitOps-safe TLS mode renders the same objects every time, and the
chart README's Argo CD Application and Flux HelmRelease render such a release. Also the
hook's delete policy and each TLS mode's own Secret name (issue 17 §4)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.chart_tools import CHART, hooks, one, template, template_text, tool

README = CHART / "README.md"
FULLNAME = "piw-pod-identity-webhook"
GITOPS_SAFE_MODES = {"certManager", "existingSecret", "openshift"}


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


# ------------------------------------------------------------------------- the helm test hook


def test_helm_template_leaves_the_test_hook_out_by_default(helm: str) -> None:
    assert hooks(template(helm)) == []


def test_the_test_hook_is_rendered_when_asked(helm: str) -> None:
    kinds = {o["kind"] for o in hooks(template(helm, "tests.enabled=true"))}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Pod"}
    assert hooks(template(helm, "tests.enabled=false")) == []


def test_hook_objects_are_deleted_whatever_the_outcome(helm: str) -> None:
    policies = {
        o["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        for o in hooks(template(helm, "tests.enabled=true"))
    }
    assert policies == {"before-hook-creation,hook-succeeded,hook-failed"}
    # ... after `helm test` has printed the failed tester's log.
    tester = one(hooks(template(helm, "tests.enabled=true")), "Pod")
    assert tester["metadata"]["annotations"]["helm.sh/hook-output-log-policy"] == "hook-failed"


def test_keep_on_failure_keeps_a_failed_runs_objects_for_their_logs(helm: str) -> None:
    objs = template(helm, "tests.enabled=true", "tests.keepOnFailure=true")
    policies = {o["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for o in hooks(objs)}
    assert policies == {"before-hook-creation,hook-succeeded"}


# ------------------------------------------------------------------ TLS modes and their Secrets


def _mounted_secret(objs: list[dict[str, Any]]) -> str:
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (tls,) = [v for v in volumes if v["name"] == "tls"]
    name: str = tls["secret"]["secretName"]
    return name


def test_each_tls_mode_mounts_a_secret_of_its_own_name(helm: str) -> None:
    """Secrets written by cert-manager or the service CA outlive a mode switch or an
    uninstall; the selfSigned Secret Helm creates must never share their name."""
    names = {
        "selfSigned": _mounted_secret(template(helm)),
        "certManager": _mounted_secret(template(helm, "tls.mode=certManager")),
        "openshift": _mounted_secret(template(helm, "tls.mode=openshift")),
    }
    assert names == {
        "selfSigned": f"{FULLNAME}-tls",
        "certManager": f"{FULLNAME}-cert-manager-tls",
        "openshift": f"{FULLNAME}-service-ca-tls",
    }
    certificate = one(template(helm, "tls.mode=certManager"), "Certificate", FULLNAME)
    assert certificate["spec"]["secretName"] == names["certManager"]
    service = one(template(helm, "tls.mode=openshift"), "Service")
    assert service["metadata"]["annotations"] == {
        "service.beta.openshift.io/serving-cert-secret-name": names["openshift"]
    }


# ------------------------------------------------------------------------------- GitOps renders


def test_cert_manager_mode_renders_the_same_objects_every_time(helm: str) -> None:
    first = template_text(helm, "tls.mode=certManager")
    assert template_text(helm, "tls.mode=certManager") == first


def test_self_signed_mode_mints_a_new_ca_per_render_so_it_is_not_gitops_safe(helm: str) -> None:
    """The reason the README sends GitOps users to another mode."""
    first, second = (one(template(helm), "Secret") for _ in range(2))
    assert first["data"]["ca.crt"] != second["data"]["ca.crt"]


def _readme_example(kind: str) -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    found = [doc for b in blocks if (doc := yaml.safe_load(b)) and doc.get("kind") == kind]
    assert len(found) == 1, f"the chart README must hold one {kind} example"
    example: dict[str, Any] = found[0]
    return example


def _render_values(
    helm: str, values: dict[str, Any], release: str, namespace: str, tmp: Any
) -> str:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return template_text(helm, values=(path,), release=release, namespace=namespace)


def test_argo_cd_application_example_renders_a_stable_hook_free_release(
    helm: str, tmp_path: Any
) -> None:
    app = _readme_example("Application")
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    source = app["spec"]["source"]
    assert source["path"] == "charts/pod-identity-webhook"
    values = source["helm"]["valuesObject"]
    assert values["tls"]["mode"] in GITOPS_SAFE_MODES
    release, namespace = source["helm"]["releaseName"], app["spec"]["destination"]["namespace"]
    # Argo CD runs `helm template`: twice the same objects, no hook among them.
    first = _render_values(helm, values, release, namespace, tmp_path)
    assert _render_values(helm, values, release, namespace, tmp_path) == first
    objs = [d for d in yaml.safe_load_all(first) if d]
    assert hooks(objs) == []
    assert {"Deployment", "MutatingWebhookConfiguration", "Certificate"} <= {
        o["kind"] for o in objs
    }


def test_flux_helm_release_example_renders_a_stable_hook_free_release(
    helm: str, tmp_path: Any
) -> None:
    release = _readme_example("HelmRelease")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert chart["chart"] == "./charts/pod-identity-webhook"
    assert chart["sourceRef"]["kind"] == "GitRepository"
    values = release["spec"]["values"]
    assert values["tls"]["mode"] in GITOPS_SAFE_MODES
    name, namespace = release["metadata"]["name"], release["metadata"]["namespace"]
    first = _render_values(helm, values, name, namespace, tmp_path)
    assert _render_values(helm, values, name, namespace, tmp_path) == first
    assert hooks([d for d in yaml.safe_load_all(first) if d]) == []
