"""`replay --from-cluster`: every running workload's template, against the cluster's objects.

The cluster is a fake with the two read calls replay makes (paginated lists, GETs); the same
path runs against a real kube-apiserver in e2e/test_replay_live.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook.cli import main
from webhook.toolkit import audit_cluster
from webhook.toolkit.replay_cluster import read_cluster

ROLE = "arn:aws:iam::111122223333:role/web"
TEMPLATE = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]},
}


def owned(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": True}]


class FakeCluster:
    """Answers GETs from a table; any write would raise, so the test also proves read-only."""

    host = "https://fake"
    closed = False

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed = True

    def __init__(self) -> None:
        self.lists: dict[str, list[dict[str, Any]]] = {
            "/api/v1/serviceaccounts": [
                {
                    "metadata": {
                        "name": "web",
                        "namespace": "shop",
                        "annotations": {"eks.amazonaws.com/role-arn": ROLE},
                    }
                }
            ],
            "/api/v1/namespaces": [{"metadata": {"name": "shop", "labels": {"team": "shop"}}}],
            "/api/v1/pods": [
                # Two pods of one Deployment: replayed once, from the Deployment's template.
                *(
                    {
                        "metadata": {
                            "name": f"web-abc-{i}",
                            "namespace": "shop",
                            "ownerReferences": owned("ReplicaSet", "web-abc"),
                        },
                        "spec": TEMPLATE["spec"],
                    }
                    for i in range(2)
                ),
                {
                    "metadata": {"name": "lonely", "namespace": "shop"},
                    "spec": TEMPLATE["spec"],
                    "status": {"phase": "Running"},
                },
                {
                    "metadata": {
                        "name": "db-0",
                        "namespace": "shop",
                        "ownerReferences": owned("PostgresCluster", "db"),
                    },
                    "spec": TEMPLATE["spec"],
                },
            ],
        }
        self.objects = {
            "/apis/apps/v1/namespaces/shop/replicasets/web-abc": {
                "metadata": {
                    "name": "web-abc",
                    "namespace": "shop",
                    "ownerReferences": owned("Deployment", "web"),
                },
                "spec": {"template": TEMPLATE},
            },
            "/apis/apps/v1/namespaces/shop/deployments/web": {
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"template": TEMPLATE},
            },
        }
        self.gets: list[str] = []

    def list_all(self, path: str, query: Any = ()) -> list[dict[str, Any]]:
        return self.lists.get(path, [])

    def get_optional(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        return self.objects.get(path)


def test_pods_are_traced_to_their_workload_and_each_workload_appears_once() -> None:
    cluster = FakeCluster()
    snapshot = read_cluster(cluster)  # type: ignore[arg-type]
    kinds = [(w["kind"], w["metadata"]["name"]) for w in snapshot.workloads]
    assert kinds == [("Deployment", "web"), ("Pod", "db-0"), ("Pod", "lonely")]
    assert cluster.gets.count("/apis/apps/v1/namespaces/shop/replicasets/web-abc") == 1
    assert snapshot.pods_seen == 4
    assert snapshot.notes == ["shop/db-0: owned by a PostgresCluster; replayed as the pod it is"]
    assert {o["kind"] for o in snapshot.objects} == {"ServiceAccount", "Namespace"}


def test_a_deleted_owner_leaves_the_last_object_found() -> None:
    cluster = FakeCluster()
    del cluster.objects["/apis/apps/v1/namespaces/shop/deployments/web"]
    snapshot = read_cluster(cluster)  # type: ignore[arg-type]
    assert ("ReplicaSet", "web-abc") in [
        (w["kind"], w["metadata"]["name"]) for w in snapshot.workloads
    ]


def test_replay_from_the_cluster_shows_what_a_new_pod_would_get(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster()
    monkeypatch.setattr(audit_cluster, "connect", lambda *a, **k: cluster)
    code = main(["replay", "--from-cluster", "-o", "pod"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pods = [json.loads(line) for line in captured.out.splitlines()]
    assert len(pods) == 3
    web = next(p for p in pods if p["metadata"].get("generateName", "").startswith("web-"))
    env = {e["name"]: e["value"] for e in web["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_ARN"] == ROLE
    assert "owned by a PostgresCluster" in captured.err
    assert cluster.closed  # read, then its connections closed


def test_cluster_namespaces_feed_the_namespace_selector(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    cluster = FakeCluster()
    monkeypatch.setattr(audit_cluster, "connect", lambda *a, **k: cluster)
    config = tmp_path / "mwc.yaml"
    config.write_text(
        "kind: MutatingWebhookConfiguration\nwebhooks:\n- name: w\n"
        "  rules: [{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [pods]}]\n"
        "  namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [shop]}]}\n"
    )
    code = main(["replay", "--from-cluster", "--webhook-config", str(config), "-o", "diff"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("not sent to the webhook: namespaceSelector (namespace shop)") == 3
    assert "is not in --objects" not in captured.err  # the cluster's Namespace was used


def test_without_inputs_or_the_cluster_it_says_what_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay"]) == 2
    assert "give INPUT files (or - for stdin), or --from-cluster" in capsys.readouterr().err
