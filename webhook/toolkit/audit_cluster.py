"""Cluster I/O for `audit`: paginated lists, owner lookups and `rollout restart` patches.

Requests go through `webhook.sources.kube_client.KubeClient` (the kubernetes client's
configuration: kubeconfig, in-cluster service account, exec plugins, TLS; its rate limiter) as
raw JSON, with no model classes.

The analysis itself is pure and lives in `webhook.toolkit.audit`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson

from webhook.core.settings import CONFIG_MAP_NAME, MutationSettings
from webhook.sources.kube import PAGE_SIZE
from webhook.sources.kube_client import KubeAPIError, KubeClient
from webhook.toolkit import audit
from webhook.toolkit.audit import AuditReport, ObjectKey, Owner
from webhook.toolkit.kubeconfig import KubeconfigError
from webhook.toolkit.kubeconfig import configuration as kubeconfig_configuration

RUNNING_PODS = "status.phase!=Succeeded,status.phase!=Failed"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused a request; one clear line, no traceback."""


class ApiError(ClusterError):
    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _status_message(text: str) -> str:
    """The `message` of the Status body KubeAPIError carries, else its text as is."""
    detail = text.split(": HTTP ", 1)[-1].split(": ", 1)[-1]
    try:
        status = orjson.loads(detail)
    except orjson.JSONDecodeError:
        return detail.strip()
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return detail.strip()


def _connection_message(err: BaseException) -> str:
    # urllib3's MaxRetryError wraps the real cause in `reason`; its text ends with the part a
    # person needs ("[Errno 111] Connection refused", "certificate verify failed", ...).
    reason = getattr(err, "reason", None) or err
    text = str(reason)
    if "Failed to establish a new connection: " in text:
        text = text.split("Failed to establish a new connection: ", 1)[1].rstrip("')\"")
    return text or type(err).__name__


class Cluster:
    """Raw JSON requests against one API server. A context manager: leaving it closes the
    client's connections (the commands also run in-process, in tests and scripts)."""

    def __init__(self, client: KubeClient, timeout: float = 30.0) -> None:
        self.client = client
        self.timeout = timeout

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    @property
    def host(self) -> str:
        return str(getattr(self.client.api.configuration, "host", "") or "")

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON answer; ApiError on HTTP >= 400, ClusterError when unreachable."""
        try:
            return self.client.request_json(
                method, path, list(query), body, content_type, timeout=self.timeout
            )
        except KubeAPIError as err:
            raise ApiError(method, path, err.status, _status_message(str(err))) from None
        except orjson.JSONDecodeError:
            raise ClusterError(f"{method} {path}: the API server did not answer JSON") from None
        except Exception as err:
            raise ClusterError(
                f"cannot reach the Kubernetes API at {self.host}: {_connection_message(err)}"
            ) from None

    def list_all(self, path: str, query: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """Every item of a collection, PAGE_SIZE at a time; restarts once if the continue
        token expires (410) mid-way."""
        for attempt in (1, 2):
            items: list[dict[str, Any]] = []
            token = ""
            try:
                while True:
                    page_query = [*query, ("limit", str(PAGE_SIZE))]
                    if token:
                        page_query.append(("continue", token))
                    page = self.request("GET", path, page_query)
                    items += page.get("items") or []
                    token = (page.get("metadata") or {}).get("continue") or ""
                    if not token:
                        return items
            except ApiError as err:
                if err.status != 410 or not token or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def get_optional(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404)."""
        try:
            result: dict[str, Any] = self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return result


def connect(
    kubeconfig: str = "", api_url: str = "", timeout: float = 30.0, context: str = ""
) -> Cluster:
    """The cluster kubectl would talk to (`$KUBECONFIG`, `~/.kube/config`, `--context`, then
    in-cluster; see `webhook.toolkit.kubeconfig`)."""
    from kubernetes import client

    try:
        configuration = kubeconfig_configuration(kubeconfig, context, api_url)
    except KubeconfigError as err:
        raise ClusterError(str(err)) from None
    return Cluster(KubeClient(client.ApiClient(configuration)), timeout)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    service_accounts: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    config_map: dict[str, Any] | None


def _collection(group_path: str, resource: str, namespace: str | None) -> str:
    if namespace is None:
        return f"{group_path}/{resource}"
    return f"{group_path}/namespaces/{_q(namespace)}/{resource}"


def collect(
    cluster: Cluster, *, namespaces: Sequence[str] = (), config_map_namespace: str | None = None
) -> Snapshot:
    """ServiceAccounts and running pods (of `namespaces`, or all), and the ConfigMap when the
    webhook watches it (`config_map_namespace`)."""
    scopes: Sequence[str | None] = list(dict.fromkeys(namespaces)) or [None]
    service_accounts: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for scope in scopes:
        service_accounts += cluster.list_all(_collection("/api/v1", "serviceaccounts", scope))
        pods += cluster.list_all(
            _collection("/api/v1", "pods", scope), [("fieldSelector", RUNNING_PODS)]
        )
    config_map = None
    if config_map_namespace is not None:
        config_map = cluster.get_optional(
            f"/api/v1/namespaces/{_q(config_map_namespace)}/configmaps/{CONFIG_MAP_NAME}"
        )
    return Snapshot(service_accounts, pods, config_map)


def fetch_owners(
    cluster: Cluster, keys: Iterable[ObjectKey]
) -> dict[ObjectKey, dict[str, Any] | None]:
    """GET each ReplicaSet/Job once; None for those that no longer exist."""
    return {
        key: cluster.get_optional(audit.intermediate_path((_q(key[0]), key[1], _q(key[2]))))
        for key in sorted(set(keys))
    }


def run_audit(
    cluster: Cluster,
    settings: MutationSettings,
    *,
    namespaces: Sequence[str] = (),
    config_map_namespace: str | None = None,
    container_credentials: Collection[tuple[str, str]] | None = None,
) -> AuditReport:
    snapshot = collect(cluster, namespaces=namespaces, config_map_namespace=config_map_namespace)
    inventory = audit.build_inventory(
        snapshot.service_accounts,
        settings,
        config_map=snapshot.config_map,
        config_map_expected=config_map_namespace is not None,
        config_map_namespace=config_map_namespace or "",
        container_credentials=container_credentials,
        namespaces=set(namespaces) or None,
    )
    gaps = audit.find_gaps(snapshot.pods, inventory, settings)
    owners = fetch_owners(cluster, audit.owner_lookups(gaps.not_injected + gaps.role_changed))
    return audit.build_report(inventory, gaps, owners)


# --- restarting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestartResult:
    owner: Owner
    status: str  # "restarted", "skipped" or "failed"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "restarted"

    def to_dict(self) -> dict[str, object]:
        return {**self.owner.to_dict(), "status": self.status, "message": self.message}


def restart(cluster: Cluster, owner: Owner, moment: datetime) -> RestartResult:
    """`kubectl rollout restart`: a strategic-merge patch of the pod template's
    kubectl.kubernetes.io/restartedAt annotation. Paused Deployments are refused, as kubectl
    does; OnDelete StatefulSets/DaemonSets are patched but only replace deleted pods."""
    if not owner.restartable:
        return RestartResult(owner, "skipped", audit.manual_remedy(owner))
    path = f"/apis/apps/v1/namespaces/{_q(owner.namespace)}/{audit.RESTARTABLE[owner.kind]}/"
    path += _q(owner.name)
    try:
        current = cluster.get_optional(path)
        if current is None:
            return RestartResult(owner, "failed", "not found")
        spec = current.get("spec") or {}
        if owner.kind == "Deployment" and spec.get("paused"):
            return RestartResult(
                owner,
                "skipped",
                "can't restart paused deployment (run `kubectl rollout resume` first)",
            )
        cluster.request(
            "PATCH", path, body=audit.restart_patch(moment), content_type=STRATEGIC_MERGE_PATCH
        )
    except ClusterError as err:
        return RestartResult(owner, "failed", str(err))
    if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
        return RestartResult(
            owner, "restarted", "updateStrategy OnDelete: delete its pods to replace them"
        )
    return RestartResult(owner, "restarted")
