"""AdmissionReview in, AdmissionReview out: versions, operations and bad input."""

from typing import Any

import orjson
import pytest

from webhook.review import uid_jitter

from .builders import ROLE, admission_review, container, patch_of, pod, respond, store_with

STORE = store_with(app={"eks.amazonaws.com/role-arn": ROLE}, plain={})


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_response_echoes_version_kind_and_uid(version: str) -> None:
    response = respond(admission_review(pod(), version=version, uid="abc"), STORE)
    assert response["apiVersion"] == version
    assert response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == "abc"
    assert response["response"]["allowed"] is True
    assert response["response"]["patchType"] == "JSONPatch"
    assert patch_of(response)


@pytest.mark.parametrize(
    "changes",
    [
        {"operation": "UPDATE"},
        {"operation": "DELETE"},
        {"operation": "CONNECT"},
        {"kind": "Deployment"},
        {"subResource": "ephemeralcontainers"},
    ],
)
def test_anything_but_a_pod_create_is_allowed_unchanged(changes: dict[str, Any]) -> None:
    response = respond(admission_review(pod(), **changes), STORE)["response"]
    assert response["allowed"] is True
    assert "patch" not in response


def test_dry_run_is_handled_like_any_other_request() -> None:
    assert patch_of(respond(admission_review(pod(), dryRun=True), STORE))


def test_namespace_comes_from_the_request_not_the_pod() -> None:
    p = pod(metadata={"name": "p", "namespace": "default"})
    assert not patch_of(respond(admission_review(p, namespace="other"), STORE))
    p = pod(metadata={"name": "p", "namespace": "other"})
    assert patch_of(respond(admission_review(p, namespace="default"), STORE))


@pytest.mark.parametrize("sa", ["plain", "unknown"])
def test_service_accounts_without_identity_get_no_patch(sa: str) -> None:
    response = respond(admission_review(pod(sa=sa)), STORE)["response"]
    assert response == {"uid": "uid-1", "allowed": True}


def test_a_pod_already_complete_gets_no_patch() -> None:
    first = respond(admission_review(pod()), STORE)
    import base64

    import jsonpatch

    mutated = jsonpatch.apply_patch(
        pod(), orjson.loads(base64.b64decode(first["response"]["patch"]))
    )
    assert "patch" not in respond(admission_review(mutated), STORE)["response"]


def test_invalid_role_arn_produces_an_admission_warning() -> None:
    store = store_with(app={"eks.amazonaws.com/role-arn": "my-role"})
    response = respond(admission_review(pod()), store)["response"]
    assert response["allowed"] is True and patch_of({"response": response})
    assert len(response["warnings"]) == 1 and "my-role" in response["warnings"][0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "cannot decode body as JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "has no request"),
        (
            b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {}}',
            "unsupported review",
        ),
        (b'{"apiVersion": "v1", "kind": "Pod"}', "unsupported review"),
    ],
)
def test_bad_bodies_are_denied_with_a_clear_message(body: bytes, message: str) -> None:
    response = respond(body, STORE)["response"]
    assert response["allowed"] is False
    assert message in response["status"]["message"]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ("a string", "expected a JSON object"),
        (None, "request.object is missing"),
        ({"spec": {"containers": "app"}}, "spec.containers"),
        ({"spec": {"containers": [{"name": "a", "env": {"A": "1"}}]}}, "spec.containers[0].env"),
        ({"spec": {"initContainers": [3]}}, "spec.initContainers[0]"),
        ({"metadata": {"annotations": {"a": 1}}}, "metadata.annotations"),
        ({"spec": {"volumes": {}}}, "spec.volumes"),
        ({"spec": {"serviceAccountName": 5}}, "spec.serviceAccountName"),
    ],
)
def test_pods_that_do_not_parse_are_denied_naming_the_field(obj: Any, field: str) -> None:
    response = respond(admission_review(obj), STORE)["response"]
    assert response["allowed"] is False
    assert field in response["status"]["message"]
    assert response["uid"] == "uid-1"


def test_uid_jitter_is_in_range_and_stable_per_uid() -> None:
    values = {uid_jitter(f"uid-{i}") for i in range(500)}
    assert min(values) >= 79200 and max(values) <= 86400
    assert len(values) > 400  # spread, not a constant
    assert uid_jitter("same") == uid_jitter("same")


def test_container_credentials_mode_uses_the_jitter_of_the_request_uid() -> None:
    store = store_with(app={})
    store.set_container_credentials([("default", "app")])
    response = respond(admission_review(pod(container()), uid="u-42"), store)
    volume_op = next(op for op in patch_of(response) if op["path"].startswith("/spec/volumes"))
    token = volume_op["value"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["expirationSeconds"] == uid_jitter("u-42")


MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_a_spared_mount_is_explained_in_the_response_warnings(version: str) -> None:
    busy = container(volumeMounts=[{"name": "own", "mountPath": MOUNT_PATH}])
    p = pod(busy, volumes=[{"name": "own", "emptyDir": {}}])
    response = respond(admission_review(p, version=version), STORE)["response"]
    assert not any(op["path"].endswith("/volumeMounts/-") for op in patch_of(response_of(response)))
    (warning,) = response["warnings"]
    assert "already mounts volume 'own'" in warning


def test_every_reason_to_deviate_is_one_warning_each() -> None:
    store = store_with(
        app={
            "eks.amazonaws.com/role-arn": "my-role",
            "eks.amazonaws.com/audience": "",
            "eks.amazonaws.com/token-expiration": str(2**40),
        }
    )
    p = pod(container(volumeMounts=[{"name": "own", "mountPath": MOUNT_PATH}]))
    p["metadata"]["annotations"] = {"eks.amazonaws.com/token-expiration": str(2**41)}
    warnings = respond(admission_review(p), store)["response"]["warnings"]
    assert len(warnings) == 5
    assert all(w.startswith("pod-identity-webhook: ") for w in warnings)
    assert "my-role" in warnings[0]  # the role ARN first, as before


def test_no_warnings_key_when_nothing_deviates() -> None:
    assert "warnings" not in respond(admission_review(pod()), STORE)["response"]


def response_of(response: dict[str, Any]) -> dict[str, Any]:
    return {"response": response}
