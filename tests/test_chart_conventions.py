"""Chart conventions of the field (cert-manager, Kyverno, the community chart): metadata,
parent-chart and GitOps knobs, autoscaling, rollout safety, and the `helm test` hook.

Rendering helpers come from tests/chart_render.py (which renders with --skip-tests; here the
hook is rendered too), the helm fixture from tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.builders import mutate, pod, web_identity
from tests.chart_render import (
    CHART,
    CLUSTER_SCOPED,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    Obj,
    RenderError,
    container,
    find,
    flags_of,
    one,
    render,
    render_fails,
    run_helm,
    selector_matches,
    webhook_entry,
)

TEST_NAMESPACE = f"{FULLNAME}-test"
TESTER = f"{FULLNAME}-tester"
HOOK_ANNOTATION = "helm.sh/hook"

pytestmark = pytest.mark.timeout(1800)


def render_with_tests(helm: str, *sets: str) -> list[Obj]:
    # tests.enabled=true: `helm template` leaves the hook out by default (tests.enabled null).
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "tests.enabled=true",
    ]
    for s in sets:
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    proc = run_helm(helm, *args)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def hooks(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if HOOK_ANNOTATION in (o["metadata"].get("annotations") or {})]


# --------------------------------------------------------------------------- Chart.yaml


def test_chart_yaml_carries_artifact_hub_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == ">=1.27.0-0"
    assert meta["home"].startswith("https://") and meta["icon"].startswith("https://")
    assert meta["sources"] and meta["maintainers"]
    notes = meta["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    assert notes["artifacthub.io/category"] == "security"
    # Artifact Hub reads these as YAML strings holding lists.
    changes = yaml.safe_load(notes["artifacthub.io/changes"])
    assert changes and {c["kind"] for c in changes} <= {
        "added", "changed", "deprecated", "removed", "fixed", "security"
    }  # fmt: skip
    assert all(
        link["url"].startswith("https://") for link in yaml.safe_load(notes["artifacthub.io/links"])
    )
    images = yaml.safe_load(notes["artifacthub.io/images"])
    assert images[0]["image"].endswith(f":{meta['appVersion']}")
    assert (CHART / "icon.svg").is_file()


def test_kube_version_below_the_features_used_is_refused(helm: str) -> None:
    with pytest.raises(RenderError, match="kubeVersion"):
        render(helm, kube_version="1.26.0")
    assert render(helm, kube_version="1.27.0")


# --------------------------------------------------------------------------- least privilege


def test_configmap_role_names_only_the_webhooks_configmap(helm: str) -> None:
    role = one(render(helm, "watchConfigMap.enabled=true"), "Role")
    assert [r.get("resourceNames") for r in role["rules"]] == [["pod-identity-webhook"]]


# --------------------------------------------------------------------------- knobs


def test_timeout_is_five_seconds(helm: str) -> None:
    assert webhook_entry(render(helm))["timeoutSeconds"] == 5


def test_match_conditions_reach_the_webhook(helm: str) -> None:
    condition = {
        "name": "not-openshift",
        "expression": '!request.namespace.startsWith("openshift-")',
    }
    entry = webhook_entry(render(helm, f"json:webhook.matchConditions=[{json.dumps(condition)}]"))
    assert entry["matchConditions"] == [condition]
    assert "matchConditions" not in webhook_entry(render(helm))


def test_match_conditions_need_kubernetes_1_28(helm: str) -> None:
    sets = ('json:webhook.matchConditions=[{"name":"a","expression":"true"}]',)
    with pytest.raises(RenderError, match=r"matchConditions needs Kubernetes >= 1\.28"):
        render(helm, *sets, kube_version="1.27.9")
    assert render(helm, *sets, kube_version="1.28.0")


def test_global_registry_and_pull_secrets(helm: str) -> None:
    objs = render(
        helm,
        "global.imageRegistry=mirror.example.com",
        'json:global.imagePullSecrets=["mirror", {"name": "regcred"}]',
        'json:imagePullSecrets=[{"name": "regcred"}]',
    )
    assert container(objs)["image"].startswith("mirror.example.com/pod-identity-webhook/")
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    # A repository naming its own registry still wins.
    objs = render(
        helm, "global.imageRegistry=mirror.example.com", "image.repository=reg.example.org/x/y"
    )
    assert container(objs)["image"].startswith("reg.example.org/x/y:")


def test_common_annotations_on_every_object_and_pod(helm: str) -> None:
    objs = render_with_tests(
        helm,
        "commonAnnotations.team=platform",
        "serviceAccount.annotations.team=own",
        "watchConfigMap.enabled=true",
        "prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "autoscaling.enabled=true",
    )
    for obj in objs:
        notes = obj["metadata"].get("annotations") or {}
        want = (
            "own"
            if obj["kind"] == "ServiceAccount" and obj["metadata"]["name"] == FULLNAME
            else "platform"
        )
        assert notes.get("team") == want, (obj["kind"], obj["metadata"]["name"])
    template = one(objs, "Deployment")["spec"]["template"]["metadata"]
    assert template["annotations"]["team"] == "platform"


def test_namespace_override_moves_every_namespaced_object(helm: str) -> None:
    objs = render_with_tests(helm, "namespaceOverride=identity", "watchConfigMap.enabled=true")
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED | {"Namespace"}:
            continue
        assert obj["metadata"]["namespace"] in ("identity", TEST_NAMESPACE), obj["kind"]
    assert flags_of(objs)["namespace"] == "identity"
    service = webhook_entry(objs)["clientConfig"]["service"]
    assert service["namespace"] == "identity"
    excluded = webhook_entry(objs)["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "identity" in excluded


def test_extra_objects_are_templated(helm: str) -> None:
    extra = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "{{ .Release.Name }}-extra"},
        },
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: as-string\n",
    ]
    objs = render(helm, f"json:extraObjects={json.dumps(extra)}")
    assert one(objs, "ConfigMap", f"{RELEASE}-extra")
    assert one(objs, "Secret", "as-string")


def test_extra_containers_and_no_service_links(helm: str) -> None:
    sidecar = {"name": "shipper", "image": "example.com/shipper:1", "args": ["{{ .Release.Name }}"]}
    spec = one(render(helm, f"json:extraContainers=[{json.dumps(sidecar)}]"), "Deployment")
    pod_spec = spec["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["containers"]] == ["webhook", "shipper"]
    assert pod_spec["containers"][1]["args"] == [RELEASE]
    assert pod_spec["enableServiceLinks"] is False


def test_numeric_account_id_keeps_twelve_digits(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("config:\n  composeRoleArn: true\n  awsAccountId: 111122223333\n")
    proc = run_helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values))
    assert proc.returncode == 0, proc.stderr
    assert '"--aws-account-id=111122223333"' in proc.stdout
    # --set types it as an integer; leading zeros come back.
    objs = render(helm, "config.composeRoleArn=true", "config.awsAccountId=12345678901")
    assert flags_of(objs)["aws-account-id"] == "012345678901"


# --------------------------------------------------------------------------- scaling and rollouts


def test_autoscaling_owns_replicas_and_scales_on_cpu(helm: str) -> None:
    objs = render(helm, "autoscaling.enabled=true", "autoscaling.maxReplicas=8")
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(objs, "Deployment")["spec"]
    assert find(render(helm), "HorizontalPodAutoscaler") == []


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("autoscaling.minReplicas=1",), "must exceed podDisruptionBudget.minAvailable"),
        (("autoscaling.minReplicas=5", "autoscaling.maxReplicas=3"), "must not exceed"),
        (("resources.requests=null",), "needs resources.requests.cpu"),
    ],
)
def test_autoscaling_refuses_settings_that_break_drains_or_scaling(
    helm: str,
    sets: tuple[str, ...],
    message: str,
) -> None:
    assert message in render_fails(helm, "autoscaling.enabled=true", *sets)


def test_hard_anti_affinity_rolls_one_pod_at_a_time(helm: str) -> None:
    soft = one(render(helm), "Deployment")["spec"]["strategy"]
    assert soft == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    hard = one(render(helm, "podAntiAffinity=hard"), "Deployment")["spec"]["strategy"]
    # A surge pod would need a node without a replica; taking one down first always works.
    assert hard == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}


@pytest.mark.parametrize(
    "strategy",
    [
        {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        {"type": "RollingUpdate"},  # the API's 25% rounds down to 0
        {"rollingUpdate": {"maxUnavailable": "0%"}},
    ],
)
def test_hard_anti_affinity_with_no_unavailable_pod_fails_with_a_fix(
    helm: str,
    strategy: Obj,
) -> None:
    message = render_fails(
        helm, "podAntiAffinity=hard", f"json:deployment.strategy={json.dumps(strategy)}"
    )
    assert "deadlocks a rollout" in message and "maxUnavailable" in message


def test_hard_anti_affinity_accepts_a_strategy_that_completes(helm: str) -> None:
    for strategy in ({"rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}, {"type": "Recreate"}):
        objs = render(
            helm, "podAntiAffinity=hard", f"json:deployment.strategy={json.dumps(strategy)}"
        )
        assert one(objs, "Deployment")["spec"]["strategy"] == strategy


# --------------------------------------------------------------------------- helm test


def test_helm_test_hook_objects_and_their_scope(helm: str) -> None:
    objs = render_with_tests(helm)
    hook_objs = hooks(objs)
    assert {(o["kind"], o["metadata"]["name"]) for o in hook_objs} == {
        ("Namespace", TEST_NAMESPACE),
        ("ServiceAccount", "annotated"),
        ("ServiceAccount", TESTER),
        ("Role", TESTER),
        ("RoleBinding", TESTER),
        ("ConfigMap", TESTER),
        ("Pod", TESTER),
    }
    for obj in hook_objs:
        notes = obj["metadata"]["annotations"]
        assert notes[HOOK_ANNOTATION] == "test"
        assert notes["helm.sh/hook-delete-policy"] == (
            "before-hook-creation,hook-succeeded,hook-failed"
        )
    # The tester may create pods in the test namespace, nothing else anywhere.
    role = one(hook_objs, "Role")
    assert role["metadata"]["namespace"] == TEST_NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    binding = one(hook_objs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": TESTER, "namespace": NAMESPACE}
    ]
    annotated = one(hook_objs, "ServiceAccount", "annotated")
    assert annotated["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    # Created before the pod that uses them.
    weights = {
        o["kind"]: int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
        for o in hook_objs
    }
    assert weights["Namespace"] < weights["ServiceAccount"] < weights["Pod"]


def test_helm_test_pod_runs_the_webhook_image_and_is_no_endpoint(helm: str) -> None:
    objs = render_with_tests(helm, "hostNetwork=true")
    test_pod = one(hooks(objs), "Pod")
    spec = test_pod["spec"]
    assert spec["containers"][0]["image"] == container(objs)["image"]
    assert spec["containers"][0]["command"] == ["python3", "/piw-test/helm_test.py"]
    assert spec["hostNetwork"] is True and spec["restartPolicy"] == "Never"
    labels = test_pod["metadata"]["labels"]
    assert not selector_matches({"matchLabels": one(objs, "Service")["spec"]["selector"]}, labels)
    assert not selector_matches(one(objs, "PodDisruptionBudget")["spec"]["selector"], labels)
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["PIW_TEST_NAMESPACE"] == TEST_NAMESPACE
    script = one(hooks(objs), "ConfigMap")["data"]["helm_test.py"]
    assert script == (CHART / "files" / "helm_test.py").read_text()


def test_helm_test_namespace_carries_the_opt_in_labels(helm: str) -> None:
    objs = render_with_tests(helm, "webhook.namespaceSelector.matchLabels.irsa=enabled")
    namespace = one(hooks(objs), "Namespace")
    selector = webhook_entry(objs)["namespaceSelector"]
    labels = {**namespace["metadata"]["labels"], "kubernetes.io/metadata.name": TEST_NAMESPACE}
    assert selector_matches(selector, labels)


def test_helm_test_can_be_turned_off(helm: str) -> None:
    assert hooks(render_with_tests(helm, "tests.enabled=false")) == []


def _helm_test_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_test", CHART / "files" / "helm_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WANT = {
    "role_arn": "arn:aws:iam::111122223333:role/app",
    "mount_path": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
    "audience": "sts.amazonaws.com",
}


def test_helm_test_check_accepts_what_the_webhook_injects() -> None:
    mutated: Any = mutate(pod(), web_identity())
    assert _helm_test_module().problems(mutated, WANT) == []


def test_helm_test_check_names_what_is_missing() -> None:
    found = _helm_test_module().problems(pod(), WANT)
    assert len(found) == 4
    assert any("AWS_ROLE_ARN" in f for f in found) and any("audience" in f for f in found)
