"""Small builders for pods and AdmissionReviews used across the specifications."""

from __future__ import annotations

import base64
import copy
from typing import Any

import jsonpatch
import orjson

from webhook.core.identity import Identity, Lookup, entry_from_annotations
from webhook.core.mutation import Plan, plan_mutation
from webhook.core.settings import MutationSettings
from webhook.review import review
from webhook.sources.store import IdentityStore

ROLE = "arn:aws:iam::111122223333:role/app"
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def container(name: str = "app", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", **fields}


def pod(*containers: dict[str, Any], sa: str = "app", **spec: Any) -> dict[str, Any]:
    meta = spec.pop("metadata", {"name": "pod-1"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "serviceAccountName": sa,
            "containers": list(containers) or [container()],
            **spec,
        },
    }


def admission_review(
    obj: Any,
    *,
    namespace: str = "default",
    version: str = "admission.k8s.io/v1",
    operation: str = "CREATE",
    uid: str = "uid-1",
    kind: str = "Pod",
    group: str = "",
    resource: str = "pods",
    **request: Any,
) -> dict[str, Any]:
    """A review shaped like the API server's, for `obj` (usually a pod)."""
    return {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            **request,
        },
    }


def web_identity(settings: MutationSettings | None = None, **annotations: str) -> Identity:
    from webhook.core.identity import resolve_identity

    settings = settings or MutationSettings()
    notes = {
        f"{settings.annotation_prefix}/{k.replace('_', '-')}": v for k, v in annotations.items()
    }
    notes.setdefault(settings.role_arn_key, ROLE)
    identity = resolve_identity(
        Lookup(service_account=entry_from_annotations(notes, settings)), settings
    )
    assert identity is not None
    return identity


def plan(
    p: dict[str, Any],
    identity: Identity,
    settings: MutationSettings | None = None,
    jitter: int = 80000,
) -> Plan:
    return plan_mutation(p, "default", identity, settings or MutationSettings(), lambda: jitter)


def apply(p: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    return jsonpatch.apply_patch(copy.deepcopy(p), operations)  # type: ignore[no-any-return]


def mutate(
    p: dict[str, Any], identity: Identity, settings: MutationSettings | None = None
) -> dict[str, Any]:
    return apply(p, plan(p, identity, settings).operations)


def env_of(p: dict[str, Any], index: int = 0, kind: str = "containers") -> list[tuple[str, str]]:
    return [(e["name"], e.get("value", "")) for e in p["spec"][kind][index].get("env") or []]


def store_with(
    settings: MutationSettings | None = None, **accounts: dict[str, str]
) -> IdentityStore:
    """A store with ServiceAccounts in namespace default; keys are SA names."""
    store = IdentityStore(settings or MutationSettings())
    store.replace_service_accounts(("default", name, ann) for name, ann in accounts.items())
    return store


def respond(body: dict[str, Any] | bytes, store: IdentityStore) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    result: dict[str, Any] = orjson.loads(review(raw, store, store.settings).body)
    return result


def patch_of(response: dict[str, Any]) -> list[Any]:
    encoded = response["response"].get("patch")
    return orjson.loads(base64.b64decode(encoded)) if encoded else []
