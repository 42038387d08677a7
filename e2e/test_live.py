"""Our webhook against a real kube-apiserver: live ServiceAccount and ConfigMap watches,
grace period, container credentials, both review versions, API server restarts, tokens."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from e2e.controlplane import ControlPlane
from e2e.webhooks import (
    WebhookProcess,
    create_pod,
    env_names,
    ours,
    register,
    simple_pod,
    unregister,
    upstream,
    wait_until,
    wait_until_mutating,
)

ROLE = "arn:aws:iam::111122223333:role/live"
LIVE_LABEL = "pod-identity-webhook-live"
CONFIG_NS = "live-system"


class Live:
    def __init__(self, cp: ControlPlane, webhook: WebhookProcess, identities: Path) -> None:
        self.cp, self.webhook, self.identities = cp, webhook, identities

    def namespace(self, version: str = "v1") -> str:
        name = f"live-{uuid.uuid4().hex[:8]}"
        self.cp.apply(
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {LIVE_LABEL: version}},
            },
        )
        self.cp.ensure_service_account(name, "default")
        return name

    def set_annotations(self, ns: str, sa: str, annotations: dict[str, str | None]) -> None:
        patch = {"metadata": {"annotations": annotations}}
        status, body = self._merge_patch(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}", patch)
        assert status == 200, body

    def _merge_patch(self, path: str, patch: dict[str, Any]) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.cp.url}{path}", data=json.dumps(patch).encode(), method="PATCH"
        )
        req.add_header("Content-Type", "application/merge-patch+json")
        ctx = ssl.create_default_context(cafile=str(self.cp.ca_file))
        ctx.load_cert_chain(str(self.cp.admin_cert_file), str(self.cp.admin_key_file))
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def pod(self, ns: str, sa: str, **spec: Any) -> dict[str, Any]:
        return create_pod(self.cp, ns, simple_pod(sa, **spec))

    def mutated_role(self, ns: str, sa: str) -> str | None:
        pod = create_pod(self.cp, ns, simple_pod(sa), dry_run=True)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        return env.get("AWS_ROLE_ARN")


@pytest.fixture(scope="module")
def live(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    cp = control_plane
    workdir = tmp_path_factory.mktemp("live")
    cp.ensure_namespace(CONFIG_NS)
    identities = workdir / "identities.json"
    identities.write_text('{"identities": []}')
    webhook = ours(
        cp,
        workdir,
        [
            "--watch-config-map",
            f"--namespace={CONFIG_NS}",
            f"--watch-container-credentials-config={identities}",
            "--service-account-lookup-grace-period=5s",
            "--compose-role-arn",
            "--aws-account-id=111122223333",
            "--resync-period=0",
            "--enable-debugging-handlers",
        ],
        name="live",
    ).start()
    register(
        cp,
        "live-v1",
        webhook.url,
        versions=["v1"],
        namespace_selector={"matchLabels": {LIVE_LABEL: "v1"}},
    )
    register(
        cp,
        "live-v1beta1",
        webhook.url,
        versions=["v1beta1"],
        namespace_selector={"matchLabels": {LIVE_LABEL: "v1beta1"}},
    )
    state = Live(cp, webhook, identities)
    probe = state.namespace()
    cp.ensure_service_account(probe, "probe", {"eks.amazonaws.com/role-arn": ROLE})
    wait_until_mutating(cp, probe, "probe", timeout=60)
    try:
        yield state
    finally:
        unregister(cp, "live-v1")
        unregister(cp, "live-v1beta1")
        assert webhook.stop() == 0, webhook.log_tail()


def test_stored_pod_has_env_mount_and_volume_and_keeps_newer_fields(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(
        ns,
        "app",
        {"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "3600"},
    )
    wait_until(lambda: live.mutated_role(ns, "app") == ROLE, what="SA in cache")
    sidecar = {"name": "sidecar", "image": "registry.k8s.io/pause:3.10", "restartPolicy": "Always"}
    resize = [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]
    # bindMountOptions is newer than upstream's vendored k8s.io/api: its rewrite drops it.
    scratch = {"name": "scratch", "mountPath": "/scratch", "bindMountOptions": ["noexec"]}
    app = {
        "name": "app",
        "image": "registry.k8s.io/pause:3.10",
        "resizePolicy": resize,
        "volumeMounts": [scratch],
    }
    pod = live.pod(
        ns,
        "app",
        initContainers=[sidecar],
        containers=[app],
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    assert env_names(pod, kind="initContainers") == ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]
    assert env_names(pod) == ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]
    ours_mount = {
        "name": "aws-iam-token",
        "readOnly": True,
        "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
    }
    assert pod["spec"]["initContainers"][0]["volumeMounts"] == [ours_mount]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [scratch, ours_mount]
    assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert pod["spec"]["containers"][0]["resizePolicy"] == resize
    token = pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_both_admission_review_versions_mutate(live: Live, version: str) -> None:
    ns = live.namespace(version)
    live.cp.ensure_service_account(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    wait_until(lambda: live.mutated_role(ns, "app") == ROLE, what=f"mutation over {version}")


def test_annotation_added_changed_and_removed_is_followed_by_new_pods(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "app")
    wait_until(lambda: live.mutated_role(ns, "app") is None, what="unannotated SA")
    live.set_annotations(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    wait_until(lambda: live.mutated_role(ns, "app") == ROLE, what="annotation added")
    other = "arn:aws:iam::111122223333:role/changed"
    live.set_annotations(ns, "app", {"eks.amazonaws.com/role-arn": other})
    wait_until(lambda: live.mutated_role(ns, "app") == other, what="annotation changed")
    live.set_annotations(ns, "app", {"eks.amazonaws.com/role-arn": None})
    wait_until(lambda: live.mutated_role(ns, "app") is None, what="annotation removed")


def test_service_account_created_just_before_the_pod_is_used_with_a_grace_period(
    live: Live,
) -> None:
    ns = live.namespace()
    for i in range(5):
        name = f"fresh-{i}"
        live.cp.ensure_service_account(ns, name, {"eks.amazonaws.com/role-arn": ROLE})
        pod = live.pod(ns, name)  # immediately: the watch may not have delivered it yet
        assert "AWS_ROLE_ARN" in env_names(pod), f"pod for {name} not mutated"


def test_unknown_service_account_waits_the_grace_period_then_counts_as_missing(live: Live) -> None:
    ns = live.namespace()
    before = _metric(live.webhook.metrics(), "pod_identity_webhook_missing_sa_count")
    started = time.monotonic()
    # The ServiceAccount admission plugin requires the SA to exist; a dry run of a pod for
    # a SA the webhook never sees is not possible, so use the webhook directly.
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "x",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": ns,
            "operation": "CREATE",
            "object": simple_pod("ghost"),
        },
    }
    response = _post(live.webhook, review)
    assert time.monotonic() - started >= 4.5
    assert response["response"] == {"uid": "x", "allowed": True}
    assert _metric(live.webhook.metrics(), "pod_identity_webhook_missing_sa_count") == before + 1


def test_config_map_entries_follow_edits_and_deletion(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "cm-app")
    path = f"/api/v1/namespaces/{CONFIG_NS}/configmaps"

    def put(config: dict[str, Any]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook", "namespace": CONFIG_NS},
            "data": {"config": json.dumps(config)},
        }
        status, _ = live.cp.request("PUT", f"{path}/pod-identity-webhook", body)
        if status == 404:
            live.cp.apply(path, body)

    put({f"{ns}/cm-app": {"RoleARN": ROLE}})
    wait_until(lambda: live.mutated_role(ns, "cm-app") == ROLE, what="ConfigMap entry")
    put({f"{ns[:-3]}*/cm-app": {"RoleARN": ROLE + "-glob"}})  # exact key removed, glob added
    wait_until(lambda: live.mutated_role(ns, "cm-app") == ROLE + "-glob", what="glob entry")
    live.cp.request("DELETE", f"{path}/pod-identity-webhook")
    wait_until(
        lambda: live.mutated_role(ns, "cm-app") is None, what="entries forgotten after deletion"
    )


def test_container_credentials_identities_file_is_watched(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "pi", {"eks.amazonaws.com/role-arn": ROLE})
    wait_until(lambda: live.mutated_role(ns, "pi") == ROLE, what="web identity first")
    live.identities.write_text(
        json.dumps({"identities": [{"namespace": ns, "serviceAccount": "pi"}]})
    )

    def container_credentials() -> bool:
        pod = create_pod(live.cp, ns, simple_pod("pi"), dry_run=True)
        return (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" in env_names(pod)
            and pod["metadata"]["labels"].get("eks.amazonaws.com/pod-identity") == "enabled"
        )

    wait_until(container_credentials, what="container credentials mode")
    pod = live.pod(ns, "pi")
    volume = pod["spec"]["volumes"][0]
    assert volume["name"] == "eks-pod-identity-token"
    seconds = volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"]
    assert 79200 <= seconds <= 86400
    live.identities.write_text("")
    wait_until(lambda: live.mutated_role(ns, "pi") == ROLE, what="empty file clears the list")


def test_compose_role_arn_uses_the_account_flag(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "short", {"eks.amazonaws.com/role-arn": "just-a-name"})
    wait_until(
        lambda: live.mutated_role(ns, "short") == "arn:aws:iam::111122223333:role/just-a-name",
        what="composed ARN",
    )


def test_projected_token_verifies_against_the_api_servers_oidc_discovery(live: Live) -> None:
    cp = live.cp
    ns = live.namespace()
    cp.ensure_service_account(
        ns,
        "tok",
        {"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/token-expiration": "3600"},
    )
    wait_until(lambda: live.mutated_role(ns, "tok") == ROLE, what="SA in cache")
    source = live.pod(ns, "tok")["spec"]["volumes"][0]["projected"]["sources"][0][
        "serviceAccountToken"
    ]
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [source["audience"]],
            "expirationSeconds": source["expirationSeconds"],
        },
    }
    status, body = cp.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/tok/token", request)
    assert status == 201, body
    token = json.loads(body)["status"]["token"]
    discovery = cp.get_json("/.well-known/openid-configuration", anonymous=True)
    jwks_path = discovery["jwks_uri"].removeprefix(cp.url)
    jwks = cp.get_json(jwks_path, anonymous=True)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=discovery["issuer"],
    )
    assert claims["sub"] == f"system:serviceaccount:{ns}:tok"
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["exp"] - claims["iat"] == 3600


def test_watch_recovers_after_an_api_server_restart(live: Live) -> None:
    cp = live.cp
    ns = live.namespace()
    cp.restart_apiserver()
    cp.ensure_service_account(ns, "after-restart", {"eks.amazonaws.com/role-arn": ROLE})
    # Without the grace period's direct fetch, only the watch can deliver it: check the cache.
    wait_until(
        lambda: f"{ns}/after-restart" in _cache(live.webhook), timeout=60, what="watch resumed"
    )
    wait_until(
        lambda: live.mutated_role(ns, "after-restart") == ROLE, timeout=60, what="mutation resumed"
    )
    assert live.webhook.ready()


UPSTREAM_METRICS = (
    "http_request_count",
    "http_request_latencies",
    "http_request_duration_microseconds",
    "pod_identity_webhook_pod_count",
    "pod_identity_webhook_missing_sa_count",
    "pod_identity_webhook_used",
)


def test_upstream_metric_names_exist_on_ours(live: Live, tmp_path: Path) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "metrics", {"eks.amazonaws.com/role-arn": ROLE})

    def review(sa: str) -> dict[str, Any]:
        request = {
            "uid": sa,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": ns,
            "operation": "CREATE",
            "object": simple_pod(sa),
        }
        return {
            "apiVersion": "admission.k8s.io/v1beta1",
            "kind": "AdmissionReview",
            "request": request,
        }

    theirs = upstream(live.cp, tmp_path, name="metrics-oracle").start()
    try:
        # Exercise upstream until its informer has synced: a mutation and a missing SA.
        wait_until(
            lambda: "patch" in (_post(theirs, review("metrics")).get("response") or {}),
            what="upstream synced",
        )
        _post(theirs, review("ghost"))
        upstream_names = _names(theirs.metrics())
    finally:
        theirs.stop()
    for sa in ("metrics", "ghost"):
        _post(live.webhook, review(sa))
    ours_names = _names(live.webhook.metrics())
    for name in UPSTREAM_METRICS:
        assert name in upstream_names, f"{name} not on upstream: sample list is stale"
        assert name in ours_names, f"{name} missing from our /metrics"


def test_cache_clear_refills_service_accounts_and_the_config_map(live: Live) -> None:
    # Upstream's informer resync re-adds everything after /debug/alpha/cache/clear; we relist.
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    live.cp.ensure_service_account(ns, "cm-app")
    path = f"/api/v1/namespaces/{CONFIG_NS}/configmaps"
    live.cp.request("DELETE", f"{path}/pod-identity-webhook")
    config = {f"{ns}/cm-app": {"RoleARN": ROLE + "-cm"}}
    live.cp.apply(
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook", "namespace": CONFIG_NS},
            "data": {"config": json.dumps(config)},
        },
    )
    wait_until(lambda: live.mutated_role(ns, "cm-app") == ROLE + "-cm", what="ConfigMap entry")
    wait_until(lambda: f"{ns}/app" in _cache(live.webhook), what="SA in cache")
    try:
        url = f"http://127.0.0.1:{live.webhook.metrics_port}/debug/alpha/cache/clear"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
            assert json.loads(r.read()) == {"cleared": True, "refilling": True}
        # No pod is created meanwhile: the grace period's direct fetch would hide a missing
        # refill for ServiceAccounts (never for the ConfigMap).
        wait_until(lambda: f"{ns}/app" in _cache(live.webhook), timeout=10, what="relist")
        assert _metric(live.webhook.metrics(), "pod_identity_webhook_used") == 1
        wait_until(
            lambda: live.mutated_role(ns, "cm-app") == ROLE + "-cm",
            timeout=10,
            what="ConfigMap entries back",
        )
        assert live.mutated_role(ns, "app") == ROLE
    finally:
        live.cp.request("DELETE", f"{path}/pod-identity-webhook")


def test_a_pod_our_patch_would_break_is_stored_and_the_client_is_warned(live: Live) -> None:
    ns = live.namespace()
    live.cp.ensure_service_account(ns, "app", {"eks.amazonaws.com/role-arn": ROLE})
    wait_until(lambda: live.mutated_role(ns, "app") == ROLE, what="SA in cache")
    token_dir = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
    pod = simple_pod(
        "app",
        containers=[
            {
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "volumeMounts": [{"name": "own", "mountPath": token_dir}],
            }
        ],
        volumes=[{"name": "own", "emptyDir": {}}],
    )
    pod["metadata"]["annotations"] = {"eks.amazonaws.com/token-expiration": "9999999999"}
    req = urllib.request.Request(
        f"{live.cp.url}/api/v1/namespaces/{ns}/pods",
        data=json.dumps(pod).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    ctx = ssl.create_default_context(cafile=str(live.cp.ca_file))
    ctx.load_cert_chain(str(live.cp.admin_cert_file), str(live.cp.admin_key_file))
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        assert resp.status == 201
        stored = json.loads(resp.read())
        warnings = resp.headers.get_all("Warning") or []
    assert stored["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "own", "mountPath": token_dir}
    ]
    token = stored["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["expirationSeconds"] == 2**32
    assert len(warnings) == 2, warnings
    assert any("already mounts volume 'own'" in w for w in warnings)
    assert any("9999999999" in w for w in warnings)


# -- helpers ------------------------------------------------------------------------------


def _post(webhook: WebhookProcess, review: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cadata=webhook.ca_pem.decode())
    req = urllib.request.Request(
        webhook.url,
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


def _metric(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _cache(webhook: WebhookProcess) -> dict[str, Any]:
    """ServiceAccounts with an identity, from the opt-in debug handler."""
    url = f"http://127.0.0.1:{webhook.metrics_port}/debug/alpha/cache"
    with urllib.request.urlopen(url, timeout=5) as resp:
        accounts: dict[str, Any] = json.loads(resp.read())["serviceAccounts"]
        return accounts
