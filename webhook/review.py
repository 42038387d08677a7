"""AdmissionReview in, AdmissionReview out: request → review → lookup → plan → patch → response.

`parse_review` and `finish_review` are shared by the HTTPS server and `replay`, so both give
byte-identical answers for the same input. The only step that may wait is the lookup, which
the caller performs between the two (the server can wait for a ServiceAccount to arrive).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import orjson
import pybase64

from webhook.core.identity import Lookup, Mode
from webhook.core.mutation import (
    Plan,
    container_count_error,
    identity_warnings,
    plan_mutation,
    resolution_for,
)
from webhook.core.podshape import pod_shape_error
from webhook.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    JITTER_MIN_TOKEN_EXPIRATION,
    MutationSettings,
)
from webhook.core.wire import (
    AdmissionResponse,
    AdmissionReviewIn,
    AdmissionReviewResponse,
    Pod,
)

log = logging.getLogger(__name__)
# klog's -v=3, where upstream logs "Pod was mutated": between INFO and DEBUG (-v=4).
KLOG_V3 = logging.INFO - 5

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


# An allowed review is written as bytes around the patch (no second encode of a 3 KB base64
# string); the result is what _encode writes for the same response (tests/test_review.py).
_ALLOWED_HEAD = {
    version: orjson.dumps({"apiVersion": version, "kind": "AdmissionReview"})[:-1]
    + b',"response":{"uid":'
    for version in SUPPORTED_VERSIONS
}


def allowed_body(
    api_version: str, uid: str, patch: bytes = b"", warnings: list[str] | None = None
) -> bytes:
    """The encoded AdmissionReview allowing the request, with the JSON patch when there is one."""
    parts = [_ALLOWED_HEAD[api_version], orjson.dumps(uid), b',"allowed":true']
    if patch:
        parts += (b',"patchType":"JSONPatch","patch":"', pybase64.b64encode(patch), b'"')
    if warnings:
        parts += (b',"warnings":', orjson.dumps(warnings))
    parts.append(b"}}")
    return b"".join(parts)


def reject(message: str, api_version: str = V1, uid: str = "") -> Outcome:
    """allowed=false with a message naming what was wrong (upstream answers bad input so too)."""
    response: AdmissionResponse = {"uid": uid, "allowed": False, "status": {"message": message}}
    return Outcome(_encode(api_version, response), allowed=False, uid=uid, reason=message)


def _allow(api_version: str, uid: str, reason: str) -> Outcome:
    return Outcome(allowed_body(api_version, uid), allowed=True, uid=uid, reason=reason)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- decision logs ---------------------------------------------------------------------------
# Every denial at the default verbosity, and upstream's "Pod was mutated" lines at -v=3 so log
# alerts written for upstream keep working. Identifiers and reasons only: a review carries no
# secret, and a token is never logged.


def _context(outcome: Outcome) -> str:
    """Upstream's logContext: `Pod=<name or generateName>, ServiceAccount=..., Namespace=...`."""
    return (
        f"Pod={outcome.pod_name}, ServiceAccount={outcome.service_account}, "
        f"Namespace={outcome.namespace}"
    )


def _fields(outcome: Outcome) -> dict[str, object]:
    return {
        "uid": outcome.uid,
        "pod": outcome.pod_name,
        "namespace": outcome.namespace,
        "serviceAccount": outcome.service_account,
        "allowed": outcome.allowed,
        "mutated": outcome.mutated,
        "method": outcome.method or "",
        "reason": outcome.reason,
    }


def log_decision(outcome: Outcome, subject: str = "Pod") -> None:
    """One line per review: a warning for a denial; "Pod was mutated" (or why not) at -v=3 when
    an identity applies, as upstream; every other review at -v=4."""
    if not outcome.allowed:
        level, message = logging.WARNING, f"{subject} was denied. Reason: {outcome.reason}."
    elif outcome.mutated:
        level, message = KLOG_V3, f"{subject} was mutated."
    elif outcome.method is not None:
        level = KLOG_V3
        message = (
            f"{subject} was not mutated. Reason: Required volume mounts and env variables were "
            "already present."
        )
    else:
        level, message = logging.DEBUG, f"{subject} was not mutated. Reason: {outcome.reason}."
    if log.isEnabledFor(level):
        context = f" {_context(outcome)}" if outcome.pod_name or outcome.namespace else ""
        log.log(level, message + context, extra={"fields": _fields(outcome)})


def _name_the_pod(outcome: Outcome, body: bytes) -> None:
    """Best effort: who a request was for, when answering it went wrong (rare: parse again)."""
    try:
        request = orjson.loads(body).get("request") or {}
        pod = request.get("object") or {}
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        outcome.uid = _string(request.get("uid"))
        outcome.namespace = _string(request.get("namespace"))
        outcome.pod_name = _string(meta.get("name") or meta.get("generateName"))
        outcome.service_account = _string(spec.get("serviceAccountName"))
    except (orjson.JSONDecodeError, AttributeError):
        pass


def log_internal_error(body: bytes, error: BaseException) -> None:
    """The server answers 500 for a bug; one error line says for which pod, with the traceback."""
    failed = Outcome(b"", allowed=False, reason=f"internal error: {error}")
    _name_the_pod(failed, body)
    log.error(
        "Pod review failed. Reason: %s. %s",
        failed.reason,
        _context(failed),
        exc_info=error,
        extra={"fields": _fields(failed)},
    )


def _logged_parse(
    parse: Callable[[bytes], PendingReview | Outcome],
) -> Callable[[bytes], PendingReview | Outcome]:
    @functools.wraps(parse)
    def parse_and_log(body: bytes) -> PendingReview | Outcome:
        result = parse(body)
        if isinstance(result, Outcome):
            if not result.allowed:
                _name_the_pod(result, body)
            log_decision(result, "Pod" if result.pod_name else "Request")
        return result

    return parse_and_log


_Finish = Callable[["PendingReview", Lookup, MutationSettings], "Outcome"]


def _logged_finish(finish: _Finish) -> _Finish:
    @functools.wraps(finish)
    def finish_and_log(
        pending: PendingReview, lookup: Lookup, settings: MutationSettings
    ) -> Outcome:
        outcome = finish(pending, lookup, settings)
        log_decision(outcome)
        return outcome

    return finish_and_log


def _no_identity_reason(pending: PendingReview, lookup: Lookup, settings: MutationSettings) -> str:
    """Why a pod gets nothing: its ServiceAccount is unknown, or known without a role."""
    who = f"ServiceAccount {pending.namespace}/{pending.service_account}"
    if lookup.service_account is None:
        if lookup.config_map is not None:
            return f"{who} not in the cache; its ConfigMap entry has no RoleARN"
        return f"{who} not in the cache"
    where = f"no {settings.role_arn_key} annotation"
    if lookup.config_map is not None:
        where += ", ConfigMap entry without RoleARN"
    return f"{who} has no role ({where})"


# One pass over the bytes that builds only what a mutation reads (see wire.AdmissionReviewIn).
# orjson's nesting limit (its documented "recursion limit": arrays and objects 1,024 deep).
JSON_MAX_DEPTH = 1024
_READ_REVIEW = msgspec.json.Decoder(AdmissionReviewIn)


@_logged_parse
def parse_review(body: bytes) -> PendingReview | Outcome:
    """Decode the body; an Outcome means it is answered already (bad input or nothing to do)."""
    try:
        # Typed: the pod's fields we read have the Pod schema's types, nothing left to check.
        typed = _READ_REVIEW.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    except RecursionError:
        # msgspec recurses on the C stack, checked against Python's recursion limit (~1,000
        # levels, fewer the deeper the caller): a value nested that deep, even in a field we
        # skip, lands here. orjson below has a fixed limit of its own (1,024 levels).
        pass
    else:
        return _route_pod_create(typed)
    # Rare: a field of the wrong type, broken JSON or deep nesting. Read it in full, as before
    # the fast path existed, so the denial names the field (or the JSON error) the same way.
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        if str(err).startswith("depth limit exceeded"):
            # No pod nests this deep: the API server prunes unknown fields. Only replayed or
            # hostile input does; it gets an answer, never an internal error (upstream answers).
            return reject(
                f"cannot decode body as JSON: it nests more than {JSON_MAX_DEPTH} levels deep "
                f"({err})"
            )
        return reject(f"cannot decode body as JSON: {err}")
    return _route(review, shape_checked=False)


def _route_pod_create(review: AdmissionReviewIn) -> PendingReview | Outcome:
    """The common case in few steps: a typed Pod CREATE as the API server sends it. Anything
    else (another kind or operation, a subresource, odd types) goes the general way."""
    request = review.get("request")
    if request is not None and review.get("kind") == "AdmissionReview":
        api_version = review.get("apiVersion")
        kind = request.get("kind")
        pod = request.get("object")
        uid = request.get("uid")
        namespace = request.get("namespace")
        if (
            api_version in SUPPORTED_VERSIONS
            and pod is not None
            and request.get("operation") == "CREATE"
            and not request.get("subResource")
            and type(kind) is dict
            and kind.get("kind") == "Pod"
            and kind.get("group", "") == ""
            and type(uid) is str
            and type(namespace) is str
        ):
            meta = pod.get("metadata") or {}
            spec = pod.get("spec") or {}
            return PendingReview(
                api_version,
                uid,
                namespace,
                pod,  # type: ignore[arg-type]  # a PodIn is the Pod's fields we read
                meta.get("name") or meta.get("generateName") or "",
                spec.get("serviceAccountName") or "",
            )
    return _route(review, shape_checked=True)


def _route(review: Any, shape_checked: bool) -> PendingReview | Outcome:
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
    shape_error = None if shape_checked else pod_shape_error(pod)
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


_METHOD = {mode: mode.value for mode in Mode}  # Enum.value is a slow property lookup


@_logged_finish
def finish_review(pending: PendingReview, lookup: Lookup, settings: MutationSettings) -> Outcome:
    # Resolved once per ServiceAccount entry by the store, under the server's settings.
    resolution = resolution_for(lookup, settings)
    identity = resolution.identity
    if identity is None:
        reason = _no_identity_reason(pending, lookup, settings)
        outcome = _allow(pending.api_version, pending.uid, reason)
        outcome.missing_service_account = (
            lookup.service_account is None and lookup.config_map is None
        )
    elif (too_large := container_count_error(pending.pod)) is not None:
        # Bounded work per review: denied before planning, so one request cannot stall every
        # other pod's admission (the denial is logged with the pod's names, as every denial).
        outcome = reject(f"cannot mutate pod: {too_large}", pending.api_version, pending.uid)
    else:
        plan: Plan = plan_mutation(
            pending.pod,
            pending.namespace,
            identity,
            settings,
            lambda: uid_jitter(pending.uid),
            resolution.recipes,
        )
        warnings = (
            identity_warnings(identity, pending.namespace, pending.service_account)
            if resolution.warns
            else []
        )
        if plan.warnings:
            warnings += plan.warnings
        patch = plan.patch
        return Outcome(
            allowed_body(pending.api_version, pending.uid, patch, warnings),
            True,
            pending.uid,
            pending.namespace,
            pending.pod_name,
            pending.service_account,
            bool(patch),
            _METHOD[identity.mode],
            False,
            "mutated" if patch else "already has its identity",
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
