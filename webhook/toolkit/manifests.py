"""Manifests to admission reviews: the pod CREATE the API server would send for a workload.

A Pod becomes its own review. A workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
CronJob) becomes the review for the first pod its controller would create from the template,
built as kube-controller-manager builds it (`controller.GetPodFromTemplate` and each
controller's additions, read from Kubernetes v1.37): template labels, annotations and
finalizers, the controller's own labels, `generateName` from the owner's name, the owner
reference, and the ServiceAccount admission plugin's `default`, which runs before webhooks.

Not reproduced: API defaulting of fields the webhook does not read (imagePullPolicy, ...), the
`kube-api-access-*` volume, and the exact value of hashes the controllers compute from Go
structs (`pod-template-hash`, `controller-revision-hash`): ours are stable hashes of the
template in the same alphabet, so names look alike and stay the same between runs.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

V1 = "admission.k8s.io/v1"
# Kinds that hold a pod template, and where: CronJob nests a Job template.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
# The Go name generator's alphabet (k8s.io/apimachinery/pkg/util/rand.SafeEncodeString).
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# The tolerations the DaemonSet controller adds to every pod (util.AddOrUpdateDaemonPodTolerations).
_DAEMON_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_DAEMON_HOST_NETWORK_TOLERATION = ("node.kubernetes.io/network-unavailable", "NoSchedule")
# Who creates the pod: the controller's ServiceAccount, as the API server's userInfo shows it.
_CREATOR = {
    "Deployment": "replicaset-controller",
    "ReplicaSet": "replicaset-controller",
    "StatefulSet": "statefulset-controller",
    "DaemonSet": "daemon-set-controller",
    "Job": "job-controller",
    "CronJob": "job-controller",
}
_API_VERSION = {
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}


class ManifestError(ValueError):
    """A workload whose pod template cannot be read."""


@dataclass(frozen=True, slots=True)
class PodReview:
    review: dict[str, Any]
    origin: str  # "Deployment default/web", for people


def is_pod_source(document: Any) -> bool:
    return isinstance(document, dict) and (
        document.get("kind") == "Pod" or document.get("kind") in WORKLOAD_KINDS
    )


def safe_hash(*parts: str) -> str:
    """A stable 10-character name suffix in the controllers' alphabet."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:10])


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _prefix(owner: str) -> str:
    # getPodsPrefix: "<owner>-" unless that is too long a name, then the owner's name alone.
    prefix = f"{owner}-"
    return prefix if len(prefix) <= 253 else owner


def _uid(kind: str, namespace: str, name: str, meta: dict[str, Any]) -> str:
    given = meta.get("uid")
    if isinstance(given, str) and given:
        return given
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"piw-replay:{kind}/{namespace}/{name}"))


def _created(meta: dict[str, Any], now: datetime) -> datetime:
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, datetime):  # YAML reads an unquoted timestamp as one
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            pass
    return now


def _owner_ref(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _from_template(template: Any, where: str) -> dict[str, Any]:
    """GetPodFromTemplate: labels, annotations, finalizers and a deep copy of the spec."""
    template = _dict(template)
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"{where} has no pod template spec")
    meta = _dict(template.get("metadata"))
    pod_meta: dict[str, Any] = {"labels": dict(_dict(meta.get("labels")))}
    for field in ("annotations", "finalizers"):
        if meta.get(field):
            pod_meta[field] = copy.deepcopy(meta[field])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(spec)}


def _default_service_account(pod: dict[str, Any]) -> None:
    """API defaulting copies the deprecated `serviceAccount`; the ServiceAccount admission
    plugin, which runs before webhooks, fills in `default`."""
    spec = pod["spec"]
    if not spec.get("serviceAccountName"):
        deprecated = spec.get("serviceAccount")
        spec["serviceAccountName"] = (
            deprecated if isinstance(deprecated, str) and deprecated else "default"
        )


def _workload_pod(
    kind: str, name: str, namespace: str, meta: dict[str, Any], spec: dict[str, Any], now: datetime
) -> dict[str, Any]:
    uid = _uid(kind, namespace, name, meta)
    where = f"{kind} {namespace}/{name}"
    if kind == "CronJob":
        job_template = _dict(spec.get("jobTemplate"))
        # The CronJob controller names each Job after its scheduled time in minutes; the
        # schedule is not evaluated: the creation time (when given, so output is stable) or now.
        job_name = f"{name}-{int(_created(meta, now).timestamp()) // 60}"
        job_uid = _uid("Job", namespace, job_name, {})
        return _job_pod(job_name, job_uid, _dict(job_template.get("spec")), where)
    if kind == "Job":
        return _job_pod(name, uid, spec, where)
    template = spec.get("template")
    pod = _from_template(template, where)
    labels: dict[str, Any] = pod["metadata"]["labels"]
    template_hash = safe_hash(_canonical(template))
    owner = _owner_ref(_API_VERSION[kind], kind, name, uid)
    if kind == "Deployment":
        replica_set = f"{name}-{template_hash}"
        labels["pod-template-hash"] = template_hash
        rs_uid = _uid("ReplicaSet", namespace, replica_set, {})
        owner = _owner_ref("apps/v1", "ReplicaSet", replica_set, rs_uid)
        pod["metadata"]["generateName"] = _prefix(replica_set)
    elif kind == "ReplicaSet":
        pod["metadata"]["generateName"] = _prefix(name)
    elif kind == "StatefulSet":
        ordinal = int(_dict(spec.get("ordinals")).get("start") or 0)
        pod_name = f"{name}-{ordinal}"
        pod["metadata"]["name"] = pod_name
        labels["controller-revision-hash"] = f"{name}-{template_hash}"
        labels["statefulset.kubernetes.io/pod-name"] = pod_name
        labels["apps.kubernetes.io/pod-index"] = str(ordinal)
        pod["spec"]["hostname"] = pod_name
        if spec.get("serviceName"):
            pod["spec"]["subdomain"] = spec["serviceName"]
        _claim_volumes(pod, name, ordinal, spec.get("volumeClaimTemplates"))
    elif kind == "DaemonSet":
        pod["metadata"]["generateName"] = _prefix(name)
        labels["controller-revision-hash"] = template_hash
        labels["pod-template-generation"] = str(meta.get("generation") or 1)
        _daemon_tolerations(pod)
    pod["metadata"]["ownerReferences"] = [owner]
    return pod


def _job_pod(name: str, uid: str, spec: dict[str, Any], where: str) -> dict[str, Any]:
    pod = _from_template(spec.get("template"), where)
    labels = pod["metadata"]["labels"]
    # The Job API adds these to the template at creation; pods inherit them.
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
    )
    prefix = _prefix(name)
    if spec.get("completionMode") == "Indexed":
        # The first index: its annotation and label, the env var that reads it, the hostname.
        labels[_COMPLETION_INDEX] = "0"
        pod["metadata"].setdefault("annotations", {})[_COMPLETION_INDEX] = "0"
        for group in ("initContainers", "containers"):
            for container in pod["spec"].get(group) or []:
                env = container.setdefault("env", [])
                if not any(_dict(v).get("name") == "JOB_COMPLETION_INDEX" for v in env):
                    field = f"metadata.labels['{_COMPLETION_INDEX}']"
                    env.append(
                        {
                            "name": "JOB_COMPLETION_INDEX",
                            "valueFrom": {"fieldRef": {"fieldPath": field}},
                        }
                    )
        pod["spec"]["hostname"] = f"{name}-0"
        prefix = f"{name}-0-"
    pod["metadata"]["generateName"] = prefix
    finalizers = pod["metadata"].setdefault("finalizers", [])
    finalizers.append("batch.kubernetes.io/job-tracking")
    pod["metadata"]["ownerReferences"] = [_owner_ref("batch/v1", "Job", name, uid)]
    return pod


def _claim_volumes(pod: dict[str, Any], set_name: str, ordinal: int, claims: Any) -> None:
    """updateStorage: one PVC volume per claim template, replacing a same-named volume."""
    if not isinstance(claims, list) or not claims:
        return
    names = [_dict(_dict(c).get("metadata")).get("name") for c in claims]
    volumes = [
        {"name": n, "persistentVolumeClaim": {"claimName": f"{n}-{set_name}-{ordinal}"}}
        for n in names
        if isinstance(n, str) and n
    ]
    kept = [v for v in pod["spec"].get("volumes") or [] if _dict(v).get("name") not in names]
    pod["spec"]["volumes"] = volumes + kept


def _daemon_tolerations(pod: dict[str, Any]) -> None:
    wanted = list(_DAEMON_TOLERATIONS)
    if pod["spec"].get("hostNetwork"):
        wanted.append(_DAEMON_HOST_NETWORK_TOLERATION)
    tolerations = list(pod["spec"].get("tolerations") or [])
    for key, effect in wanted:
        if not any(
            _dict(t).get("key") == key and _dict(t).get("effect") == effect for t in tolerations
        ):
            tolerations.append({"key": key, "operator": "Exists", "effect": effect})
    pod["spec"]["tolerations"] = tolerations


def pod_review(
    document: dict[str, Any], default_namespace: str, now: datetime | None = None
) -> PodReview:
    """The pod CREATE review for a Pod or workload manifest (see the module docstring)."""
    kind = document.get("kind")
    meta = _dict(document.get("metadata"))
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    namespace = namespace or default_namespace
    if kind == "Pod":
        pod = copy.deepcopy(document)
        if not isinstance(pod.get("spec"), dict):
            raise ManifestError(f"Pod {namespace}/{name or '?'} has no spec")
        user = "kubernetes-admin"
        who = name or meta.get("generateName")
        origin = f"Pod {namespace}/{who or '?'}"
    elif kind in WORKLOAD_KINDS:
        if not name:
            raise ManifestError(f"a {kind} without metadata.name")
        spec = document.get("spec")
        if not isinstance(spec, dict):
            raise ManifestError(f"{kind} {namespace}/{name} has no spec")
        pod = _workload_pod(kind, name, namespace, meta, spec, now or datetime.now(UTC))
        user = f"system:serviceaccount:kube-system:{_CREATOR[kind]}"
        origin = f"{kind} {namespace}/{name}"
    else:
        raise ManifestError(f"a {kind} holds no pod")
    pod.setdefault("metadata", {})["namespace"] = namespace
    _default_service_account(pod)
    pod_name = pod["metadata"].get("name") or ""
    review = {
        "apiVersion": V1,
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"piw-replay:pod:{origin}")),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            # Pods named by generateName reach admission without a name.
            "name": pod_name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": user},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    return PodReview(review, origin)
