"""`pod-identity-webhook audit`: inventory, findings, un-injected pods, owners, restarts.

The analysis is pure and runs on crafted API objects; injected pods are produced by the real
mutation (`plan_mutation`), so "injected" means exactly what the webhook does. The cluster layer
runs against a fake KubeClient recording requests; the CLI against a fake cluster.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.builders import container, mutate, web_identity
from webhook.cli import main
from webhook.core.settings import MutationSettings, RoleArnComposition
from webhook.sources.kube_client import KubeAPIError
from webhook.toolkit import audit_cluster
from webhook.toolkit.audit import (
    AuditReport,
    Owner,
    audit,
    build_inventory,
    find_gaps,
    missing_injection,
    owner_lookups,
    render_csv,
    render_table,
    restart_patch,
    restart_plan,
    rfc3339,
)
from webhook.toolkit.audit_cluster import ApiError, Cluster, ClusterError

ROLE_A = "arn:aws:iam::111122223333:role/team/app-a"
ROLE_B = "arn:aws:iam::111122223333:role/app-b"
SETTINGS = MutationSettings()
RS_UID, DEP_UID = "uid-rs", "uid-dep"


# --- builders ---------------------------------------------------------------------------------


def sa(namespace: str, name: str, role: str | None = None, **extra: str) -> dict[str, Any]:
    annotations = {f"eks.amazonaws.com/{k.replace('_', '-')}": v for k, v in extra.items()}
    if role is not None:
        annotations["eks.amazonaws.com/role-arn"] = role
    meta: dict[str, Any] = {"namespace": namespace, "name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def config_map(entries: dict[str, Any], namespace: str = "eks") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": namespace, "name": "pod-identity-webhook"},
        "data": {"config": json.dumps(entries)},
    }


def ref(kind: str, name: str, api_version: str = "apps/v1", controller: bool = True) -> Any:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"uid-{name}",
        "controller": controller,
    }


def pod(
    name: str,
    namespace: str = "shop",
    service_account: str = "app",
    *,
    owner: dict[str, Any] | None = None,
    containers: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if owner is not None:
        meta["ownerReferences"] = [owner]
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "serviceAccountName": service_account,
            "containers": containers or [container()],
            **spec,
        },
        "status": {"phase": phase},
    }


def injected(p: dict[str, Any], role: str = ROLE_A) -> dict[str, Any]:
    """The pod as our webhook admits it for a ServiceAccount with `role`."""
    return mutate(p, web_identity(role_arn=role))


def replica_set(name: str, deployment: str | None, namespace: str = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if deployment:
        meta["ownerReferences"] = [ref("Deployment", deployment)]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta}


def job(name: str, cron_job: str | None, namespace: str = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if cron_job:
        meta["ownerReferences"] = [ref("CronJob", cron_job, "batch/v1")]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}


def codes(report: AuditReport) -> list[tuple[str, str | None]]:
    return [(f.code, f.where) for f in report.findings]


# --- inventory --------------------------------------------------------------------------------


def test_inventory_from_annotations_with_audience_and_expiration() -> None:
    report = audit(
        [
            sa("shop", "app", ROLE_A, audience="sts.example.com", token_expiration="3600"),
            sa("shop", "plain"),
            sa("ops", "tool", ROLE_B, token_expiration="60"),  # clamped to 600, as the webhook
        ],
        [],
        SETTINGS,
    )
    assert report.inventory_rows() == [
        {
            "namespace": "ops",
            "serviceAccount": "tool",
            "roleName": "app-b",
            "roleArn": ROLE_B,
            "audience": "sts.amazonaws.com",
            "expiration": 600,
            "source": "annotation",
            "podsNotInjected": 0,
        },
        {
            "namespace": "shop",
            "serviceAccount": "app",
            "roleName": "app-a",  # last path segment of role/team/app-a
            "roleArn": ROLE_A,
            "audience": "sts.example.com",
            "expiration": 3600,
            "source": "annotation",
            "podsNotInjected": 0,
        },
    ]
    assert report.findings == ()
    assert report.exit_code == 0


def test_inventory_follows_flags_prefix_audience_and_composition() -> None:
    settings = MutationSettings(
        annotation_prefix="example.org",
        token_audience="aud.example.org",
        token_expiration=7200,
        compose_role_arn=RoleArnComposition("444455556666", "aws-cn"),
    )
    accounts = [
        {
            "metadata": {
                "namespace": "a",
                "name": "composed",
                "annotations": {"example.org/role-arn": "just-a-name"},
            }
        },
        sa("a", "other-prefix", ROLE_A),  # eks.amazonaws.com/ is not this webhook's prefix
    ]
    [row] = audit(accounts, [], settings).inventory_rows()
    assert row["roleArn"] == "arn:aws-cn:iam::444455556666:role/just-a-name"
    assert (row["audience"], row["expiration"], row["roleName"]) == (
        "aud.example.org",
        7200,
        "just-a-name",
    )


def test_inventory_from_configmap_with_glob_keys_and_annotation_precedence() -> None:
    cm = config_map(
        {
            "shop/worker": {"RoleARN": ROLE_B, "Audience": "cm-aud", "TokenExpiration": 1200},
            "team-*/builder": {"RoleARN": ROLE_B},
            "shop/app": {"RoleARN": ROLE_B},  # shadowed by app's annotation
            "gone/ghost": {"RoleARN": ROLE_B},  # no such ServiceAccount
        }
    )
    accounts = [
        sa("shop", "app", ROLE_A),
        sa("shop", "worker"),
        sa("team-blue", "builder"),
        sa("other", "builder"),  # glob does not match
    ]
    report = audit(accounts, [], SETTINGS, config_map=cm, config_map_expected=True)
    rows = {(r["namespace"], r["serviceAccount"]): r for r in report.inventory_rows()}
    assert set(rows) == {("shop", "app"), ("shop", "worker"), ("team-blue", "builder")}
    assert rows[("shop", "app")]["source"] == "annotation"
    assert rows[("shop", "worker")] == {
        "namespace": "shop",
        "serviceAccount": "worker",
        "roleName": "app-b",
        "roleArn": ROLE_B,
        "audience": "cm-aud",
        "expiration": 1200,
        "source": "configmap",
        "podsNotInjected": 0,
    }
    assert rows[("team-blue", "builder")]["source"] == "configmap"
    assert ("configmap-shadowed", "shop/app") in codes(report)
    assert ("configmap-unused", "configmap eks/pod-identity-webhook") in codes(report)
    # worker and builder share ROLE_B
    [shared] = [f for f in report.findings if f.code == "shared-role"]
    assert shared.severity.value == "warning"
    assert "shop/worker" in shared.message and "team-blue/builder" in shared.message
    assert report.exit_code == 0  # warnings and info only


def test_configmap_is_ignored_without_watch_and_reported_when_missing_or_invalid() -> None:
    accounts = [sa("shop", "worker")]
    assert audit(accounts, [], SETTINGS).assignments == ()
    missing = audit(accounts, [], SETTINGS, config_map=None, config_map_expected=True)
    assert [f.code for f in missing.findings] == ["configmap-missing"]
    assert missing.exit_code == 0
    broken = {
        "metadata": {"namespace": "eks", "name": "pod-identity-webhook"},
        "data": {"config": "{not json"},
    }
    invalid = audit(accounts, [], SETTINGS, config_map=broken, config_map_expected=True)
    assert [(f.code, f.severity.value) for f in invalid.findings] == [
        ("configmap-invalid", "error")
    ]
    assert invalid.exit_code == 1
    bad_key = audit(accounts, [], SETTINGS, config_map=config_map({"nokey": {"RoleARN": ROLE_A}}))
    assert [f.code for f in bad_key.findings] == ["configmap-key"]


def test_unused_configmap_entries_only_in_audited_namespaces() -> None:
    cm = config_map({"gone/ghost": {"RoleARN": ROLE_B}})
    assert [f.code for f in audit([], [], SETTINGS, config_map=cm).findings] == ["configmap-unused"]
    assert audit([], [], SETTINGS, config_map=cm, namespaces={"shop"}).findings == ()


def test_invalid_role_arn_is_an_error() -> None:
    report = audit(
        [sa("shop", "app", "arn:aws:iam::12345:role/short-account"), sa("shop", "ok", ROLE_A)],
        [],
        SETTINGS,
    )
    [finding] = report.findings
    assert (finding.code, finding.where, finding.severity.value) == (
        "invalid-role-arn",
        "shop/app",
        "error",
    )
    assert "annotation" in finding.message
    assert report.exit_code == 1


def test_shared_role_lists_every_service_account() -> None:
    report = audit(
        [sa("a", "one", ROLE_A), sa("b", "two", ROLE_A), sa("c", "three", ROLE_A)], [], SETTINGS
    )
    [finding] = report.findings
    assert (finding.code, finding.where) == ("shared-role", ROLE_A)
    assert "3 ServiceAccounts: a/one, b/two, c/three" in finding.message
    assert report.exit_code == 0


def test_container_credentials_service_accounts_are_in_the_inventory() -> None:
    report = audit(
        [sa("shop", "app", ROLE_A), sa("shop", "pi")],
        [],
        SETTINGS,
        container_credentials={("shop", "app"), ("shop", "pi")},
    )
    rows = report.inventory_rows()
    assert [(r["serviceAccount"], r["source"], r["roleArn"]) for r in rows] == [
        ("app", "container-credentials", ""),
        ("pi", "container-credentials", ""),
    ]
    assert rows[0]["audience"] == "pods.eks.amazonaws.com"


# --- un-injected pods -------------------------------------------------------------------------


def gaps_of(*pods: dict[str, Any], accounts: list[dict[str, Any]] | None = None) -> Any:
    inventory = build_inventory(accounts or [sa("shop", "app", ROLE_A)], SETTINGS)
    return find_gaps(pods, inventory, SETTINGS)


def test_pod_created_before_the_role_is_reported_injected_pod_is_not() -> None:
    before = pod("before")
    after = injected(pod("after"))
    gaps = gaps_of(before, after)
    assert [g.name for g in gaps.not_injected] == ["before"]
    assert gaps.not_injected[0].missing == (
        "volume aws-iam-token",
        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in container app",
    )
    assert gaps.role_changed == ()
    assert gaps.pods_checked == 2


def test_missing_env_only_or_volume_only() -> None:
    full = injected(pod("p", containers=[container("a"), container("b")]))
    no_volume = json.loads(json.dumps(full))
    no_volume["spec"]["volumes"] = [
        v for v in no_volume["spec"]["volumes"] if v["name"] != "aws-iam-token"
    ]
    no_env_b = json.loads(json.dumps(full))
    no_env_b["spec"]["containers"][1]["env"] = []
    assert missing_injection(full, SETTINGS) == []
    assert missing_injection(no_volume, SETTINGS) == ["volume aws-iam-token"]
    assert missing_injection(no_env_b, SETTINGS) == [
        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in container b"
    ]
    assert [g.name for g in gaps_of(no_volume).not_injected] == ["p"]
    assert [g.name for g in gaps_of(no_env_b).not_injected] == ["p"]


def test_init_containers_count_and_either_variable_is_enough() -> None:
    # As the webhook: a container with one variable of the pair is left alone.
    p = pod(
        "p",
        containers=[container("app", env=[{"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "x"}])],
        initContainers=[container("init")],
        volumes=[{"name": "aws-iam-token", "projected": {"sources": []}}],
    )
    assert missing_injection(p, SETTINGS) == [
        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in init container init"
    ]
    assert missing_injection(injected(pod("q", initContainers=[container("i")])), SETTINGS) == []


def test_skip_containers_annotation_is_honoured() -> None:
    annotations = {"eks.amazonaws.com/skip-containers": "sidecar,other"}
    raw = pod("p", containers=[container("app"), container("sidecar")], annotations=annotations)
    mutated = injected(raw)
    assert "env" not in mutated["spec"]["containers"][1]  # the webhook skipped it too
    assert gaps_of(mutated).not_injected == ()
    [gap] = gaps_of(raw).not_injected
    assert gap.missing == (
        "volume aws-iam-token",
        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in container app",
    )
    # Every container skipped: only the volume matters.
    all_skipped = pod("s", annotations={"eks.amazonaws.com/skip-containers": "app"})
    assert missing_injection(all_skipped, SETTINGS) == ["volume aws-iam-token"]


def test_completed_terminating_and_role_less_pods_are_ignored() -> None:
    gaps = gaps_of(
        pod("done", phase="Succeeded"),
        pod("failed", phase="Failed"),
        pod("pending", phase="Pending"),
        {**pod("leaving"), "metadata": {**pod("leaving")["metadata"], "deletionTimestamp": "x"}},
        pod("plain", service_account="plain"),
        pod("elsewhere", namespace="other"),  # shop/app has the role, other/app does not
        accounts=[sa("shop", "app", ROLE_A), sa("shop", "plain")],
    )
    assert [g.name for g in gaps.not_injected] == ["pending"]
    assert gaps.pods_checked == 1


def test_default_service_account_when_spec_names_none() -> None:
    p = pod("p")
    del p["spec"]["serviceAccountName"]
    gaps = gaps_of(p, accounts=[sa("shop", "default", ROLE_A)])
    assert [(g.name, g.service_account) for g in gaps.not_injected] == [("p", "default")]


def test_eks_pod_identity_injection() -> None:
    cc = {"name": "eks-pod-identity-token", "projected": {"sources": []}}
    cc_env = [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1"}]
    cc_pod = pod("cc", containers=[container(env=cc_env)], volumes=[cc])
    accounts = [sa("shop", "app", ROLE_A)]
    # Unknown which ServiceAccounts use EKS Pod Identity: a pod injected that way is fine.
    assert gaps_of(cc_pod, accounts=accounts).not_injected == ()
    # Known (file given) and shop/app is not among them: it lacks its IRSA role.
    inventory = build_inventory(accounts, SETTINGS, container_credentials=set())
    assert [g.name for g in find_gaps([cc_pod], inventory, SETTINGS).not_injected] == ["cc"]
    # shop/app uses EKS Pod Identity: the IRSA injection is the wrong one.
    inventory = build_inventory(accounts, SETTINGS, container_credentials={("shop", "app")})
    gaps = find_gaps([cc_pod, injected(pod("irsa"))], inventory, SETTINGS)
    assert [(g.name, g.missing) for g in gaps.not_injected] == [
        (
            "irsa",
            (
                "volume eks-pod-identity-token",
                "env AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE/AWS_CONTAINER_CREDENTIALS_FULL_URI"
                " in container app",
            ),
        )
    ]


def test_role_changed_after_the_pod_started_is_a_warning() -> None:
    old = injected(pod("old", owner=ref("StatefulSet", "db")), role=ROLE_B)
    report = audit([sa("shop", "app", ROLE_A)], [old, injected(pod("new"))], SETTINGS)
    assert report.not_injected == ()
    [workload] = report.role_changed
    assert workload.owner == Owner("shop", "StatefulSet", "db", "apps/v1")
    assert workload.pods[0].current_role == ROLE_B
    [finding] = report.findings
    assert (finding.code, finding.severity.value) == ("role-changed", "warning")
    assert f"{ROLE_B} -> {ROLE_A}" in finding.message
    assert report.exit_code == 0
    assert report.restart_plan().restart == ()  # not restarted by --restart


# --- owners -----------------------------------------------------------------------------------


def test_pods_are_grouped_by_owner() -> None:
    pods = [
        pod("web-1", owner=ref("ReplicaSet", "web-abc")),
        pod("web-2", owner=ref("ReplicaSet", "web-abc")),
        pod("web-3", owner=ref("ReplicaSet", "web-old")),  # mid-rollout: two ReplicaSets
        pod("db-0", owner=ref("StatefulSet", "db")),
        pod("agent-x", owner=ref("DaemonSet", "agent")),
        pod("batch-1", owner=ref("Job", "batch", "batch/v1")),
        pod("nightly-1", owner=ref("Job", "nightly-290", "batch/v1")),
        pod("lonely"),
        pod("adopted", owner=ref("ReplicaSet", "loose")),  # ReplicaSet without Deployment
        pod("gone", owner=ref("ReplicaSet", "deleted")),  # ReplicaSet not found
        pod("rollout", owner=ref("ReplicaSet", "canary")),
        pod("weak", owner=ref("StatefulSet", "x", controller=False)),  # not a controller ref
    ]
    lookups = owner_lookups(gaps_of(*pods).not_injected)
    assert lookups == {
        ("shop", "ReplicaSet", n) for n in ("web-abc", "web-old", "loose", "deleted", "canary")
    } | {("shop", "Job", "batch"), ("shop", "Job", "nightly-290")}
    rollout_rs = replica_set("canary", None)
    rollout_rs["metadata"]["ownerReferences"] = [ref("Rollout", "canary", "argoproj.io/v1alpha1")]
    owners = {
        ("shop", "ReplicaSet", "web-abc"): replica_set("web-abc", "web"),
        ("shop", "ReplicaSet", "web-old"): replica_set("web-old", "web"),
        ("shop", "ReplicaSet", "loose"): replica_set("loose", None),
        ("shop", "ReplicaSet", "deleted"): None,
        ("shop", "ReplicaSet", "canary"): rollout_rs,
        ("shop", "Job", "batch"): job("batch", None),
        ("shop", "Job", "nightly-290"): job("nightly-290", "nightly"),
    }
    report = audit([sa("shop", "app", ROLE_A)], pods, SETTINGS, owners=owners)
    groups = {w.owner.label: [p.name for p in w.pods] for w in report.not_injected}
    assert groups == {
        "Deployment/web": ["web-1", "web-2", "web-3"],
        "StatefulSet/db": ["db-0"],
        "DaemonSet/agent": ["agent-x"],
        "Job/batch": ["batch-1"],
        "CronJob/nightly": ["nightly-1"],
        "bare pod lonely": ["lonely"],
        "bare pod weak": ["weak"],
        "ReplicaSet/loose": ["adopted"],
        "ReplicaSet/deleted": ["gone"],
        "Rollout/canary": ["rollout"],
    }
    web = next(w for w in report.not_injected if w.owner.kind == "Deployment")
    assert [p.controller_label for p in web.pods] == [
        "ReplicaSet/web-abc",
        "ReplicaSet/web-abc",
        "ReplicaSet/web-old",
    ]
    assert report.exit_code == 1
    not_injected = [f for f in report.findings if f.code == "not-injected"]
    assert len(not_injected) == len(groups)
    assert all(f.severity.value == "error" for f in not_injected)
    dep = next(f for f in not_injected if f.where == "shop/Deployment/web")
    assert "3 running pod(s) of Deployment/web" in dep.message
    assert "kubectl rollout restart -n shop deployment/web" in dep.message
    bare = next(f for f in not_injected if f.where == "shop/Pod/lonely")
    assert "delete and recreate" in bare.message


def test_restart_plan_separates_rollable_workloads() -> None:
    pods = [
        pod("web-1", owner=ref("ReplicaSet", "web-abc")),
        pod("db-0", owner=ref("StatefulSet", "db")),
        pod("agent-x", owner=ref("DaemonSet", "agent")),
        pod("batch-1", owner=ref("Job", "batch", "batch/v1")),
        pod("nightly-1", owner=ref("Job", "nightly-290", "batch/v1")),
        pod("lonely"),
        pod("custom", owner=ref("StatefulSet", "kruise", "apps.kruise.io/v1beta1")),
    ]
    owners = {
        ("shop", "ReplicaSet", "web-abc"): replica_set("web-abc", "web"),
        ("shop", "Job", "batch"): job("batch", None),
        ("shop", "Job", "nightly-290"): job("nightly-290", "nightly"),
    }
    plan = audit([sa("shop", "app", ROLE_A)], pods, SETTINGS, owners=owners).restart_plan()
    assert plan.restart == (
        Owner("shop", "DaemonSet", "agent", "apps/v1"),
        Owner("shop", "Deployment", "web", "apps/v1"),
        Owner("shop", "StatefulSet", "db", "apps/v1"),
    )
    manual = {o.label: remedy for o, remedy in plan.manual}
    assert set(manual) == {"Job/batch", "CronJob/nightly", "bare pod lonely", "StatefulSet/kruise"}
    assert "Job cannot be restarted" in manual["Job/batch"]
    assert "kubectl create job --from=cronjob/nightly" in manual["CronJob/nightly"]
    assert "delete and recreate" in manual["bare pod lonely"]
    assert restart_plan([]).restart == ()
    assert plan.to_dict()["restart"] == [
        {
            "namespace": "shop",
            "kind": "DaemonSet",
            "name": "agent",
            "apiVersion": "apps/v1",
        },
        *[o.to_dict() for o in plan.restart[1:]],
    ]


def test_restart_patch_is_kubectls() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    assert restart_patch(moment) == {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-03-04T05:06:07Z"}
                }
            }
        }
    }
    paris = datetime(2026, 3, 4, 6, 6, 7, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(paris) == "2026-03-04T06:06:07+01:00"


# --- output -----------------------------------------------------------------------------------


def sample_report() -> AuditReport:
    return audit(
        [sa("shop", "app", ROLE_A), sa("shop", "worker", "not-an-arn"), sa("shop", "plain")],
        [
            pod("web-1", owner=ref("ReplicaSet", "web-abc")),
            injected(pod("web-2", owner=ref("ReplicaSet", "web-abc"))),
        ],
        SETTINGS,
        owners={("shop", "ReplicaSet", "web-abc"): replica_set("web-abc", "web")},
    )


def test_json_document() -> None:
    document = json.loads(json.dumps(sample_report().to_dict()))
    assert document["ok"] is False
    assert [r["serviceAccount"] for r in document["inventory"]] == ["app", "worker"]
    assert document["inventory"][0]["podsNotInjected"] == 1
    assert document["notInjected"] == [
        {
            "namespace": "shop",
            "kind": "Deployment",
            "name": "web",
            "apiVersion": "apps/v1",
            "restartable": True,
            "pods": [
                {
                    "name": "web-1",
                    "serviceAccount": "app",
                    "roleArn": ROLE_A,
                    "created": "2026-01-01T00:00:00Z",
                    "controller": "ReplicaSet/web-abc",
                    "missing": [
                        "volume aws-iam-token",
                        "env AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE in container app",
                    ],
                }
            ],
        }
    ]
    assert document["restartPlan"]["restart"][0]["name"] == "web"
    assert document["podsChecked"] == 2
    assert document["summary"] == {"error": 2, "warning": 0, "info": 0}
    assert {f["code"] for f in document["findings"]} == {"invalid-role-arn", "not-injected"}


def test_table_is_narrow_and_wide_adds_arn_audience_expiration_and_pods() -> None:
    report = sample_report()
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0] == "ServiceAccounts with a role: 2"
    assert lines[1].split() == ["NAMESPACE", "SERVICEACCOUNT", "ROLE", "SOURCE", "NOT", "INJECTED"]
    assert lines[2].split() == ["shop", "app", "app-a", "annotation", "1"]
    assert "Running pods without their role: 1 in 1 workload(s)" in table
    assert lines[-1].split() == ["shop", "Deployment/web", "1", "app", "rollout", "restart"]
    assert all(line == line.rstrip() for line in lines)

    wide = render_table(report, wide=True).splitlines()
    assert wide[1].split() == [
        "NAMESPACE",
        "SERVICEACCOUNT",
        "ROLE",
        "ROLE",
        "ARN",
        "AUDIENCE",
        "EXPIRATION",
        "SOURCE",
        "NOT",
        "INJECTED",
    ]
    assert wide[2].split() == [
        "shop",
        "app",
        "app-a",
        ROLE_A,
        "sts.amazonaws.com",
        "86400",
        "annotation",
        "1",
    ]
    gap = report.not_injected[0]
    assert wide[-1].split()[:7] == [
        "shop",
        "Deployment/web",
        "1",
        "app",
        "rollout",
        "restart",
        ",".join(p.name for p in gap.pods),
    ]
    assert wide[-1].endswith("; ".join(sorted({m for p in gap.pods for m in p.missing})))
    assert all(line == line.rstrip() for line in wide)


def test_csv_has_every_inventory_column() -> None:
    report = sample_report()

    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [r["serviceAccount"] for r in rows] == ["app", "worker"]
    assert rows[0]["roleArn"] == ROLE_A and rows[0]["podsNotInjected"] == "1"
    assert rows[1]["roleName"] == "not-an-arn"


def test_empty_report() -> None:
    report = audit([], [], SETTINGS)
    assert report.exit_code == 0
    assert render_table(report).splitlines()[0] == "ServiceAccounts with a role: 0"
    assert render_csv(report).splitlines() == [
        "namespace,serviceAccount,roleName,roleArn,audience,expiration,source,podsNotInjected"
    ]


# --- cluster layer, against a fake KubeClient -------------------------------------------------


class FakeKube:
    """KubeClient's request_json over a dict of path -> object (or list of pages)."""

    class _Limiter:
        def wait(self) -> None:
            pass

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str, list[tuple[str, str]], Any, str]] = []
        self.limiter = self._Limiter()
        self.api = type("Api", (), {"configuration": type("C", (), {"host": "https://k"})()})()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def request_json(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        query = query or []
        self.calls.append((method, path, query, body, content_type))
        if method == "PATCH":
            return self.objects.get(path) or {}
        value = self.objects.get(path)
        if isinstance(value, Exception):
            raise value
        if value is None:
            raise KubeAPIError(404, f'GET {path}: HTTP 404: {{"message": "not found"}}')
        if isinstance(value, list):  # pages, selected by the continue token
            token = dict(query).get("continue", "0")
            return value[int(token)]
        return value


def listing(items: list[dict[str, Any]], next_page: str = "") -> dict[str, Any]:
    return {"items": items, "metadata": {"continue": next_page}}


def cluster_with(objects: dict[str, Any]) -> tuple[Cluster, FakeKube]:
    fake = FakeKube(objects)
    return Cluster(fake, timeout=5.0), fake  # type: ignore[arg-type]


def test_collect_paginates_and_filters_running_pods() -> None:
    cluster, fake = cluster_with(
        {
            "/api/v1/serviceaccounts": [
                listing([sa("shop", "app", ROLE_A)], "1"),
                listing([sa("shop", "b")]),
            ],
            "/api/v1/pods": listing([pod("p")]),
            "/api/v1/namespaces/eks/configmaps/pod-identity-webhook": config_map({}),
        }
    )
    snapshot = audit_cluster.collect(cluster, config_map_namespace="eks")
    assert [s["metadata"]["name"] for s in snapshot.service_accounts] == ["app", "b"]
    assert snapshot.config_map is not None
    pod_call = next(c for c in fake.calls if c[1] == "/api/v1/pods")
    assert ("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed") in pod_call[2]
    assert ("limit", "500") in pod_call[2]
    sa_queries = [c[2] for c in fake.calls if c[1] == "/api/v1/serviceaccounts"]
    assert sa_queries == [[("limit", "500")], [("limit", "500"), ("continue", "1")]]


def test_collect_per_namespace_and_missing_configmap() -> None:
    cluster, fake = cluster_with(
        {
            "/api/v1/namespaces/a/serviceaccounts": listing([]),
            "/api/v1/namespaces/a/pods": listing([]),
            "/api/v1/namespaces/b/serviceaccounts": listing([]),
            "/api/v1/namespaces/b/pods": listing([]),
        }
    )
    snapshot = audit_cluster.collect(cluster, namespaces=["a", "b", "a"], config_map_namespace="x")
    assert snapshot.config_map is None
    assert [c[1] for c in fake.calls] == [
        "/api/v1/namespaces/a/serviceaccounts",
        "/api/v1/namespaces/a/pods",
        "/api/v1/namespaces/b/serviceaccounts",
        "/api/v1/namespaces/b/pods",
        "/api/v1/namespaces/x/configmaps/pod-identity-webhook",
    ]


def test_expired_continue_token_relists_once() -> None:
    expired = KubeAPIError(410, 'GET /p: HTTP 410: {"message": "continue expired"}')
    calls = {"n": 0}

    class Flaky(FakeKube):
        def request_json(self, method: str, path: str, query: Any = None, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if dict(query or []).get("continue") and calls["n"] == 2:
                raise expired
            return super().request_json(method, path, query, *a, **k)

    fake = Flaky({"/p": [listing([{"n": 1}], "1"), listing([{"n": 2}])]})
    assert Cluster(fake).list_all("/p") == [{"n": 1}, {"n": 2}]  # type: ignore[arg-type]
    assert calls["n"] == 4


def test_errors_become_one_line() -> None:
    cluster, _ = cluster_with(
        {
            "/forbidden": KubeAPIError(
                403, 'GET /forbidden: HTTP 403: {"kind":"Status","message":"pods is forbidden"}'
            ),
            "/down": ConnectionRefusedError(111, "Connection refused"),
        }
    )
    with pytest.raises(ApiError) as forbidden:
        cluster.request("GET", "/forbidden")
    assert forbidden.value.status == 403
    assert str(forbidden.value) == "GET /forbidden: HTTP 403: pods is forbidden"
    with pytest.raises(ClusterError, match=r"^cannot reach the Kubernetes API at https://k: "):
        cluster.request("GET", "/down")
    assert cluster.get_optional("/missing") is None


def test_run_audit_fetches_only_the_owners_it_needs() -> None:
    cluster, fake = cluster_with(
        {
            "/api/v1/serviceaccounts": listing([sa("shop", "app", ROLE_A)]),
            "/api/v1/pods": listing(
                [
                    pod("web-1", owner=ref("ReplicaSet", "web-abc")),
                    pod("web-2", owner=ref("ReplicaSet", "web-abc")),
                    injected(pod("ok", owner=ref("ReplicaSet", "fine"))),
                    pod("job-1", owner=ref("Job", "j", "batch/v1")),
                ]
            ),
            "/apis/apps/v1/namespaces/shop/replicasets/web-abc": replica_set("web-abc", "web"),
            "/apis/batch/v1/namespaces/shop/jobs/j": job("j", "cron"),
        }
    )
    report = audit_cluster.run_audit(cluster, SETTINGS)
    assert [w.owner.label for w in report.not_injected] == ["CronJob/cron", "Deployment/web"]
    gets = [c[1] for c in fake.calls if c[1].startswith("/apis/")]
    assert gets == [
        "/apis/batch/v1/namespaces/shop/jobs/j",
        "/apis/apps/v1/namespaces/shop/replicasets/web-abc",
    ]


def test_restart_patches_like_kubectl() -> None:
    path = "/apis/apps/v1/namespaces/shop/deployments/web"
    cluster, fake = cluster_with({path: {"spec": {}}})
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    owner = Owner("shop", "Deployment", "web", "apps/v1")
    result = audit_cluster.restart(cluster, owner, moment)
    assert (result.status, result.ok) == ("restarted", True)
    assert fake.calls[-1] == (
        "PATCH",
        path,
        [],
        restart_patch(moment),
        "application/strategic-merge-patch+json",
    )


def test_restart_refuses_paused_and_missing_and_notes_on_delete() -> None:
    cluster, fake = cluster_with(
        {
            "/apis/apps/v1/namespaces/shop/deployments/paused": {"spec": {"paused": True}},
            "/apis/apps/v1/namespaces/shop/daemonsets/agent": {
                "spec": {"updateStrategy": {"type": "OnDelete"}}
            },
        }
    )
    now = datetime.now(UTC)
    paused = audit_cluster.restart(cluster, Owner("shop", "Deployment", "paused", "apps/v1"), now)
    assert paused.status == "skipped" and "rollout resume" in paused.message
    gone = audit_cluster.restart(cluster, Owner("shop", "StatefulSet", "gone", "apps/v1"), now)
    assert (gone.status, gone.message) == ("failed", "not found")
    agent = audit_cluster.restart(cluster, Owner("shop", "DaemonSet", "agent", "apps/v1"), now)
    assert agent.status == "restarted" and "OnDelete" in agent.message
    bare = audit_cluster.restart(cluster, Owner("shop", "Pod", "p"), now)
    assert bare.status == "skipped"
    assert [c[0] for c in fake.calls].count("PATCH") == 1


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    objects = {
        "/api/v1/serviceaccounts": listing([sa("shop", "app", ROLE_A), sa("shop", "plain")]),
        "/api/v1/pods": listing(
            [
                pod("web-1", owner=ref("ReplicaSet", "web-abc")),
                pod("lonely"),
                injected(pod("ok")),
            ]
        ),
        "/apis/apps/v1/namespaces/shop/replicasets/web-abc": replica_set("web-abc", "web"),
        "/apis/apps/v1/namespaces/shop/deployments/web": {"spec": {}},
    }
    fake = FakeKube(objects)
    seen: dict[str, Any] = {}

    def connect(
        kubeconfig: str = "", api_url: str = "", timeout: float = 30.0, context: str = ""
    ) -> Cluster:
        seen.update(kubeconfig=kubeconfig, api_url=api_url, timeout=timeout, context=context)
        return Cluster(fake, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_cluster, "connect", connect)
    fake.seen = seen  # type: ignore[attr-defined]
    yield fake


class Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def patches(fake: FakeKube) -> list[str]:
    return [c[1] for c in fake.calls if c[0] == "PATCH"]


def test_cli_table_exit_code_and_flags(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "--kubeconfig", "kc", "--context", "ctx", "--request-timeout", "7"])
    out = capsys.readouterr().out
    assert code == 1
    assert fake_cluster.seen == {  # type: ignore[attr-defined]
        "kubeconfig": "kc",
        "api_url": "",
        "timeout": 7.0,
        "context": "ctx",
    }
    assert "ServiceAccounts with a role: 1" in out
    assert "ERROR   not-injected [shop/Deployment/web]" in out
    assert "ERROR   not-injected [shop/Pod/lonely]" in out
    assert out.rstrip().endswith("2 error(s), 0 warning(s), 0 info")
    assert patches(fake_cluster) == []
    assert fake_cluster.closed  # its connections, when audit runs in-process


def test_cli_clean_cluster_exits_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeKube(
        {
            "/api/v1/serviceaccounts": listing([sa("shop", "app", ROLE_A)]),
            "/api/v1/pods": listing([injected(pod("ok"))]),
        }
    )
    monkeypatch.setattr(audit_cluster, "connect", lambda *a, **k: Cluster(fake))  # type: ignore[arg-type]
    assert main(["audit", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["audit"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_cli_json_and_csv(fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--output", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [(w["kind"], w["name"]) for w in document["notInjected"]] == [
        ("Deployment", "web"),
        ("Pod", "lonely"),
    ]
    assert document["restarts"] is None
    assert main(["audit", "--output", "csv"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith(f"shop,app,app-a,{ROLE_A},")
    assert "not-injected" in captured.err  # findings go to stderr, CSV stays clean


def test_cli_watch_config_map_reads_it_from_webhook_namespace(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_cluster.objects["/api/v1/namespaces/kube-system/configmaps/pod-identity-webhook"] = (
        config_map({"shop/plain": {"RoleARN": ROLE_B}}, "kube-system")
    )
    main(["audit", "--watch-config-map", "--webhook-namespace", "kube-system", "-o", "json"])
    rows = json.loads(capsys.readouterr().out)["inventory"]
    assert [(r["serviceAccount"], r["source"]) for r in rows] == [
        ("app", "annotation"),
        ("plain", "configmap"),
    ]


def listed_paths(fake: FakeKube) -> list[str]:
    return [c[1] for c in fake.calls if c[0] == "GET" and c[1].endswith(("pods", "accounts"))]


def test_cli_namespace_flag_scopes_the_audit_like_kubectl(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = "/api/v1/namespaces/shop"
    fake_cluster.objects[f"{shop}/serviceaccounts"] = listing([sa("shop", "app", ROLE_A)])
    fake_cluster.objects[f"{shop}/pods"] = listing([injected(pod("ok"))])
    for argv in (["-n", "shop"], ["--namespace=shop"], ["--audit-namespace", "shop"]):
        fake_cluster.calls.clear()
        assert main(["audit", *argv, "-o", "json"]) == 0
        assert listed_paths(fake_cluster) == [f"{shop}/serviceaccounts", f"{shop}/pods"]
        assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.parametrize("argv", [[], ["-A"], ["--all-namespaces"]])
def test_cli_all_namespaces_is_the_default(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["audit", *argv, "-o", "json"]) == 1
    assert listed_paths(fake_cluster) == ["/api/v1/serviceaccounts", "/api/v1/pods"]


def test_cli_restart_in_one_namespace_restarts_only_there(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "/api/v1/namespaces/other"
    fake_cluster.objects[f"{other}/serviceaccounts"] = listing([])
    fake_cluster.objects[f"{other}/pods"] = listing([])
    assert main(["audit", "-n", "other", "--restart", "--yes"]) == 0
    assert patches(fake_cluster) == []  # shop's Deployment is out of scope
    assert "nothing to restart" in capsys.readouterr().out


def test_cli_yaml_has_the_json_document(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    main(["audit", "-o", "json"])
    as_json = json.loads(capsys.readouterr().out)
    main(["audit", "--output=yaml"])
    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_cli_wide_adds_columns(fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    main(["audit"])
    narrow = capsys.readouterr().out
    main(["audit", "-o", "wide"])
    wide = capsys.readouterr().out
    assert "ROLE ARN" not in narrow and "ROLE ARN" in wide
    assert "MISSING" in wide and "lonely" in wide


def test_cli_restart_with_yes(fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--restart", "--yes", "--output", "json"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [(r["kind"], r["name"], r["status"]) for r in document["restarts"]] == [
        ("Deployment", "web", "restarted")
    ]
    assert "cannot restart shop/bare pod lonely" in captured.err
    assert patches(fake_cluster) == ["/apis/apps/v1/namespaces/shop/deployments/web"]
    patch = next(c for c in fake_cluster.calls if c[0] == "PATCH")
    stamp = patch[3]["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ]
    assert datetime.fromisoformat(stamp).tzinfo is not None


def test_cli_restart_asks_on_a_tty(
    fake_cluster: FakeKube, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", Stdin("n\n", tty=True))
    assert main(["audit", "--restart"]) == 1
    captured = capsys.readouterr()
    assert "Restart 1 workloads? [y/N]" in captured.err
    assert "not restarted" in captured.out
    assert patches(fake_cluster) == []

    monkeypatch.setattr("sys.stdin", Stdin("y\n", tty=True))
    main(["audit", "--restart"])
    assert "shop/Deployment/web restarted" in capsys.readouterr().out
    assert len(patches(fake_cluster)) == 1


def test_cli_restart_refuses_without_tty(
    fake_cluster: FakeKube, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", Stdin("y\n", tty=False))
    assert main(["audit", "--restart"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert fake_cluster.calls == []  # refused before contacting the cluster


def test_cli_restart_failure_is_exit_1(
    fake_cluster: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    del fake_cluster.objects["/apis/apps/v1/namespaces/shop/deployments/web"]
    assert main(["audit", "--restart", "--yes"]) == 1
    assert "shop/Deployment/web failed: not found" in capsys.readouterr().out


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    with pytest.raises(SystemExit):  # audit reads a live cluster: no --objects flag at all
        main(["audit", "--objects", "x.yaml"])
    assert "unrecognized arguments: --objects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["audit", "-n", "shop", "-A"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["audit", "--compose-role-arn"]) == 2
    assert "--aws-account-id" in capsys.readouterr().err
    bad = tmp_path / "cc.json"
    bad.write_text("[")
    assert main(["audit", "--watch-container-credentials-config", str(bad)]) == 2
    assert "--watch-container-credentials-config" in capsys.readouterr().err


def test_cli_unreachable_cluster_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As a fresh process: no root log handler (earlier tests may leave one on a closed stream).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert main(["audit", "--kube-api", "https://127.0.0.1:1", "--request-timeout", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "pod-identity-webhook audit: error: cannot reach the Kubernetes API at "
        "https://127.0.0.1:1: "
    )
    assert len(captured.err.splitlines()) == 1
