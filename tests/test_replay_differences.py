"""How `replay --against` classifies two answers to the same pod: identical, one of the README's
deliberate differences (named), or an undocumented difference (with the diff)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from webhook.toolkit.differences import DOCUMENTED, Answer, Facts, Verdict, canonical, classify

from .builders import MOUNT_PATH, ROLE, TOKEN_FILE, container, pod

README = Path(__file__).resolve().parent.parent / "README.md"


def diff(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    return f"ours={ours!r}\ntheirs={theirs!r}\n"


def mutated(
    original: dict[str, Any], *, expiration: int = 86400, audience: str | None = "sts.amazonaws.com"
) -> dict[str, Any]:
    p = copy.deepcopy(original)
    for c in p["spec"]["containers"]:
        c.setdefault("env", []).extend(
            [
                {"name": "AWS_ROLE_ARN", "value": ROLE},
                {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": TOKEN_FILE},
            ]
        )
        c.setdefault("volumeMounts", []).append(
            {"name": "aws-iam-token", "mountPath": MOUNT_PATH, "readOnly": True}
        )
    token: dict[str, Any] = {"expirationSeconds": expiration, "path": "token"}
    if audience is not None:
        token["audience"] = audience
    p["spec"].setdefault("volumes", []).append(
        {"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": token}]}}
    )
    return p


def verdict(
    original: dict[str, Any],
    ours: dict[str, Any] | None,
    theirs: dict[str, Any] | None,
    **facts: Any,
) -> Verdict:
    return classify(
        Answer(ours is not None, ours),
        Answer(theirs is not None, theirs, "json: cannot unmarshal" if theirs is None else ""),
        Facts(original=original, **facts),
        diff,
    )


def names(v: Verdict) -> list[str]:
    return [d.name for d in v.documented]


def test_every_documented_difference_names_a_row_of_the_readme_table() -> None:
    table = (
        README.read_text()
        .split("## What differs from upstream, and why", 1)[1]
        .split("\n## ", 1)[0]
    )
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    for documented in DOCUMENTED:
        assert any(row.startswith(f"| {documented.readme}") for row in rows), documented.readme


def test_empty_maps_and_lists_are_the_same_as_none_as_the_api_server_stores_them() -> None:
    assert canonical({"a": {}, "b": [], "c": None, "d": [{"e": {}}], "f": 0}) == {"d": [{}], "f": 0}
    original = pod()
    go_encoded = mutated(original)
    go_encoded["spec"]["containers"][0]["resources"] = {}
    assert verdict(original, mutated(original), go_encoded).kind == "identical"


def test_an_undocumented_difference_carries_the_diff() -> None:
    original = pod()
    theirs = mutated(original)
    theirs["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    result = verdict(original, mutated(original), theirs)
    assert (result.kind, result.undocumented) == ("differs", True)
    assert "EXTRA" in result.detail


def test_fields_dropped_from_lists_the_other_patch_rewrote_whole_are_documented() -> None:
    original = pod(
        container(
            volumeMounts=[
                {"name": "data", "mountPath": "/d", "bindMountOptions": {"recursive": True}}
            ]
        )
    )
    theirs = mutated(original)
    del theirs["spec"]["containers"][0]["volumeMounts"][0]["bindMountOptions"]
    rewrote = frozenset({"containers", "volumes"})
    result = classify(
        Answer(True, mutated(original)),
        Answer(True, theirs, rewritten=rewrote),
        Facts(original),
        diff,
    )
    assert names(result) == ["keeps-unknown-fields"]
    # The same field removed by a precise patch operation is a real difference.
    assert verdict(original, mutated(original), theirs).kind == "differs"
    # A field missing on their side that the original never had is not that difference.
    ours = mutated(original)
    ours["spec"]["containers"][0]["stdin"] = True
    result = classify(
        Answer(True, ours),
        Answer(True, mutated(original), rewritten=rewrote),
        Facts(original),
        diff,
    )
    assert result.kind == "differs"


def windows_path(p: dict[str, Any]) -> dict[str, Any]:
    p["spec"]["containers"][0]["env"][1]["value"] = "C:" + TOKEN_FILE.replace("/", "\\")
    return p


def test_windows_by_the_os_field_only_is_documented_but_not_by_node_selector() -> None:
    by_os = pod(os={"name": "windows"})
    assert names(verdict(by_os, windows_path(mutated(by_os)), mutated(by_os))) == [
        "windows-spec-os"
    ]
    # Upstream reads the node selector too: a Linux path there is a real difference.
    by_selector = pod(nodeSelector={"kubernetes.io/os": "windows"})
    assert (
        verdict(by_selector, windows_path(mutated(by_selector)), mutated(by_selector)).kind
        == "differs"
    )


@pytest.mark.parametrize("taken", ["volumeMounts", "volumeDevices"])
def test_a_token_mount_at_a_path_the_container_already_uses_is_documented(taken: str) -> None:
    used = (
        {"name": "cache", "mountPath": MOUNT_PATH}
        if taken == "volumeMounts"
        else {"name": "cache", "devicePath": MOUNT_PATH}
    )
    original = pod(container() | {taken: [used]})
    ours = mutated(original)
    ours["spec"]["containers"][0]["volumeMounts"] = [
        m for m in ours["spec"]["containers"][0]["volumeMounts"] if m["name"] != "aws-iam-token"
    ]
    assert names(verdict(original, ours, mutated(original))) == ["mount-path-taken"]


def test_expirations_beyond_the_api_servers_range_are_documented_only_at_the_limits() -> None:
    original = pod()
    assert names(
        verdict(
            original, mutated(original, expiration=2**32), mutated(original, expiration=2**32 + 1)
        )
    ) == ["expiration-above-2^32"]
    assert (
        verdict(
            original,
            mutated(original, expiration=2**32 - 1),
            mutated(original, expiration=2**32 + 1),
        ).kind
        == "differs"
    )
    cm = {"identity_source": "configmap"}
    assert names(
        verdict(
            original, mutated(original, expiration=600), mutated(original, expiration=300), **cm
        )
    ) == ["config-map-defaults"]
    assert (
        verdict(original, mutated(original, expiration=600), mutated(original, expiration=300)).kind
        == "differs"
    )


def test_a_missing_audience_is_named_by_where_our_identity_came_from() -> None:
    original = pod()
    ours, theirs = mutated(original), mutated(original, audience=None)
    assert names(verdict(original, ours, theirs, identity_source="annotation")) == [
        "empty-audience"
    ]
    assert names(verdict(original, ours, theirs, identity_source="configmap")) == [
        "config-map-defaults"
    ]
    assert names(
        verdict(original, ours, mutated(original, audience=""), identity_source="annotation")
    ) == ["empty-audience"]


def test_container_credentials_jitter_is_documented_within_its_range_only() -> None:
    original = pod()
    assert names(
        verdict(original, mutated(original, expiration=80000), mutated(original, expiration=85000))
    ) == ["uid-jitter"]
    assert (
        verdict(
            original, mutated(original, expiration=80000), mutated(original, expiration=3600)
        ).kind
        == "differs"
    )


def test_whole_pod_differences_need_their_condition() -> None:
    original = pod()
    # A ConfigMap glob: upstream leaves the pod alone.
    assert names(verdict(original, mutated(original), original, config_map_pattern=True)) == [
        "config-map-glob"
    ]
    assert verdict(original, mutated(original), original).kind == "differs"
    # Not a pod CREATE: upstream mutates what it is sent, we do not.
    assert names(verdict(original, original, mutated(original), pod_create=False)) == [
        "only-pod-creates"
    ]
    # --compose-role-arn with an empty annotation: upstream injects a role without a name.
    theirs = mutated(original)
    for env in theirs["spec"]["containers"][0]["env"]:
        if env["name"] == "AWS_ROLE_ARN":
            env["value"] = "arn:aws:iam::111122223333:role/"
    assert names(verdict(original, original, theirs)) == ["compose-empty-role"]


def test_denials() -> None:
    original = pod()
    assert (verdict(original, None, None).kind, verdict(original, None, None).detail) == (
        "identical",
        "both denied",
    )
    assert names(verdict(original, mutated(original), None)) == ["type-checks-only-read-fields"]
    ours_only = classify(
        Answer(False, None, "cannot read pod: spec.containers"),
        Answer(True, original),
        Facts(original),
        diff,
    )
    assert ours_only.kind == "differs" and re.search(
        "only ours denied the pod: cannot read pod", ours_only.detail
    )
