"""Differential conformance: every corpus case goes through our webhook and the upstream Go
webhook against the same API server; the pods the API server stores must be identical, except
for the documented deliberate improvements, which must show."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import ControlPlane
from e2e.corpus import CorpusCase, load_cases
from e2e.webhooks import (
    WebhookError,
    WebhookProcess,
    create_pod,
    ours,
    register,
    unregister,
    upstream,
    wait_until_mutating,
)

CASES = load_cases()
GROUPS = sorted({c.group for c in CASES if not c.ours_only})
ORACLE_LABEL = "corpus-oracle"
CORPUS_NS_LABEL = "pod-identity-webhook-corpus"
JITTER_RANGE = range(79200, 86401)


def _namespace(cp: ControlPlane, name: str) -> None:
    cp.apply(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {CORPUS_NS_LABEL: "true"}},
        },
    )
    cp.ensure_service_account(name, "default")


def _prefix(flags: tuple[str, ...]) -> str:
    for flag in flags:
        if flag.startswith("--annotation-prefix="):
            return flag.split("=", 1)[1]
    return "eks.amazonaws.com"


def _group_flags(case: CorpusCase, identities_file: Path) -> list[str]:
    return [
        f"--watch-container-credentials-config={identities_file}"
        if f.startswith("--watch-container-credentials-config=")
        else f
        for f in case.flags
    ]


def normalize(pod: dict[str, Any], jittered: bool) -> dict[str, Any]:
    p = copy.deepcopy(pod)
    meta = p["metadata"]
    for key in (
        "name",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ):
        meta.pop(key, None)
    labels = meta.get("labels") or {}
    labels.pop(ORACLE_LABEL, None)
    if not labels:
        meta.pop("labels", None)
    p.pop("status", None)
    for volume in p["spec"].get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if jittered and token and token.get("expirationSeconds") in JITTER_RANGE:
                token["expirationSeconds"] = "jittered within [79200, 86400]"
    return p


def _labelled(case: CorpusCase, oracle: str) -> dict[str, Any]:
    pod = case.fresh_pod()
    pod["metadata"].setdefault("labels", {})[ORACLE_LABEL] = oracle
    pod["spec"]["automountServiceAccountToken"] = False  # no random kube-api-access volume
    return pod


@pytest.fixture(scope="module")
def prepared(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    cp = control_plane
    _namespace(cp, "eks")
    for case in CASES:
        _namespace(cp, case.namespace)
        for sa in case.service_accounts:
            cp.apply(f"/api/v1/namespaces/{case.namespace}/serviceaccounts", sa)
    yield cp


@pytest.mark.parametrize("group", GROUPS)
def test_corpus_group_matches_upstream(
    group: str, prepared: ControlPlane, tmp_path: Path, differences: list[str]
) -> None:
    cp = prepared
    cases = [c for c in CASES if c.group == group]
    # Shared state both webhooks read: one ConfigMap and one identities file for the group.
    entries: dict[str, Any] = {}
    identities: list[dict[str, str]] = []
    for case in cases:
        entries.update(case.config_map_entries)
        identities.extend(case.identities)
    cp.request("DELETE", "/api/v1/namespaces/eks/configmaps/pod-identity-webhook")
    if entries:
        cp.apply(
            "/api/v1/namespaces/eks/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "pod-identity-webhook", "namespace": "eks"},
                "data": {"config": json.dumps(entries)},
            },
        )
    identities_file = tmp_path / "identities.json"
    identities_file.write_text(json.dumps({"identities": identities}))
    probe_ns = f"corpus-probe-{group}"
    _namespace(cp, probe_ns)
    prefix = _prefix(cases[0].flags)
    cp.ensure_service_account(
        probe_ns, "probe", {f"{prefix}/role-arn": "arn:aws:iam::111122223333:role/probe"}
    )

    flags = _group_flags(cases[0], identities_file)
    processes: list[WebhookProcess] = []
    try:
        mine = ours(cp, tmp_path, flags, name=f"ours-{group}").start()
        processes.append(mine)
        theirs = upstream(cp, tmp_path, flags, name=f"upstream-{group}").start()
        processes.append(theirs)
        ns_selector = {"matchLabels": {CORPUS_NS_LABEL: "true"}}
        register(
            cp,
            "corpus-ours",
            mine.url,
            versions=["v1"],
            object_selector={"matchLabels": {ORACLE_LABEL: "ours"}},
            namespace_selector=ns_selector,
        )
        # Upstream v0.6.17 answers only v1beta1 reviews correctly.
        register(
            cp,
            "corpus-upstream",
            theirs.url,
            versions=["v1beta1"],
            object_selector={"matchLabels": {ORACLE_LABEL: "upstream"}},
            namespace_selector=ns_selector,
        )
        for oracle in ("ours", "upstream"):
            wait_until_mutating(cp, probe_ns, "probe", {ORACLE_LABEL: oracle}, timeout=60)

        mismatches: list[str] = []
        for case in cases:
            ours_pod = create_pod(cp, case.namespace, _labelled(case, "ours"))
            try:
                upstream_pod = create_pod(cp, case.namespace, _labelled(case, "upstream"))
            except WebhookError as err:
                # Some improvements are exactly this: upstream's patch makes a valid pod
                # invalid and the API server refuses it; ours was stored above.
                if case.improvement and "HTTP 422" in str(err):
                    differences.append(f"{case.name}: {case.improvement}")
                else:
                    mismatches.append(f"{case.name}: upstream's pod was rejected: {err}")
                continue
            stored = {"ours": ours_pod, "upstream": upstream_pod}
            jittered = case.group == "container-credentials"
            if case.name.endswith("cc-jitter"):
                for pod in stored.values():
                    seconds = [
                        s["serviceAccountToken"]["expirationSeconds"]
                        for v in pod["spec"]["volumes"]
                        for s in (v.get("projected") or {}).get("sources", [])
                        if "serviceAccountToken" in s
                    ]
                    assert seconds and seconds[0] in JITTER_RANGE, (case.name, seconds)
            a, b = (normalize(stored[o], jittered) for o in ("ours", "upstream"))
            if case.improvement:
                if a == b:
                    mismatches.append(
                        f"{case.name}: documented improvement did not show ({case.improvement})"
                    )
                else:
                    differences.append(f"{case.name}: {case.improvement}")
            elif a != b:
                mismatches.append(
                    f"{case.name}:\n  ours:     {json.dumps(a['spec'], sort_keys=True)}\n  upstream: {json.dumps(b['spec'], sort_keys=True)}"
                )
        assert not mismatches, "\n".join(mismatches)
    finally:
        unregister(cp, "corpus-ours")
        unregister(cp, "corpus-upstream")
        for process in processes:
            process.stop()
