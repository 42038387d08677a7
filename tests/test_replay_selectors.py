"""`replay --webhook-config`: the API server's decision to call the webhook, before our code.

Order and semantics follow k8s.io/apiserver v0.37 `ShouldCallHook`: namespaceSelector,
objectSelector, rules, then matchConditions (CEL).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from webhook.cli import main
from webhook.toolkit.admission_match import (
    Decision,
    WebhookConfigError,
    decide,
    load_webhooks,
    parse_selector,
)

GOLDEN = Path(__file__).parent / "replay_golden"
OBJECTS = GOLDEN / "objects.yaml"


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def config(**webhook: Any) -> tuple[Any, ...]:
    entry = {
        "name": "w.example.com",
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
            }
        ],
        **webhook,
    }
    return load_webhooks([{"kind": "MutatingWebhookConfiguration", "webhooks": [entry]}], "test")


def request(
    labels: dict[str, str] | None = None, namespace: str = "ns", **fields: Any
) -> dict[str, Any]:
    pod = {"metadata": {"labels": labels or {}, "annotations": {}}, "spec": {"containers": []}}
    return {
        "operation": "CREATE",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "userInfo": {"username": "alice"},
        "object": pod,
        "oldObject": None,
        **fields,
    }


def no_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


# -- golden run ---------------------------------------------------------------------------------------


def test_golden_run_with_the_webhook_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = replay(
        capsys,
        "--objects",
        str(OBJECTS),
        "--webhook-config",
        str(GOLDEN / "webhook-config.yaml"),
        "--expect",
        str(GOLDEN / "expected" / "selected"),
        str(GOLDEN / "manifests"),
    )
    assert code == 0, err
    assert "8 of 8 matched" in err


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("pod-default-debug", "not sent to the webhook: objectSelector"),
        (
            "replicaset-legacy-old-web",
            "not sent to the webhook: namespaceSelector (namespace legacy)",
        ),
        ("pod-default-canary-", "not sent to the webhook: matchConditions (no-identity-opt-out)"),
        (
            "cronjob-shop-report",
            "not sent to the webhook: matchConditions (not-the-job-controller-for-reports)",
        ),
    ],
)
def test_golden_not_sent_reasons(key: str, reason: str) -> None:
    stored = json.loads(
        (GOLDEN / "expected" / "selected" / "workloads" / f"{key}.json").read_text()
    )
    assert stored == {"notSentToWebhook": reason}


def test_golden_sent_reviews_answer_as_without_the_flag() -> None:
    plain, selected = GOLDEN / "expected" / "plain", GOLDEN / "expected" / "selected"
    for key in (
        "deployment-shop-web",
        "statefulset-shop-db",
        "daemonset-shop-agent",
        "job-shop-migrate",
    ):
        file = Path("workloads") / f"{key}.json"
        assert (plain / file).read_bytes() == (selected / file).read_bytes()


def test_diff_output_says_not_sent(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = replay(
        capsys,
        "--objects",
        str(OBJECTS),
        "--webhook-config",
        str(GOLDEN / "webhook-config.yaml"),
        "-o",
        "diff",
        str(GOLDEN / "manifests"),
    )
    assert code == 0
    assert "# default/debug (Pod default/debug): not sent to the webhook: objectSelector\n" in out


def test_a_namespace_missing_from_objects_is_assumed_and_warned_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = tmp_path / "pods.yaml"
    manifests.write_text(
        "".join(
            f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: elsewhere}}\n"
            "spec: {containers: [{name: c, image: i}]}\n"
            for i in range(2)
        )
    )
    code, _, err = replay(
        capsys,
        "--objects",
        str(OBJECTS),
        "--webhook-config",
        str(GOLDEN / "webhook-config.yaml"),
        str(manifests),
    )
    assert code == 0
    assert err.count("namespace elsewhere is not in --objects; assumed") == 1


def test_a_file_without_a_webhook_configuration_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "cfg.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = replay(capsys, "--webhook-config", str(empty), str(GOLDEN / "manifests"))
    assert code == 2
    assert "no MutatingWebhookConfiguration with webhooks" in err


# -- label selectors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        (None, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ],
)
def test_label_selectors_match_as_kubernetes_does(
    selector: Any, labels: dict[str, str], matches: bool
) -> None:
    assert parse_selector(selector, "s").matches(labels) is matches


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "In for a needs values"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "takes no values",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
            "unknown operator 'Gt'",
        ),
    ],
)
def test_invalid_selectors_are_rejected_as_the_api_server_would(
    selector: Any, message: str
) -> None:
    with pytest.raises(WebhookConfigError, match=message):
        parse_selector(selector, "s")


def test_namespace_selector_is_checked_first() -> None:
    webhooks = config(
        namespaceSelector={"matchLabels": {"on": "yes"}},
        objectSelector={"matchLabels": {"never": "there"}},
    )
    assert decide(webhooks, request(), no_labels).reason == "namespaceSelector"
    on = decide(webhooks, request(), lambda ns: {"on": "yes"})
    assert on.reason == "objectSelector"


def test_object_selector_also_matches_the_old_object() -> None:
    webhooks = config(objectSelector={"matchLabels": {"a": "1"}})
    old = {"metadata": {"labels": {"a": "1"}}}
    assert decide(webhooks, request(oldObject=old), no_labels).sent


# -- rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "fields", "sent"),
    [
        ({"operations": ["*"], "resources": ["*"]}, {}, True),
        ({"operations": ["UPDATE"], "resources": ["pods"]}, {}, False),
        ({"operations": ["CREATE"], "resources": ["pods"]}, {"subResource": "status"}, False),
        ({"operations": ["CREATE"], "resources": ["pods/*"]}, {"subResource": "status"}, True),
        ({"operations": ["CREATE"], "resources": ["*/status"]}, {"subResource": "status"}, True),
        ({"operations": ["CREATE"], "resources": ["pods"], "scope": "Cluster"}, {}, False),
        ({"operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}, {}, True),
        ({"operations": ["CREATE"], "resources": ["deployments"]}, {}, False),
    ],
)
def test_rules_match_operation_resource_and_scope(
    rule: dict[str, Any], fields: dict[str, Any], sent: bool
) -> None:
    webhooks = config(rules=[{"apiGroups": [""], "apiVersions": ["v1"], **rule}])
    decision = decide(webhooks, request(**fields), no_labels)
    assert decision.sent is sent
    assert sent or decision.reason == "rules"


# -- matchConditions ----------------------------------------------------------------------------------


def conditions(*expressions: str, policy: str = "Fail") -> tuple[Any, ...]:
    return config(
        failurePolicy=policy,
        matchConditions=[{"name": f"c{i}", "expression": e} for i, e in enumerate(expressions)],
    )


def test_all_conditions_true_sends() -> None:
    webhooks = conditions(
        "request.userInfo.username == 'alice'", "object.spec.containers.size() == 0"
    )
    assert decide(webhooks, request(), no_labels) == Decision(True)


def test_the_first_false_condition_is_named() -> None:
    webhooks = conditions("true", "'x' in object.metadata.labels")
    assert (
        decide(webhooks, request(), no_labels).describe()
        == "not sent to the webhook: matchConditions (c1)"
    )


def test_a_false_condition_wins_over_an_error() -> None:
    webhooks = conditions("object.metadata.labels['missing'] == 'x'", "false")
    assert decide(webhooks, request(), no_labels).reason == "matchConditions"
    assert not decide(webhooks, request(), no_labels).rejected


def test_an_error_rejects_the_request_under_fail() -> None:
    decision = decide(conditions("object.metadata.labels['missing'] == 'x'"), request(), no_labels)
    assert decision.rejected
    assert decision.describe().startswith(
        "rejected by the API server: matchCondition 'c0': no such key"
    )


def test_an_error_skips_the_webhook_under_ignore() -> None:
    decision = decide(
        conditions("object.metadata.labels['missing'] == 'x'", policy="Ignore"),
        request(),
        no_labels,
    )
    assert not decision.sent and not decision.rejected
    assert decision.detail.endswith("failurePolicy Ignore")


def test_a_non_boolean_condition_is_an_error() -> None:
    decision = decide(conditions("'yes'"), request(), no_labels)
    assert decision.rejected and "is not a bool" in decision.detail


def test_the_authorizer_is_not_available_offline() -> None:
    decision = decide(
        conditions("authorizer.group('').resource('pods').check('get').allowed()"),
        request(),
        no_labels,
    )
    assert decision.rejected


def test_a_condition_that_does_not_compile_is_a_configuration_error() -> None:
    with pytest.raises(WebhookConfigError, match="matchCondition 'c0' does not compile"):
        conditions("1 +")


def test_a_v1beta1_configuration_defaults_to_ignore_as_it_did() -> None:
    entry = {
        "name": "w",
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
            }
        ],
        "matchConditions": [{"name": "broken", "expression": "object.missing == 1"}],
    }
    old = {
        "apiVersion": "admissionregistration.k8s.io/v1beta1",
        "kind": "MutatingWebhookConfiguration",
        "webhooks": [entry],
    }
    new = {**old, "apiVersion": "admissionregistration.k8s.io/v1"}
    assert not decide(load_webhooks([old], "t"), request(), no_labels).rejected
    assert decide(load_webhooks([new], "t"), request(), no_labels).rejected
