"""AdmissionReview in, AdmissionReview out: request → review → lookup → plan → patch → response.

`parse_review` and `finish_review` are shared by the HTTPS server and `replay`, so both give
byte-identical answers for the same input. The only step that may wait is the lookup, which
the caller performs between the two (the server can wait for a ServiceAccount to arrive).
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from webhook.core.identity import Identity, Lookup, resolve_identity
from webhook.core.mutation import Plan, plan_mutation, role_arn_warning
from webhook.core.podshape import pod_shape_error
from webhook.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    JITTER_MIN_TOKEN_EXPIRATION,
    MutationSettings,
)
from webhook.core.wire import AdmissionResponse, AdmissionReviewResponse, Pod

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"
SUPPORTED_VERSIONS = (V1, V1BETA1)


class IdentityLookup(Protocol):
    def lookup(self, namespace: str, service_account: str) -> Lookup: ...


@dataclass(slots=True)
class Outcome:
    """The encoded response plus what logs and metrics need to know about it."""

    body: bytes
    allowed: bool
    uid: str = ""
    namespace: str = ""
    pod_name: str = ""
    service_account: str = ""
    mutated: bool = False
    method: str | None = None  # upstream's pod_count label when an identity applied
    missing_service_account: bool = False
    reason: str = ""


@dataclass(slots=True)
class PendingReview:
    """A pod CREATE that needs an identity lookup before it can be answered."""

    api_version: str
    uid: str
    namespace: str
    pod: Pod
    pod_name: str
    service_account: str


def _encode(api_version: str, response: AdmissionResponse) -> bytes:
    review: AdmissionReviewResponse = {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }
    return orjson.dumps(review)


def reject(message: str, api_version: str = V1, uid: str = "") -> Outcome:
    """allowed=false with a message naming what was wrong (upstream answers bad input so too)."""
    response: AdmissionResponse = {"uid": uid, "allowed": False, "status": {"message": message}}
    return Outcome(_encode(api_version, response), allowed=False, uid=uid, reason=message)


def _allow(api_version: str, uid: str, reason: str) -> Outcome:
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    return Outcome(_encode(api_version, response), allowed=True, uid=uid, reason=reason)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_review(body: bytes) -> PendingReview | Outcome:
    """Decode the body; an Outcome means it is answered already (bad input or nothing to do)."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        return reject(f"cannot decode body as JSON: {err}")
    if not isinstance(review, dict):
        return reject("body is not an AdmissionReview: expected a JSON object")
    api_version = review.get("apiVersion")
    if review.get("kind") != "AdmissionReview" or api_version not in SUPPORTED_VERSIONS:
        return reject(
            f"unsupported review {api_version!r}/{review.get('kind')!r}: expected kind "
            f"AdmissionReview in {' or '.join(SUPPORTED_VERSIONS)}"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        return reject("AdmissionReview has no request", api_version)
    uid = _string(request.get("uid"))
    kind = request.get("kind") or {}
    if not isinstance(kind, dict):
        return reject("request.kind must be an object", api_version, uid)
    if kind.get("kind") != "Pod" or kind.get("group", "") != "":
        return _allow(api_version, uid, f"not a Pod: {kind.get('kind')!r}")
    if request.get("subResource"):
        return _allow(api_version, uid, f"subresource {request['subResource']!r}")
    if request.get("operation") != "CREATE":
        return _allow(api_version, uid, f"operation {request.get('operation')!r}")
    pod = request.get("object")
    if pod is None:
        return reject(
            "request.object is missing: a Pod CREATE must carry the pod", api_version, uid
        )
    shape_error = pod_shape_error(pod)
    if shape_error:
        return reject(f"cannot read pod: {shape_error}", api_version, uid)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = _string(request.get("namespace"))  # never the pod's own metadata.namespace
    return PendingReview(
        api_version=api_version,
        uid=uid,
        namespace=namespace,
        pod=pod,
        pod_name=meta.get("name") or meta.get("generateName") or "",
        service_account=spec.get("serviceAccountName") or "",
    )


def uid_jitter(uid: str) -> int:
    """Container-credentials jitter in [79200, 86400], derived from the request UID.

    Same spread as upstream's random draw, but an API server retry of the same request and a
    replay of a captured review get the same answer.
    """
    span = DEFAULT_TOKEN_EXPIRATION - JITTER_MIN_TOKEN_EXPIRATION + 1
    if not uid:
        return JITTER_MIN_TOKEN_EXPIRATION + random.randrange(span)
    digest = hashlib.sha256(uid.encode()).digest()
    return JITTER_MIN_TOKEN_EXPIRATION + int.from_bytes(digest[:8], "big") % span


def finish_review(pending: PendingReview, lookup: Lookup, settings: MutationSettings) -> Outcome:
    identity: Identity | None = resolve_identity(lookup, settings)
    if identity is None:
        outcome = _allow(pending.api_version, pending.uid, "no identity for service account")
        outcome.missing_service_account = (
            lookup.service_account is None and lookup.config_map is None
        )
    else:
        plan: Plan = plan_mutation(
            pending.pod, pending.namespace, identity, settings, lambda: uid_jitter(pending.uid)
        )
        warning = role_arn_warning(identity, pending.namespace, pending.service_account)
        response: AdmissionResponse = {"uid": pending.uid, "allowed": True}
        if plan.operations:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(plan.operations)).decode()
        if warning:
            response["warnings"] = [warning]
        reason = "mutated" if plan.operations else "already has its identity"
        outcome = Outcome(
            _encode(pending.api_version, response),
            allowed=True,
            uid=pending.uid,
            mutated=bool(plan.operations),
            method=identity.mode.value,
            reason=reason,
        )
    outcome.namespace = pending.namespace
    outcome.pod_name = pending.pod_name
    outcome.service_account = pending.service_account
    return outcome


def review(body: bytes, store: IdentityLookup, settings: MutationSettings) -> Outcome:
    """The whole pipeline without waiting: what replay runs, and the server's common path."""
    pending = parse_review(body)
    if isinstance(pending, Outcome):
        return pending
    return finish_review(
        pending, store.lookup(pending.namespace, pending.service_account), settings
    )
