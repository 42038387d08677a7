"""The Helm chart against a real kube-apiserver: every rendered object passes the API
server's strict validation, `helm install/upgrade/uninstall` behave, and a URL-mode release
routes pods to our webhook running as a process outside the cluster.

No controllers run on the e2e control plane: Deployments never get pods, so in-cluster
releases are checked through the objects the API server stores, not through traffic.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import ssl
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.controlplane import ControlPlane
from e2e.webhooks import (
    WebhookProcess,
    create_pod,
    env_names,
    ours,
    simple_pod,
    wait_until_mutating,
)

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pod-identity-webhook"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "piw"
FULLNAME = "piw-pod-identity-webhook"  # <release>-<chart>
ROLE_ARN = "arn:aws:iam::111122223333:role/chart"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
# The chart's objectSelector always carries `<this label> DoesNotExist` (templates/webhook.yaml).
SKIP_LABEL = "eks.amazonaws.com/skip-pod-identity-webhook"
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"

# Kinds served only through CRDs of other projects, which this control plane does not
# install: the API server cannot validate them, so they are left out of the dry-run apply.
# (test_skipped_kinds_are_really_not_served keeps this list honest.)
UNSERVED_KINDS = {
    ("cert-manager.io", "Issuer"),  # tls.mode=certManager
    ("cert-manager.io", "Certificate"),  # tls.mode=certManager
    ("monitoring.coreos.com", "ServiceMonitor"),  # serviceMonitor.enabled (Prometheus Operator)
    ("monitoring.coreos.com", "PrometheusRule"),  # prometheusRule.enabled (Prometheus Operator)
}
CLUSTER_SCOPED_KINDS = ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration")

Obj = dict[str, Any]


# ------------------------------------------------------------------------------------------ helm


@dataclass(frozen=True)
class Helm:
    """The pinned helm binary, talking to the e2e API server, with its state in `home`."""

    binary: Path
    kubeconfig: Path
    home: Path

    def run(self, *args: str) -> str:
        proc = self.attempt(*args)
        if proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc.stdout

    def attempt(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """One helm command, whatever its outcome."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        env |= {
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        return subprocess.run(
            [str(self.binary), *args, "--kubeconfig", str(self.kubeconfig)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def template(self, values: Path, namespace: str, *args: str) -> list[Obj]:
        text = self.run("template", RELEASE, str(CHART), "-n", namespace, "-f", str(values), *args)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def manifest(self, release: str, namespace: str) -> list[Obj]:
        text = self.run("get", "manifest", release, "-n", namespace)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def revision(self, release: str, namespace: str) -> int:
        return int(
            json.loads(self.run("status", release, "-n", namespace, "-o", "json"))["version"]
        )

    @contextlib.contextmanager
    def installed(self, release: str, namespace: str, *args: str) -> Iterator[None]:
        """`helm install` for the block; uninstalled afterwards unless the block already did."""
        self.run(
            "install", release, str(CHART), "-n", namespace, "--create-namespace", "--wait=false",
            *args,
        )  # fmt: skip
        try:
            yield
        finally:
            self.run("uninstall", release, "-n", namespace, "--ignore-not-found")


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(
        control_plane.tools / "helm", control_plane.kubeconfig, tmp_path_factory.mktemp("helm")
    )


# ------------------------------------------------------------------------------------ API access


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "apps/v1"
    plural: str
    namespaced: bool


@functools.cache
def _discovery(cp: ControlPlane, group_version: str) -> dict[str, Resource] | None:
    """kind -> Resource for one served group/version (None if the API server does not serve it)."""
    prefix = "/api" if group_version == "v1" else "/apis"
    status, body = cp.request("GET", f"{prefix}/{group_version}")
    if status == 404:
        return None
    assert status == 200, f"discovery of {group_version}: HTTP {status}: {body[:300]!r}"
    return {
        r["kind"]: Resource(group_version, r["name"], bool(r["namespaced"]))
        for r in json.loads(body)["resources"]
        if "/" not in r["name"]  # subresources (deployments/scale, ...)
    }


def resource_of(cp: ControlPlane, obj: Obj) -> Resource:
    served = _discovery(cp, obj["apiVersion"])
    assert served is not None, f"{obj['apiVersion']} is not served by the API server"
    assert obj["kind"] in served, f"{obj['apiVersion']} serves no kind {obj['kind']}"
    return served[obj["kind"]]


def object_path(cp: ControlPlane, obj: Obj, default_namespace: str) -> str:
    res = resource_of(cp, obj)
    path = "/api/v1" if res.group_version == "v1" else f"/apis/{res.group_version}"
    if res.namespaced:
        path += f"/namespaces/{obj['metadata'].get('namespace') or default_namespace}"
    return f"{path}/{res.plural}/{obj['metadata']['name']}"


def group_of(obj: Obj) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.rpartition("/")[0]


def dry_run_apply(cp: ControlPlane, path: str, obj: Obj) -> tuple[int, bytes]:
    """Server-side apply with strict field validation, not persisted (dryRun=All)."""
    query = urllib.parse.urlencode(
        {"fieldManager": "e2e", "fieldValidation": "Strict", "dryRun": "All"}
    )
    req = urllib.request.Request(
        f"{cp.url}{path}?{query}", data=json.dumps(obj).encode(), method="PATCH"
    )
    req.add_header("Content-Type", "application/apply-patch+yaml")  # JSON is YAML
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert_file), str(cp.admin_key_file))
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def get(cp: ControlPlane, path: str) -> Obj | None:
    status, body = cp.request("GET", path)
    if status == 404:
        return None
    assert status == 200, f"GET {path}: HTTP {status}: {body[:300]!r}"
    obj: Obj = json.loads(body)
    return obj


def mwc_path(name: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"


# --------------------------------------------------------------------- 1. every object validates


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_rendered_object_passes_strict_server_side_apply(
    control_plane: ControlPlane, helm: Helm, values: Path
) -> None:
    cp, namespace = control_plane, f"piw-{values.stem}"
    # The `helm test` hook too (`helm template` leaves it out unless asked).
    objects = helm.template(values, namespace, "--set", "tests.enabled=true")
    cp.ensure_namespace(namespace)
    cp.ensure_namespace(f"{FULLNAME}-test")  # the `helm test` hook's objects live there

    rejected: list[str] = []
    validated: set[str] = set()
    for obj in objects:
        if (group_of(obj), obj["kind"]) in UNSERVED_KINDS:
            continue
        if obj["kind"] == "Pod":  # the `helm test` pod: its ServiceAccount is not created by a
            continue  # dry run; e2e/node/test_helm_test.py runs it for real
        path = object_path(cp, obj, namespace)
        status, body = dry_run_apply(cp, path, obj)
        if status in (200, 201):
            validated.add(obj["kind"])
        else:
            rejected.append(f"{obj['kind']} {obj['metadata']['name']}: HTTP {status}: {body!r}")

    assert not rejected, "\n".join(rejected)
    assert {"ServiceAccount", *CLUSTER_SCOPED_KINDS} <= validated  # rendered in every mode


def test_skipped_kinds_are_really_not_served(control_plane: ControlPlane) -> None:
    for group, kind in sorted(UNSERVED_KINDS):
        status, _ = control_plane.request("GET", f"/apis/{group}")
        assert status == 404, f"{group} is served now: validate {kind} instead of skipping it"


# ------------------------------------------------------------------ hostNetwork pods and hostPorts

HOST_NETWORK_NS = "piw-host-network"


@pytest.mark.parametrize(
    ("extra", "host_ports"),
    [((), set()), (("--set", "config.reusePort=false"), {10443, 10999})],
    ids=["reuse-port", "no-reuse-port"],
)
def test_host_network_pods_claim_host_ports_only_without_reuse_port(
    control_plane: ControlPlane, helm: Helm, extra: tuple[str, ...], host_ports: set[int]
) -> None:
    """The API server turns containerPorts of hostNetwork pods into hostPorts, which the
    scheduler never books twice on a node: with --reuse-port the chart declares none, so two
    replicas (or a rollout's surge pod) fit on one node."""
    cp = control_plane
    cp.ensure_namespace(HOST_NETWORK_NS)
    values = CHART / "ci" / "host-network-values.yaml"
    (deployment,) = [
        o for o in helm.template(values, HOST_NETWORK_NS, *extra) if o["kind"] == "Deployment"
    ]
    template = deployment["spec"]["template"]
    cp.ensure_service_account(HOST_NETWORK_NS, template["spec"]["serviceAccountName"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "piw-", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }

    stored = create_pod(cp, HOST_NETWORK_NS, pod, dry_run=True)

    (ctr,) = stored["spec"]["containers"]
    assert stored["spec"]["hostNetwork"] is True
    assert {p["hostPort"] for p in ctr.get("ports") or []} == host_ports
    assert ("--reuse-port=true" in ctr["args"]) == (not host_ports)
    assert ctr["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}, "kept by this API server"


# ---------------------------------------------------------------- 2. install, upgrade, uninstall

DEFAULT_NS = "piw-default"


def test_default_install_stores_every_object_of_the_release(
    control_plane: ControlPlane, helm: Helm
) -> None:
    with helm.installed(RELEASE, DEFAULT_NS):
        manifest = helm.manifest(RELEASE, DEFAULT_NS)
        kinds = {obj["kind"] for obj in manifest}
        assert {"Deployment", "Secret", *CLUSTER_SCOPED_KINDS} <= kinds
        missing = [
            f"{obj['kind']} {obj['metadata']['name']}"
            for obj in manifest
            if get(control_plane, object_path(control_plane, obj, DEFAULT_NS)) is None
        ]
        assert not missing, f"installed but not in the API: {missing}"


def test_self_signed_upgrade_keeps_serving_certificate_and_ca_bundle(
    control_plane: ControlPlane, helm: Helm
) -> None:
    secret_path = f"/api/v1/namespaces/{DEFAULT_NS}/secrets/{FULLNAME}-tls"

    def tls_state() -> tuple[str, str, str]:
        secret, mwc = get(control_plane, secret_path), get(control_plane, mwc_path(FULLNAME))
        assert secret is not None and mwc is not None
        ca_bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        return secret["data"]["tls.crt"], secret["data"]["ca.crt"], ca_bundle

    with helm.installed(RELEASE, DEFAULT_NS):
        tls_crt, ca_crt, ca_bundle = tls_state()
        assert ca_bundle == ca_crt, "the webhook must trust the CA that signed the Secret"

        helm.run("upgrade", RELEASE, str(CHART), "-n", DEFAULT_NS, "--wait=false")

        assert helm.revision(RELEASE, DEFAULT_NS) == 2
        assert tls_state() == (tls_crt, ca_crt, ca_bundle)


def test_uninstall_removes_cluster_scoped_objects(control_plane: ControlPlane, helm: Helm) -> None:
    cp = control_plane
    with helm.installed(RELEASE, DEFAULT_NS):
        cluster_scoped = {
            obj["kind"]: object_path(cp, obj, DEFAULT_NS)
            for obj in helm.manifest(RELEASE, DEFAULT_NS)
            if not resource_of(cp, obj).namespaced
        }
        assert sorted(cluster_scoped) == sorted(CLUSTER_SCOPED_KINDS)
        assert all(get(cp, path) is not None for path in cluster_scoped.values())

        helm.run("uninstall", RELEASE, "-n", DEFAULT_NS)

        left = [kind for kind, path in cluster_scoped.items() if get(cp, path) is not None]
        assert not left, f"left behind by helm uninstall: {left}"


# ------------------------------------------- mode switches, reinstalls, failed tests (issue 17 §4)


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def create_foreign_tls_secret(
    cp: ControlPlane, namespace: str, name: str, annotations: dict[str, str]
) -> None:
    """A kubernetes.io/tls Secret written by someone other than Helm (cert-manager, OpenShift's
    service CA): no Helm ownership metadata."""
    cp.ensure_namespace(namespace)
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    status, body = cp.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "annotations": annotations},
            "data": {"tls.crt": pem.decode(), "tls.key": pem.decode()},
        },
    )
    assert status == 201, f"create Secret {namespace}/{name}: HTTP {status}: {body[:300]!r}"


def mounted_secret(cp: ControlPlane, namespace: str) -> str:
    deployment = get(cp, f"/apis/apps/v1/namespaces/{namespace}/deployments/{FULLNAME}")
    assert deployment is not None
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    name: str = volume["secret"]["secretName"]
    return name


def owned_by_release(secret: Obj, release: str) -> bool:
    annotations = secret["metadata"].get("annotations") or {}
    return bool(annotations.get("meta.helm.sh/release-name") == release)


def test_upgrade_from_openshift_mode_to_self_signed(
    control_plane: ControlPlane, helm: Helm
) -> None:
    cp, ns = control_plane, "piw-switch-openshift"
    with helm.installed(RELEASE, ns, "--set", "tls.mode=openshift"):
        # OpenShift's service CA: writes the Secret the Service's annotation names.
        service = get(cp, f"/api/v1/namespaces/{ns}/services/{FULLNAME}")
        assert service is not None
        service_ca_secret = service["metadata"]["annotations"][
            "service.beta.openshift.io/serving-cert-secret-name"
        ]
        create_foreign_tls_secret(
            cp,
            ns,
            service_ca_secret,
            {"service.beta.openshift.io/originating-service-name": FULLNAME},
        )

        helm.run("upgrade", RELEASE, str(CHART), "-n", ns, "--set", "tls.mode=selfSigned")

        assert helm.revision(RELEASE, ns) == 2
        self_signed = mounted_secret(cp, ns)
        secret = get(cp, secret_path(ns, self_signed))
        assert secret is not None and owned_by_release(secret, RELEASE)
        mwc = get(cp, mwc_path(FULLNAME))
        assert mwc is not None
        assert mwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert get(cp, secret_path(ns, service_ca_secret)) is not None, "not Helm's to delete"


def test_self_signed_install_over_what_cert_manager_mode_left(
    control_plane: ControlPlane, helm: Helm, tmp_path: Path
) -> None:
    """cert-manager keeps the Secrets of deleted Certificates: after an uninstall of a
    tls.mode=certManager release, its serving and CA Secrets stay behind."""
    cp, ns = control_plane, "piw-after-cert-manager"
    values = tmp_path / "cert-manager.yaml"
    values.write_text("tls:\n  mode: certManager\n")
    left = {
        o["spec"]["secretName"] for o in helm.template(values, ns) if o["kind"] == "Certificate"
    }
    assert len(left) == 2
    for name in sorted(left):
        create_foreign_tls_secret(cp, ns, name, {"cert-manager.io/certificate-name": name})

    with helm.installed(RELEASE, ns):
        secret = get(cp, secret_path(ns, mounted_secret(cp, ns)))
        assert secret is not None and owned_by_release(secret, RELEASE)


def test_self_signed_install_over_a_foreign_tls_secret_says_what_to_delete(
    control_plane: ControlPlane, helm: Helm
) -> None:
    """A `<fullname>-tls` no release owns (certManager or openshift mode of earlier chart
    versions used that name): one line saying which Secret to delete, then the install works."""
    cp, ns = control_plane, "piw-foreign-tls"
    create_foreign_tls_secret(cp, ns, f"{FULLNAME}-tls", {})

    proc = helm.attempt("install", RELEASE, str(CHART), "-n", ns, "--wait=false")

    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert f"kubectl -n {ns} delete secret {FULLNAME}-tls" in errors[0]
    assert helm.attempt("status", RELEASE, "-n", ns).returncode != 0, "nothing was installed"

    status, _ = cp.request("DELETE", secret_path(ns, f"{FULLNAME}-tls"))
    assert status == 200
    with helm.installed(RELEASE, ns):
        secret = get(cp, secret_path(ns, f"{FULLNAME}-tls"))
        assert secret is not None and owned_by_release(secret, RELEASE)


def gone_or_going(cp: ControlPlane, path: str) -> bool:
    """Deleted, or deletion under way (no namespace controller runs here to finish it)."""
    obj = get(cp, path)
    return obj is None or bool(obj["metadata"].get("deletionTimestamp"))


@contextlib.contextmanager
def namespace_controller(cp: ControlPlane, name: str) -> Iterator[None]:
    """Plays the namespace controller for one namespace, which this control plane does not
    run: once the namespace is being deleted, it is finalized (Helm waits for hook objects to
    be gone before deleting the next one)."""
    stop = threading.Event()

    def finalize_when_deleted() -> None:
        while not stop.wait(0.2):
            namespace = get(cp, f"/api/v1/namespaces/{name}")
            if namespace and namespace["metadata"].get("deletionTimestamp"):
                namespace["spec"]["finalizers"] = []
                cp.request("PUT", f"/api/v1/namespaces/{name}/finalize", namespace)

    thread = threading.Thread(target=finalize_when_deleted, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_failed_helm_test_leaves_nothing_after_uninstall(
    control_plane: ControlPlane, helm: Helm
) -> None:
    """No kubelet runs here: the tester pod never starts, so `helm test` fails (times out)."""
    cp, ns = control_plane, "piw-failed-test"
    tester, test_ns = f"{FULLNAME}-tester", f"{FULLNAME}-test"
    with helm.installed(RELEASE, ns), namespace_controller(cp, test_ns):
        proc = helm.attempt("test", RELEASE, "-n", ns, "--timeout=5s", timeout=120)
        assert proc.returncode != 0, proc.stdout
        helm.run("uninstall", RELEASE, "-n", ns)

    left = [
        path
        for path in (
            f"/api/v1/namespaces/{ns}/pods/{tester}",
            f"/api/v1/namespaces/{ns}/serviceaccounts/{tester}",
            f"/api/v1/namespaces/{ns}/configmaps/{tester}",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{test_ns}/roles/{tester}",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{test_ns}/rolebindings/{tester}",
            f"/api/v1/namespaces/{test_ns}/serviceaccounts/annotated",
            f"/api/v1/namespaces/{test_ns}",
        )
        if not gone_or_going(cp, path)
    ]
    assert not left, f"left behind by a failed helm test and the uninstall: {left}"


# ------------------------------------------------------------------------ 3. URL mode end to end

URL_RELEASE = "piw-url"
URL_RELEASE_NS = "piw-url"
URL_FULLNAME = "piw-url-pod-identity-webhook"
APPS_NS = "piw-url-apps"  # the only namespace the release's selector admits
OTHER_NS = "piw-url-other"
APP_SA = "app"


@dataclass(frozen=True)
class UrlModeRelease:
    cp: ControlPlane
    webhook: WebhookProcess

    def admissions_received(self) -> float:
        """AdmissionReviews the process has answered (its /mutate request count)."""
        prefix = 'pod_identity_webhook_request_duration_seconds_count{path="/mutate"} '
        (line,) = [ln for ln in self.webhook.metrics().splitlines() if ln.startswith(prefix)]
        return float(line.removeprefix(prefix))

    def stored_pod(self, namespace: str, labels: dict[str, str] | None = None) -> Obj:
        created = create_pod(self.cp, namespace, simple_pod(APP_SA, labels))
        name = created["metadata"]["name"]
        pod = get(self.cp, f"/api/v1/namespaces/{namespace}/pods/{name}")
        assert pod is not None
        return pod


@pytest.fixture(scope="module")
def url_mode(
    control_plane: ControlPlane, helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UrlModeRelease]:
    """Our webhook as a local process, registered by a URL-mode release of the chart."""
    cp = control_plane
    for ns in (APPS_NS, OTHER_NS):
        cp.ensure_namespace(ns)
        cp.ensure_service_account(ns, APP_SA, {ROLE_ANNOTATION: ROLE_ARN})
    workdir = tmp_path_factory.mktemp("url-mode")
    webhook = ours(cp, workdir, name="chart-url-mode")
    values = workdir / "values.json"
    values.write_text(
        json.dumps(
            {
                "deployment": {"enabled": False},
                "webhook": {
                    "url": webhook.url,
                    "caBundle": cp.ca_pem.decode(),  # the cluster CA signed its certificate
                    "failurePolicy": "Fail",
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": APPS_NS}},
                },
            }
        )
    )
    try:
        webhook.start()
        with helm.installed(URL_RELEASE, URL_RELEASE_NS, "-f", str(values)):
            wait_until_mutating(cp, APPS_NS, APP_SA)
            yield UrlModeRelease(cp, webhook)
    finally:
        webhook.stop()


def test_url_mode_registers_the_external_process_fail_closed(url_mode: UrlModeRelease) -> None:
    mwc = get(url_mode.cp, mwc_path(URL_FULLNAME))
    assert mwc is not None
    (entry,) = mwc["webhooks"]
    assert entry["clientConfig"] == {
        "url": url_mode.webhook.url,
        "caBundle": base64.b64encode(url_mode.cp.ca_pem).decode(),
    }
    assert entry["failurePolicy"] == "Fail"


def test_url_mode_pod_of_annotated_service_account_gets_web_identity(
    url_mode: UrlModeRelease,
) -> None:
    pod = url_mode.stored_pod(APPS_NS)

    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_ARN"] == ROLE_ARN
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == TOKEN_FILE
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    token = volumes["aws-iam-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "sts.amazonaws.com"


def test_url_mode_skip_label_opts_a_pod_out_before_it_reaches_the_webhook(
    url_mode: UrlModeRelease,
) -> None:
    before = url_mode.admissions_received()

    pod = url_mode.stored_pod(APPS_NS, labels={SKIP_LABEL: "true"})

    assert "AWS_ROLE_ARN" not in env_names(pod)
    assert "aws-iam-token" not in {v["name"] for v in pod["spec"].get("volumes") or []}
    assert url_mode.admissions_received() == before, "the objectSelector should filter it"


def test_url_mode_namespace_selector_leaves_other_namespaces_alone(
    url_mode: UrlModeRelease,
) -> None:
    before = url_mode.admissions_received()

    pod = url_mode.stored_pod(OTHER_NS)

    assert "AWS_ROLE_ARN" not in env_names(pod)
    assert url_mode.admissions_received() == before, "the namespaceSelector should filter it"


# ---------------------------------------------------------- least privilege of the ConfigMap Role

CM_NS = "piw-cm-rbac"


def _as_service_account(cp: ControlPlane, path: str, namespace: str, name: str) -> int:
    """HTTP status of a GET made as the ServiceAccount (admin impersonating it)."""
    req = urllib.request.Request(f"{cp.url}{path}", method="GET")
    req.add_header("Impersonate-User", f"system:serviceaccount:{namespace}:{name}")
    for group in (
        "system:serviceaccounts",
        f"system:serviceaccounts:{namespace}",
        "system:authenticated",
    ):
        req.add_header("Impersonate-Group", group)
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert_file), str(cp.admin_key_file))
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_configmap_role_allows_the_webhooks_field_selected_list_and_watch_only(
    control_plane: ControlPlane, helm: Helm
) -> None:
    """The Role names one ConfigMap (resourceNames); the webhook's list and watch select it
    with fieldSelector=metadata.name=pod-identity-webhook (webhook/sources/kube.py), which the
    authorizer reads as a request for that name. Anything wider is forbidden."""
    cp = control_plane
    with helm.installed(RELEASE, CM_NS, "--set", "watchConfigMap.enabled=true"):
        status, body = cp.request(
            "POST", f"/api/v1/namespaces/{CM_NS}/configmaps", {"metadata": {"name": "other"}}
        )
        assert status == 201, body
        base = f"/api/v1/namespaces/{CM_NS}/configmaps"
        ours_only = "fieldSelector=metadata.name%3Dpod-identity-webhook"
        allowed = [
            f"{base}?{ours_only}&resourceVersion=0",  # the webhook's list
            f"{base}?{ours_only}&watch=true&allowWatchBookmarks=true&timeoutSeconds=1",  # its watch
            f"{base}/pod-identity-webhook",
        ]
        forbidden = [
            base,
            f"{base}?watch=true&timeoutSeconds=1",
            f"{base}?fieldSelector=metadata.name%3Dother",
            f"{base}/other",
            "/api/v1/namespaces/default/configmaps?" + ours_only,
        ]
        got = {p: _as_service_account(cp, p, CM_NS, FULLNAME) for p in allowed + forbidden}
        assert {p: got[p] for p in allowed} == dict.fromkeys(allowed, 200)
        assert {p: got[p] for p in forbidden} == dict.fromkeys(forbidden, 403)
