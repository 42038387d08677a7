"""The hot path reads a review with a typed decoder that builds only the fields a mutation
reads, plans into JSON text, and writes the answer around it. These specifications hold it to
the plain way — read the whole review, build the operations as data, encode them — which the
server used before and still falls back to for bad input: same answers, byte for byte."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import webhook.review as review_module
from webhook.core.identity import Identity, Lookup, entry_from_annotations
from webhook.core.podshape import pod_shape_error
from webhook.core.settings import MutationSettings
from webhook.core.wire import AdmissionReviewIn
from webhook.review import V1, V1BETA1, allowed_body, review
from webhook.sources.store import IdentityStore

from .builders import ROLE, admission_review, container, plan, pod, store_with, web_identity
from .strategies import SETTINGS, json_value, pods, reviewish

CORPUS = Path(__file__).parent / "corpus" / "cases"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


class _AlwaysInvalid:
    """Stands in for the typed decoder so that every review is read in full."""

    def decode(self, body: bytes) -> Any:
        raise msgspec.ValidationError("read in full")


@pytest.fixture
def read_in_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(review_module, "_READ_REVIEW", _AlwaysInvalid())
    yield


def _both_ways(body: bytes, store: IdentityStore) -> tuple[bytes, bytes]:
    fast = review(body, store, store.settings).body
    original = review_module._READ_REVIEW
    review_module._READ_REVIEW = _AlwaysInvalid()  # type: ignore[assignment]
    try:
        full = review(body, store, store.settings).body
    finally:
        review_module._READ_REVIEW = original
    return fast, full


def _store_for(body: Any) -> IdentityStore:
    """A store in which the reviewed pod's ServiceAccount has a role (when it can be told)."""
    try:
        request = body["request"]
        namespace = request["namespace"]
        account = request["object"]["spec"].get("serviceAccountName") or "default"
    except (KeyError, TypeError, AttributeError):
        return store_with(app={ROLE_ANNOTATION: ROLE})
    store = IdentityStore(MutationSettings(aws_default_region="us-west-2"))
    if isinstance(namespace, str) and isinstance(account, str):
        store.put_service_account(namespace, account, {ROLE_ANNOTATION: ROLE})
    return store


# -- the same answers ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(p.name for p in CORPUS.iterdir() if p.is_dir()))
def test_every_corpus_review_gets_the_same_bytes_as_when_read_in_full(case: str) -> None:
    body = (CORPUS / case / "review.json").read_bytes()
    fast, full = _both_ways(body, _store_for(orjson.loads(body)))
    assert fast == full


def test_the_bench_mix_gets_the_same_bytes_as_when_read_in_full() -> None:
    from bench import mix
    from bench.microbench import make_store

    store = make_store(MutationSettings(aws_default_region=mix.REGION))
    for version in (mix.V1, mix.V1BETA1):
        for r in mix.generate(100, version, seed=3):
            fast, full = _both_ways(r.body, store)
            assert fast == full, r.kind


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.one_of(reviewish, json_value))
def test_any_json_body_gets_the_same_bytes_as_when_read_in_full(body: Any) -> None:
    raw = json.dumps(body).encode()  # orjson refuses integers beyond 64 bits; they are JSON
    fast, full = _both_ways(raw, _store_for(body))
    assert fast == full


# Wrong types at the fields a mutation reads, and at their neighbours.
_touched_paths = st.sampled_from(
    [
        ("metadata",),
        ("metadata", "name"),
        ("metadata", "generateName"),
        ("metadata", "annotations"),
        ("metadata", "labels"),
        ("spec",),
        ("spec", "serviceAccountName"),
        ("spec", "nodeSelector"),
        ("spec", "os"),
        ("spec", "volumes"),
        ("spec", "containers"),
        ("spec", "initContainers"),
        ("spec", "containers", 0),
        ("spec", "containers", 0, "name"),
        ("spec", "containers", 0, "env"),
        ("spec", "containers", 0, "volumeMounts"),
        ("spec", "containers", 0, "volumeDevices"),
    ]
)


@st.composite
def damaged_pods(draw: Any) -> dict[str, Any]:
    p = copy.deepcopy(draw(pods()))
    path = draw(_touched_paths)
    target: Any = p
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = draw(json_value)
    return p


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(damaged_pods())
def test_the_typed_decoder_accepts_a_pod_only_when_the_full_check_does(p: dict[str, Any]) -> None:
    body = json.dumps(admission_review(p)).encode()
    try:
        msgspec.json.decode(body, type=AdmissionReviewIn)
    except msgspec.ValidationError:
        return  # read in full then: the full check decides, as before
    assert pod_shape_error(p) is None
    fast, full = _both_ways(body, _store_for(json.loads(body)))
    assert fast == full


@settings(max_examples=500, deadline=None)
@given(damaged_pods())
def test_the_full_check_accepts_a_pod_only_when_the_typed_decoder_does(p: dict[str, Any]) -> None:
    # With the one above: both derive from wire.PodIn, so they agree both ways.
    body = json.dumps(admission_review(p)).encode()
    if pod_shape_error(p) is None:
        msgspec.json.decode(body, type=AdmissionReviewIn)  # raises on disagreement
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(body, type=AdmissionReviewIn)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # Each list's items' own fields are checked before any item's lists.
        (
            {"containers": [{"name": "a", "env": 1}, {"name": 2}]},
            "spec.containers[1].name must be a string",
        ),
        ({"volumes": [{}, 3], "os": 1}, "spec.volumes[1] must be an object"),
        ({"os": {"name": None}}, "spec.os must be an object with a string name"),
        ({"os": []}, "spec.os must be an object with a string name"),
        ({"nodeSelector": {"k": 1}}, "spec.nodeSelector['k'] must be a string"),
        (
            {"initContainers": [{"volumeMounts": [{"name": 1}]}]},
            "spec.initContainers[0].volumeMounts[0].name must be a string",
        ),
    ],
)
def test_the_first_offending_field_is_named_in_schema_order(
    spec: dict[str, Any], message: str
) -> None:
    assert pod_shape_error({"spec": spec}) == message


def test_a_pod_with_a_wrong_type_is_denied_naming_the_field_as_before() -> None:
    body = orjson.dumps(admission_review(pod(container(env={"A": "1"}))))
    answer = orjson.loads(review(body, store_with(), MutationSettings()).body)["response"]
    assert answer["allowed"] is False
    assert answer["status"]["message"] == "cannot read pod: spec.containers[0].env must be a list"


@pytest.mark.parametrize(
    "unread",
    [b'"\xff\xfe"', b"1e400", b"123456789012345678901234567890"],
    ids=["invalid UTF-8", "a float beyond double", "an integer beyond 64 bits"],
)
def test_a_value_the_mutation_never_reads_does_not_deny_the_pod(unread: bytes) -> None:
    # Go's decoder (upstream) accepts these in fields it does not decode; so do we now. Before
    # the typed decoder, reading the whole body denied such a pod as undecodable JSON.
    body = orjson.dumps(admission_review(pod()))
    body = body.replace(b'"image":"busybox"', b'"image":"busybox","future":' + unread)
    store = store_with(app={ROLE_ANNOTATION: ROLE})
    outcome = review(body, store, store.settings)
    assert outcome.allowed and outcome.mutated


def test_the_decoder_builds_only_what_a_mutation_reads() -> None:
    full = admission_review(pod(container(image="x", resources={"limits": {"cpu": "1"}})))
    full["request"]["object"]["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    read = msgspec.json.decode(orjson.dumps(full), type=AdmissionReviewIn)
    obj: Any = read["request"]["object"]
    assert set(obj) == {"metadata", "spec"}
    assert obj["metadata"] == {"name": "pod-1"}
    assert obj["spec"]["containers"] == [{"name": "app"}]
    assert "userInfo" not in read["request"]


# -- the encoded patch and answer -------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(pods(), SETTINGS, st.booleans())
def test_the_patch_text_is_what_encoding_its_operations_writes(
    p: dict[str, Any], mutation: MutationSettings, container_credentials: bool
) -> None:
    identity = cc_identity(mutation) if container_credentials else web_identity(mutation)
    result = plan(p, identity, mutation)
    if result.patch:
        assert orjson.dumps(result.operations) == result.patch
    else:
        assert result.operations == []


def cc_identity(mutation: MutationSettings) -> Identity:
    from webhook.core.identity import resolve_identity

    identity = resolve_identity(Lookup(container_credentials=True), mutation)
    assert identity is not None
    return identity


@pytest.mark.parametrize("version", [V1, V1BETA1])
@pytest.mark.parametrize("uid", ["", "uid-1", 'q"uote\\', "ünïcode\u2028"])
@pytest.mark.parametrize("patch", [b"", b'[{"op":"add","path":"/spec/volumes","value":[]}]'])
@pytest.mark.parametrize("warnings", [None, [], ["one"], ['two "quoted"', "ß"]])
def test_the_allowed_answer_is_what_encoding_the_response_writes(
    version: str, uid: str, patch: bytes, warnings: list[str] | None
) -> None:
    import base64

    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(patch).decode()
    if warnings:
        response["warnings"] = warnings
    expected = orjson.dumps(
        {"apiVersion": version, "kind": "AdmissionReview", "response": response}
    )
    assert allowed_body(version, uid, patch, warnings) == expected


# -- remembered work --------------------------------------------------------------------------


def test_the_core_remembers_nothing_resolving_twice_gives_equal_fresh_values() -> None:
    from webhook.core.identity import resolve_identity
    from webhook.core.mutation import resolve

    entry = entry_from_annotations({ROLE_ANNOTATION: ROLE}, MutationSettings())
    lookup = Lookup(service_account=entry)
    settings = MutationSettings()
    first, second = resolve_identity(lookup, settings), resolve_identity(lookup, settings)
    assert first is not None and first == second and first is not second
    assert resolve(lookup, settings) == resolve(lookup, settings)
    assert lookup.resolution is None  # nothing was kept on the lookup


def test_the_store_resolves_once_per_service_account_entry_under_its_settings() -> None:
    from webhook.core.mutation import resolution_for

    store = store_with(app={ROLE_ANNOTATION: ROLE})
    lookup = store.lookup("default", "app")
    kept = lookup.resolution
    assert kept is not None and kept.settings is store.settings
    assert kept.identity is not None and kept.identity.role_arn == ROLE
    assert resolution_for(lookup, store.settings) is kept  # a review derives nothing
    other = MutationSettings(token_audience="other")
    fresh = resolution_for(lookup, other)  # other settings: resolved anew, nothing kept
    assert fresh is not kept and fresh.identity is not None
    assert fresh.settings is other and store.lookup("default", "app").resolution is kept
    store.put_service_account("default", "app", {ROLE_ANNOTATION: ROLE + "-2"})
    updated = store.lookup("default", "app").resolution  # invalidated with the entry
    assert updated is not None and updated.identity is not None
    assert updated.identity.role_arn == ROLE + "-2"


def test_a_review_under_other_settings_than_the_stores_uses_its_own() -> None:
    store = store_with(app={ROLE_ANNOTATION: ROLE})
    regional = MutationSettings(aws_default_region="eu-west-1")
    body = orjson.dumps(admission_review(pod()))
    answer = orjson.loads(review(body, store, regional).body)["response"]
    patch = orjson.loads(base64.b64decode(answer["patch"]))
    env = [op["value"] for op in patch if op["path"].endswith("/env")]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in env[0]


def test_planning_for_one_identity_under_other_settings_uses_those_settings() -> None:
    identity = web_identity()
    windows = pod(nodeSelector={"kubernetes.io/os": "windows"})
    linux_file = [op for op in plan(pod(), identity).operations if "env" in op["path"]]
    windows_file = [op for op in plan(windows, identity).operations if "env" in op["path"]]
    assert linux_file != windows_file
    regional = MutationSettings(aws_default_region="eu-west-1")
    env = [op["value"] for op in plan(pod(), identity, regional).operations if "env" in op["path"]]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in env[0]


def test_volume_devices_that_are_not_a_list_of_objects_are_denied_naming_the_field() -> None:
    # Found by the property above: `volumeDevices: true` made planning raise (an HTTP 500).
    body = orjson.dumps(admission_review(pod(container(volumeDevices=True))))
    store = store_with(app={ROLE_ANNOTATION: ROLE})
    answer = orjson.loads(review(body, store, store.settings).body)["response"]
    assert answer["allowed"] is False
    assert "spec.containers[0].volumeDevices must be a list" in answer["status"]["message"]
