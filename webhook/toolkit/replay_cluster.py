"""`replay --from-cluster`: what a pod created now would get, for every running workload.

Read-only: lists ServiceAccounts, Namespaces, running pods and (with ConfigMap mode) the
webhook's ConfigMap, then GETs each pod's controller up to its workload (Pod -> ReplicaSet ->
Deployment, Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet). Each workload is replayed
once, from its pod template, as `replay` replays a manifest; a pod without a controller is
replayed as it is. Pods of controllers replay does not know (operators' custom kinds) are
replayed as they are too, since their template is not readable in a known shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from webhook.toolkit.audit_cluster import Cluster, collect
from webhook.toolkit.manifests import WORKLOAD_KINDS

# kind -> (API group/version path, resource) for the objects a pod's owner chain passes through.
_PATHS = {
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "CronJob": ("/apis/batch/v1", "cronjobs"),
}
_API_VERSIONS = {"/apis/apps/v1": "apps/v1", "/apis/batch/v1": "batch/v1"}


@dataclass(slots=True)
class ClusterInputs:
    objects: list[dict[str, Any]]  # ServiceAccounts, Namespaces, the ConfigMap: for --objects
    workloads: list[dict[str, Any]]  # workload manifests and bare pods: for the inputs
    pods_seen: int = 0
    notes: list[str] = field(default_factory=list)


def _controller(obj: dict[str, Any]) -> tuple[str, str] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def _with_kind(obj: dict[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    # Objects in a list answer carry no kind of their own.
    return {"apiVersion": api_version, "kind": kind, **obj}


class _Owners:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cache: dict[tuple[str, str, str], dict[str, Any] | None] = {}

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        key = (namespace, kind, name)
        if key not in self.cache:
            group, resource = _PATHS[kind]
            found = self.cluster.get_optional(
                f"{group}/namespaces/{quote(namespace, safe='')}/{resource}/{quote(name, safe='')}"
            )
            self.cache[key] = _with_kind(found, kind, _API_VERSIONS[group]) if found else None
        return self.cache[key]

    def workload(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        """The top workload above the pod, or None (no controller, or one we cannot read)."""
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        ref = _controller(pod)
        found: dict[str, Any] | None = None
        while ref is not None and ref[0] in _PATHS:
            parent = self.get(namespace, *ref)
            if parent is None:
                break  # deleted meanwhile: the last one found stands
            found = parent
            ref = _controller(parent)
        return found if found is not None and found["kind"] in WORKLOAD_KINDS else None


def read_cluster(
    cluster: Cluster, *, namespaces: Sequence[str] = (), config_map_namespace: str | None = None
) -> ClusterInputs:
    snapshot = collect(cluster, namespaces=namespaces, config_map_namespace=config_map_namespace)
    objects = [_with_kind(sa, "ServiceAccount", "v1") for sa in snapshot.service_accounts]
    objects += [_with_kind(ns, "Namespace", "v1") for ns in cluster.list_all("/api/v1/namespaces")]
    if snapshot.config_map is not None:
        objects.append(_with_kind(snapshot.config_map, "ConfigMap", "v1"))
    owners = _Owners(cluster)
    workloads: dict[tuple[str, str, str], dict[str, Any]] = {}
    result = ClusterInputs(objects, [], pods_seen=len(snapshot.pods))
    for pod in snapshot.pods:
        meta = pod.get("metadata") or {}
        workload = owners.workload(pod)
        if workload is None:
            controller = _controller(pod)
            if controller is not None and controller[0] not in _PATHS:
                result.notes.append(
                    f"{meta.get('namespace')}/{meta.get('name')}: owned by a {controller[0]}; "
                    "replayed as the pod it is"
                )
            workload = _with_kind({**pod, "status": {}}, "Pod", "v1")
        wmeta = workload.get("metadata") or {}
        key = (str(workload["kind"]), str(wmeta.get("namespace")), str(wmeta.get("name")))
        workloads.setdefault(key, workload)
    result.workloads = [workloads[k] for k in sorted(workloads)]
    return result
