"""Properties over generated pods: the patch applies, keeps every original field, and is
idempotent. Pods carry arbitrary extra fields at every level we touch."""

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core.settings import MutationSettings

from .builders import plan, web_identity
from .strategies import SETTINGS, env_names, json_value, pods, reviewish


def _contains(original: Any, result: Any) -> bool:
    """Every field of `original` is in `result` unchanged; lists may only grow at the end
    (or, for volumes, at the front)."""
    if isinstance(original, dict):
        return isinstance(result, dict) and all(
            k in result and _contains(v, result[k]) for k, v in original.items()
        )
    if isinstance(original, list):
        if not isinstance(result, list) or len(result) < len(original):
            return False
        n = len(original)

        def matches(window: list[Any]) -> bool:
            return all(_contains(o, r) for o, r in zip(original, window, strict=True))

        # env and mounts grow at the end, volumes at the front (as upstream)
        return matches(result[:n]) or matches(result[len(result) - n :])
    return bool(original == result) and type(original) is type(result)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(pods(), SETTINGS)
def test_patch_applies_preserves_everything_and_is_idempotent(
    p: dict[str, Any], mutation: MutationSettings
) -> None:
    identity = web_identity(mutation)
    original = copy.deepcopy(p)
    ops = plan(p, identity, mutation).operations
    assert p == original, "planning must not modify its input"
    mutated = jsonpatch.apply_patch(p, ops)
    assert _contains(original, mutated)
    assert plan(mutated, identity, mutation).operations == []


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.one_of(reviewish, json_value))
def test_any_json_body_gets_a_well_formed_answer_and_never_raises(body: Any) -> None:
    import json

    from webhook.review import review

    from .builders import store_with

    store = store_with(app={"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/app"})
    answer = json.loads(review(json.dumps(body).encode(), store, store.settings).body)
    assert answer["kind"] == "AdmissionReview"
    assert isinstance(answer["response"]["allowed"], bool)
    assert isinstance(answer["response"]["uid"], str)
    if not answer["response"]["allowed"]:
        assert answer["response"]["status"]["message"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_answered_not_raised(body: bytes) -> None:
    from webhook.review import review

    from .builders import store_with

    store = store_with()
    assert review(body, store, store.settings).body.startswith(b'{"apiVersion"')


TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
CC_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
mount_paths = st.sampled_from([TOKEN_DIR, TOKEN_DIR + "/", TOKEN_DIR + "/token", CC_DIR, "/data"])


@st.composite
def crowded_pods(draw: Any) -> dict[str, Any]:
    """Valid pods whose containers already use the token path, with any expiration asked."""

    def crowded_container(name: str) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "image": "img"}
        paths = draw(st.lists(mount_paths, max_size=3, unique=True))
        if paths:
            c["volumeMounts"] = [
                {"name": draw(st.sampled_from(["aws-iam-token", "data"])), "mountPath": p}
                for p in paths
            ]
        if draw(st.booleans()):
            device = draw(st.sampled_from([TOKEN_DIR, "/dev/xvdb"]))
            if device not in paths:
                c["volumeDevices"] = [{"name": "block", "devicePath": device}]
        if draw(st.booleans()):
            c["env"] = [{"name": draw(env_names), "value": "v"}]
        return c

    expiration = draw(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1).map(str),
            st.sampled_from([str(2**32), str(2**32 + 1), "-1", "x", str(2**64)]),
        )
    )
    return {
        "metadata": {
            "name": "p",
            "annotations": {"eks.amazonaws.com/token-expiration": expiration},
        },
        "spec": {
            "containers": [crowded_container(f"c{i}") for i in range(draw(st.integers(1, 3)))],
            "initContainers": [crowded_container(f"i{i}") for i in range(draw(st.integers(0, 2)))],
        },
    }


def _api_server_objections(p: dict[str, Any]) -> list[str]:
    """The validation rules an additive patch could break (k8s pkg/apis/core/validation)."""
    problems = []
    for kind in ("initContainers", "containers"):
        for c in p["spec"].get(kind) or ():
            paths = [m["mountPath"] for m in c.get("volumeMounts") or ()]
            devices = {d["devicePath"] for d in c.get("volumeDevices") or ()}
            if len(paths) != len(set(paths)) or devices & set(paths):
                problems.append(f"{c['name']}: mountPath must be unique")
    for v in p["spec"].get("volumes") or ():
        for source in (v.get("projected") or {}).get("sources") or ():
            seconds = source["serviceAccountToken"]["expirationSeconds"]
            if not 600 <= seconds <= 2**32:
                problems.append(f"expirationSeconds {seconds}")
    return problems


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(crowded_pods(), st.booleans())
def test_our_additions_never_break_a_rule_the_original_pod_kept(
    p: dict[str, Any], container_credentials: bool
) -> None:
    from webhook.core.identity import Lookup, resolve_identity

    assert _api_server_objections(p) == []
    settings_ = MutationSettings()
    identity = (
        resolve_identity(Lookup(container_credentials=True), settings_)
        if container_credentials
        else web_identity(settings_)
    )
    assert identity is not None
    result = plan(p, identity, settings_)
    mutated = jsonpatch.apply_patch(p, result.operations)
    assert _api_server_objections(mutated) == []
    again = plan(mutated, identity, settings_)
    assert again.operations == []
