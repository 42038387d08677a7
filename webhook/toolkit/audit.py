"""`audit`: which ServiceAccounts have an AWS role, and which running pods lack it.

Pure functions over the raw JSON the API server returns (ServiceAccounts, the
pod-identity-webhook ConfigMap, pods, and the ReplicaSets/Jobs between pods and their
workloads); the cluster I/O lives in `webhook.toolkit.audit_cluster`.

Roles are resolved exactly as the webhook resolves them (`resolve_identity`: container
credentials, then the ServiceAccount annotation, then the ConfigMap), so the inventory shows
what a pod created now would get. A running pod "lacks its role" when the webhook would mutate
it but it carries neither the token volume nor, in every container the webhook mutates, the
credential environment: it was created before the role was assigned or while the webhook was
down, and its SDK silently falls back to the node's role.

Steps (the cluster layer runs them with I/O in between; `audit` runs them all at once):

    inventory = build_inventory(service_accounts, settings, config_map=...)
    gaps = find_gaps(pods, inventory, settings)
    owners = {key: GET(key) for key in owner_lookups(gaps)}     # ReplicaSets, Jobs
    report = build_report(inventory, gaps, owners)
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from webhook.core.configmap import EMPTY_INDEX, ConfigMapError, ConfigMapIndex, parse_config
from webhook.core.identity import (
    Lookup,
    Mode,
    entry_from_annotations,
    is_valid_role_arn,
    resolve_identity,
)
from webhook.core.mutation import (
    CONTAINER_AUTHORIZATION_TOKEN_FILE,
    CONTAINER_CREDENTIALS_FULL_URI,
    ROLE_ARN,
    WEB_IDENTITY_TOKEN_FILE,
    containers_to_skip,
)
from webhook.core.settings import CONFIG_MAP_NAME, WEB_IDENTITY_VOLUME_NAME, MutationSettings
from webhook.toolkit.render import Finding, Severity, has_errors, summarize

Obj = Mapping[str, Any]
ObjectKey = tuple[str, str, str]  # (namespace, kind, name)

RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# kind -> resource of the workloads `kubectl rollout restart` handles (all in apps/v1)
RESTARTABLE = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}
# Controllers between a pod and the workload a person manages: kind -> (apiVersion, resource)
INTERMEDIATE = {"ReplicaSet": ("apps/v1", "replicasets"), "Job": ("batch/v1", "jobs")}
DONE_PHASES = frozenset({"Succeeded", "Failed"})
SOURCES = ("annotation", "configmap", "container-credentials")

_WEB_IDENTITY_ENV = frozenset({ROLE_ARN, WEB_IDENTITY_TOKEN_FILE})
_CONTAINER_CREDENTIALS_ENV = frozenset(
    {CONTAINER_CREDENTIALS_FULL_URI, CONTAINER_AUTHORIZATION_TOKEN_FILE}
)
_MAX_LISTED = 5  # names listed in one finding message before "and N more"


# --- inventory -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """The identity a pod of this ServiceAccount gets from the webhook now."""

    namespace: str
    service_account: str
    role_arn: str  # "" in container credentials (EKS Pod Identity) mode
    audience: str
    expiration: int
    source: str  # one of SOURCES
    mode: Mode

    @property
    def role_name(self) -> str:
        """Last path segment of the ARN: arn:aws:iam::1:role/team/app -> app."""
        return self.role_arn.rsplit("/", 1)[-1]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.service_account)


@dataclass(frozen=True, slots=True)
class Inventory:
    assignments: tuple[RoleAssignment, ...]
    findings: tuple[Finding, ...]
    # False: the container credentials file was not given, so which ServiceAccounts use EKS
    # Pod Identity is unknown and pods injected that way are accepted.
    container_credentials_known: bool = False

    def lookup(self, namespace: str, service_account: str) -> RoleAssignment | None:
        for assignment in self.assignments:
            if assignment.key == (namespace, service_account):
                return assignment
        return None

    def by_key(self) -> dict[tuple[str, str], RoleAssignment]:
        return {a.key: a for a in self.assignments}


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f" and {len(names) - _MAX_LISTED} more"
    return shown


def _parse_config_map(
    config_map: Obj | None,
    settings: MutationSettings,
    expected: bool,
    where: str,
    findings: list[Finding],
) -> ConfigMapIndex:
    if config_map is None:
        if expected:
            findings.append(
                Finding(
                    Severity.INFO,
                    "configmap-missing",
                    "--watch-config-map is set but the ConfigMap does not exist: roles come "
                    "from ServiceAccount annotations only",
                    where,
                )
            )
        return EMPTY_INDEX
    data = config_map.get("data") or {}
    try:
        index = parse_config(data.get("config"), settings)
    except ConfigMapError as err:
        findings.append(
            Finding(
                Severity.ERROR,
                "configmap-invalid",
                f"the webhook rejects this ConfigMap and keeps its previous entries (or none "
                f"after a restart): {err}",
                where,
            )
        )
        return EMPTY_INDEX
    for warning in index.warnings:
        findings.append(Finding(Severity.WARNING, "configmap-key", warning, where))
    return index


def build_inventory(
    service_accounts: Iterable[Obj],
    settings: MutationSettings,
    *,
    config_map: Obj | None = None,
    config_map_expected: bool = False,
    config_map_namespace: str = "eks",
    container_credentials: Collection[tuple[str, str]] | None = None,
    namespaces: Collection[str] | None = None,
) -> Inventory:
    """The role of every ServiceAccount, plus findings about roles and the ConfigMap.

    `config_map` is the pod-identity-webhook ConfigMap when the webhook watches it
    (--watch-config-map), `config_map_expected` says it should exist; `container_credentials`
    the (namespace, serviceAccount) pairs of --watch-container-credentials-config, None when
    unknown; `namespaces` limits ConfigMap-only findings to the audited namespaces."""
    findings: list[Finding] = []
    where = f"configmap {config_map_namespace}/{CONFIG_MAP_NAME}"
    index = _parse_config_map(config_map, settings, config_map_expected, where, findings)
    pairs = frozenset(container_credentials or ())
    assignments: list[RoleAssignment] = []
    seen: set[tuple[str, str]] = set()
    for account in service_accounts:
        meta = _meta(account)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        seen.add((namespace, name))
        annotations = meta.get("annotations") or {}
        entry = entry_from_annotations(annotations, settings)
        identity = resolve_identity(
            Lookup(
                service_account=entry,
                config_map=index.lookup(namespace, name) if index else None,
                config_map_exact=index.lookup_exact(namespace, name) if index else None,
                container_credentials=(namespace, name) in pairs,
            ),
            settings,
        )
        if identity is None:
            continue
        assignments.append(
            RoleAssignment(
                namespace=namespace,
                service_account=name,
                role_arn=identity.role_arn,
                audience=identity.audience,
                expiration=identity.token_expiration,
                source=identity.source.value,
                mode=identity.mode,
            )
        )
        shadowed = index.lookup(namespace, name) if index else None
        if (
            identity.source.value == "annotation"
            and shadowed is not None
            and shadowed.role_arn
            and shadowed.role_arn != identity.role_arn
        ):
            findings.append(
                Finding(
                    Severity.INFO,
                    "configmap-shadowed",
                    f"the ServiceAccount's annotation ({identity.role_arn}) takes precedence "
                    f"over the ConfigMap's role {shadowed.role_arn}",
                    f"{namespace}/{name}",
                )
            )
    assignments.sort(key=lambda a: a.key)
    findings += _role_findings(assignments)
    for (namespace, name), entry in sorted(index.exact.items()):
        if entry.role_arn and (namespace, name) not in seen:
            if namespaces is not None and namespace not in namespaces:
                continue
            findings.append(
                Finding(
                    Severity.INFO,
                    "configmap-unused",
                    f"ConfigMap entry {namespace}/{name} ({entry.role_arn}) names a "
                    "ServiceAccount that does not exist",
                    where,
                )
            )
    return Inventory(
        tuple(assignments),
        tuple(findings),
        container_credentials_known=container_credentials is not None,
    )


def _role_findings(assignments: Sequence[RoleAssignment]) -> list[Finding]:
    findings: list[Finding] = []
    users: dict[str, list[str]] = defaultdict(list)
    for a in assignments:
        if a.mode is not Mode.WEB_IDENTITY:
            continue
        users[a.role_arn].append(f"{a.namespace}/{a.service_account}")
        if not is_valid_role_arn(a.role_arn):
            findings.append(
                Finding(
                    Severity.ERROR,
                    "invalid-role-arn",
                    f"role ARN {a.role_arn!r} (from the {a.source}) is not a valid IAM role ARN "
                    "(expected arn:<partition>:iam::<12-digit account>:role/<name>): the webhook "
                    "injects it as given and STS rejects it",
                    f"{a.namespace}/{a.service_account}",
                )
            )
    for arn, accounts in sorted(users.items()):
        if len(accounts) > 1:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "shared-role",
                    f"role {arn} is used by {len(accounts)} ServiceAccounts: {', '.join(accounts)}"
                    "; its trust policy must allow each of them, and they all share its "
                    "permissions",
                    arn,
                )
            )
    return findings


# --- pods ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodGap:
    """A running pod whose injection does not match its ServiceAccount's role."""

    namespace: str
    name: str
    service_account: str
    role_arn: str  # the role it should have ("" for EKS Pod Identity)
    missing: tuple[str, ...]  # not-injected: what is absent
    created: str
    controller: tuple[str, str, str] | None  # (apiVersion, kind, name) of its controller
    current_role: str = ""  # role-changed: the AWS_ROLE_ARN the pod runs with

    @property
    def controller_label(self) -> str:
        return f"{self.controller[1]}/{self.controller[2]}" if self.controller else ""

    def to_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "name": self.name,
            "serviceAccount": self.service_account,
            "roleArn": self.role_arn,
            "created": self.created,
            "controller": self.controller_label or None,
        }
        if self.current_role:
            result["currentRoleArn"] = self.current_role
        else:
            result["missing"] = list(self.missing)
        return result


@dataclass(frozen=True, slots=True)
class Gaps:
    not_injected: tuple[PodGap, ...]
    role_changed: tuple[PodGap, ...]
    pods_checked: int  # running pods whose ServiceAccount has an identity


def pod_service_account(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def controller_ref(obj: Obj) -> Mapping[str, Any] | None:
    """The ownerReference with controller=true, as kubectl and the controllers use it."""
    for ref in _meta(obj).get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller"):
            return ref
    return None


def _is_running(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in DONE_PHASES and not _meta(pod).get("deletionTimestamp")


def _containers(pod: Obj, settings: MutationSettings) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, container) of the containers the webhook mutates: not skipped, init first."""
    spec = pod.get("spec") or {}
    skip = containers_to_skip(_meta(pod).get("annotations") or {}, settings)
    found = []
    for list_name, label in (("initContainers", "init container"), ("containers", "container")):
        for container in spec.get(list_name) or ():
            name = container.get("name")
            if name not in skip:
                found.append((f"{label} {name}", container))
    return found


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(var.get("name")): var for var in container.get("env") or ()}


def _has_volume(pod: Obj, name: str) -> bool:
    return any(v.get("name") == name for v in (pod.get("spec") or {}).get("volumes") or ())


def missing_injection(
    pod: Obj, settings: MutationSettings, mode: Mode = Mode.WEB_IDENTITY
) -> list[str]:
    """What the webhook would add but the pod lacks: the token volume, and for each mutated
    container the credential environment. A container counts as injected when it has either
    variable of the pair, the webhook's own test (it never overrides what is set)."""
    if mode is Mode.CONTAINER_CREDENTIALS:
        volume, env_names = settings.container_credentials.volume_name, _CONTAINER_CREDENTIALS_ENV
    else:
        volume, env_names = WEB_IDENTITY_VOLUME_NAME, _WEB_IDENTITY_ENV
    missing = [] if _has_volume(pod, volume) else [f"volume {volume}"]
    for label, container in _containers(pod, settings):
        if env_names.isdisjoint(_env(container)):
            missing.append(f"env {'/'.join(sorted(env_names))} in {label}")
    return missing


def _running_role(pod: Obj, settings: MutationSettings) -> str:
    """The literal AWS_ROLE_ARN of the first mutated container that has one."""
    for _, container in _containers(pod, settings):
        var = _env(container).get(ROLE_ARN)
        if var is not None and isinstance(var.get("value"), str):
            return str(var["value"])
    return ""


def find_gaps(pods: Iterable[Obj], inventory: Inventory, settings: MutationSettings) -> Gaps:
    """Running pods (not Succeeded, Failed or terminating) of ServiceAccounts with a role that
    lack the injection (not-injected), or run with another role than the one assigned now
    (role-changed). Pods of ServiceAccounts without a role are not looked at."""
    assignments = inventory.by_key()
    not_injected: list[PodGap] = []
    role_changed: list[PodGap] = []
    checked = 0
    for pod in pods:
        if not _is_running(pod):
            continue
        meta = _meta(pod)
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        service_account = pod_service_account(pod)
        assignment = assignments.get((namespace, service_account))
        if assignment is None:
            continue
        checked += 1
        ref = controller_ref(pod)
        base = PodGap(
            namespace=namespace,
            name=name,
            service_account=service_account,
            role_arn=assignment.role_arn,
            missing=(),
            created=str(meta.get("creationTimestamp") or ""),
            controller=(
                (str(ref.get("apiVersion") or ""), str(ref.get("kind")), str(ref.get("name")))
                if ref
                else None
            ),
        )
        missing = missing_injection(pod, settings, assignment.mode)
        if missing and not (
            # The webhook prefers EKS Pod Identity; when the audit was not told which
            # ServiceAccounts use it, a pod injected that way is taken as correctly injected.
            not inventory.container_credentials_known
            and not missing_injection(pod, settings, Mode.CONTAINER_CREDENTIALS)
        ):
            not_injected.append(replace(base, missing=tuple(missing)))
            continue
        if assignment.mode is Mode.WEB_IDENTITY and not missing:
            running = _running_role(pod, settings)
            if running and running != assignment.role_arn:
                role_changed.append(replace(base, current_role=running))
    return Gaps(tuple(not_injected), tuple(role_changed), checked)


# --- owners --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Owner:
    """The workload to restart for a pod: Deployment, StatefulSet, DaemonSet, Job, CronJob,
    any other controller, or the pod itself (kind "Pod") when it has no controller."""

    namespace: str
    kind: str
    name: str
    api_version: str = "v1"

    @property
    def restartable(self) -> bool:
        return self.kind in RESTARTABLE and self.api_version.startswith("apps/")

    @property
    def label(self) -> str:
        return f"bare pod {self.name}" if self.kind == "Pod" else f"{self.kind}/{self.name}"

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"

    @property
    def path(self) -> str:
        """API path of a restartable workload."""
        return f"/apis/apps/v1/namespaces/{self.namespace}/{RESTARTABLE[self.kind]}/{self.name}"

    def to_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "kind": self.kind,
            "name": self.name,
            "apiVersion": self.api_version,
        }


def owner_lookups(gaps: Iterable[PodGap]) -> set[ObjectKey]:
    """The ReplicaSets and Jobs to GET to find the workloads above these pods."""
    return {
        (gap.namespace, gap.controller[1], gap.controller[2])
        for gap in gaps
        if gap.controller and gap.controller[1] in INTERMEDIATE
    }


def intermediate_path(key: ObjectKey) -> str:
    namespace, kind, name = key
    api_version, resource = INTERMEDIATE[kind]
    return f"/apis/{api_version}/namespaces/{namespace}/{resource}/{name}"


def resolve_owner(gap: PodGap, fetched: Mapping[ObjectKey, Obj | None]) -> Owner:
    """Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet/...,
    or the bare pod. A ReplicaSet or Job that was not fetched (deleted) is the owner itself."""
    if gap.controller is None:
        return Owner(gap.namespace, "Pod", gap.name)
    api_version, kind, name = gap.controller
    parent = fetched.get((gap.namespace, kind, name)) if kind in INTERMEDIATE else None
    if parent is not None:
        ref = controller_ref(parent)
        if ref is not None:
            return Owner(
                gap.namespace,
                str(ref.get("kind")),
                str(ref.get("name")),
                str(ref.get("apiVersion")),
            )
    return Owner(gap.namespace, kind, name, api_version)


@dataclass(frozen=True, slots=True)
class WorkloadGap:
    owner: Owner
    pods: tuple[PodGap, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            **self.owner.to_dict(),
            "restartable": self.owner.restartable,
            "pods": [p.to_dict() for p in self.pods],
        }


def group_by_owner(
    gaps: Iterable[PodGap], fetched: Mapping[ObjectKey, Obj | None]
) -> list[WorkloadGap]:
    groups: dict[Owner, list[PodGap]] = defaultdict(list)
    for gap in gaps:
        groups[resolve_owner(gap, fetched)].append(gap)
    return [
        WorkloadGap(owner, tuple(sorted(pods, key=lambda p: p.name)))
        for owner, pods in sorted(groups.items())
    ]


# --- restarts ------------------------------------------------------------------------------


def manual_remedy(owner: Owner) -> str:
    """What to do for an owner `kubectl rollout restart` cannot restart."""
    if owner.kind == "Pod":
        return "a bare pod cannot be restarted: delete and recreate it"
    if owner.kind == "Job":
        return (
            "a Job cannot be restarted: let it finish, or delete and recreate it "
            "(its new pods get the role)"
        )
    if owner.kind == "CronJob":
        return (
            "the CronJob's next Job gets the role; to rerun now, delete the running Job and "
            f"`kubectl create job --from=cronjob/{owner.name}`"
        )
    if owner.kind in ("ReplicaSet", "ReplicationController"):
        return f"a {owner.kind} without a Deployment: delete its pods, it recreates them"
    return (
        f"{owner.kind} is not a Deployment, StatefulSet or DaemonSet: restart it with its own "
        "controller's tooling, or delete its pods"
    )


@dataclass(frozen=True, slots=True)
class RestartPlan:
    restart: tuple[Owner, ...]  # rolled by a restartedAt patch, as `kubectl rollout restart`
    manual: tuple[tuple[Owner, str], ...]  # (owner, what to do instead)

    def to_dict(self) -> dict[str, object]:
        return {
            "restart": [o.to_dict() for o in self.restart],
            "manual": [{**o.to_dict(), "remedy": remedy} for o, remedy in self.manual],
        }


def restart_plan(workloads: Iterable[WorkloadGap]) -> RestartPlan:
    owners = sorted({w.owner for w in workloads})
    return RestartPlan(
        restart=tuple(o for o in owners if o.restartable),
        manual=tuple((o, manual_remedy(o)) for o in owners if not o.restartable),
    )


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339 (what kubectl writes): seconds, `Z` for UTC, else the offset."""
    text = moment.replace(microsecond=0).isoformat()
    if moment.utcoffset() == timedelta(0):
        text = text.removesuffix("+00:00") + "Z"
    return text


def restart_patch(moment: datetime) -> dict[str, Any]:
    """The strategic-merge patch `kubectl rollout restart` sends."""
    return {
        "spec": {
            "template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: rfc3339(moment)}}}
        }
    }


# --- report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditReport:
    inventory: Inventory
    not_injected: tuple[WorkloadGap, ...]
    role_changed: tuple[WorkloadGap, ...]
    findings: tuple[Finding, ...]
    pods_checked: int

    @property
    def assignments(self) -> tuple[RoleAssignment, ...]:
        return self.inventory.assignments

    @property
    def failed(self) -> bool:
        return bool(self.not_injected) or has_errors(self.findings)

    @property
    def exit_code(self) -> int:
        """1 when pods run without their role or an error was found, else 0 (for CI)."""
        return 1 if self.failed else 0

    def restart_plan(self) -> RestartPlan:
        return restart_plan(self.not_injected)

    def not_injected_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for workload in self.not_injected:
            for pod in workload.pods:
                counts[(pod.namespace, pod.service_account)] += 1
        return counts

    def inventory_rows(self) -> list[dict[str, object]]:
        counts = self.not_injected_counts()
        return [
            {
                "namespace": a.namespace,
                "serviceAccount": a.service_account,
                "roleName": a.role_name,
                "roleArn": a.role_arn,
                "audience": a.audience,
                "expiration": a.expiration,
                "source": a.source,
                "podsNotInjected": counts.get(a.key, 0),
            }
            for a in self.assignments
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": not self.failed,
            "inventory": self.inventory_rows(),
            "notInjected": [w.to_dict() for w in self.not_injected],
            "roleChanged": [w.to_dict() for w in self.role_changed],
            "restartPlan": self.restart_plan().to_dict(),
            "podsChecked": self.pods_checked,
            "findings": [f.to_dict() for f in self.findings],
            "summary": summarize(self.findings),
        }


def _workload_findings(
    not_injected: Sequence[WorkloadGap], role_changed: Sequence[WorkloadGap]
) -> list[Finding]:
    findings = []
    for workload in not_injected:
        owner, pods = workload.owner, workload.pods
        roles = sorted({p.role_arn or "EKS Pod Identity" for p in pods})
        missing = sorted({m for p in pods for m in p.missing})
        remedy = (
            f"restart it: `kubectl rollout restart -n {owner.namespace} "
            f"{owner.kind.lower()}/{owner.name}` or `audit --restart`"
            if owner.restartable
            else manual_remedy(owner)
        )
        remedy = remedy[:1].upper() + remedy[1:]
        findings.append(
            Finding(
                Severity.ERROR,
                "not-injected",
                f"{len(pods)} running pod(s) of {owner.label} lack their role "
                f"{', '.join(roles)} ({'; '.join(missing)}): {_listed([p.name for p in pods])}. "
                "Created before the role was assigned or while the webhook was down, they use "
                f"the node's role. {remedy}",
                owner.where,
            )
        )
    for workload in role_changed:
        owner, pods = workload.owner, workload.pods
        pairs = sorted({(p.current_role, p.role_arn) for p in pods})
        changes = "; ".join(f"{old} -> {new}" for old, new in pairs)
        findings.append(
            Finding(
                Severity.WARNING,
                "role-changed",
                f"{len(pods)} running pod(s) of {owner.label} run with another role than their "
                f"ServiceAccount's ({changes}): {_listed([p.name for p in pods])}. If the role "
                "changed after they started, restart them; if AWS_ROLE_ARN is set in the pod "
                "spec, the webhook keeps it",
                owner.where,
            )
        )
    return findings


def build_report(
    inventory: Inventory, gaps: Gaps, owners: Mapping[ObjectKey, Obj | None]
) -> AuditReport:
    not_injected = group_by_owner(gaps.not_injected, owners)
    role_changed = group_by_owner(gaps.role_changed, owners)
    findings = [*inventory.findings, *_workload_findings(not_injected, role_changed)]
    return AuditReport(
        inventory=inventory,
        not_injected=tuple(not_injected),
        role_changed=tuple(role_changed),
        findings=tuple(findings),
        pods_checked=gaps.pods_checked,
    )


def audit(
    service_accounts: Iterable[Obj],
    pods: Iterable[Obj],
    settings: MutationSettings,
    *,
    owners: Mapping[ObjectKey, Obj | None] | None = None,
    config_map: Obj | None = None,
    config_map_expected: bool = False,
    config_map_namespace: str = "eks",
    container_credentials: Collection[tuple[str, str]] | None = None,
    namespaces: Collection[str] | None = None,
) -> AuditReport:
    """All steps at once, with the ReplicaSets/Jobs already at hand (keyed by ObjectKey)."""
    inventory = build_inventory(
        service_accounts,
        settings,
        config_map=config_map,
        config_map_expected=config_map_expected,
        config_map_namespace=config_map_namespace,
        container_credentials=container_credentials,
        namespaces=namespaces,
    )
    return build_report(inventory, find_gaps(pods, inventory, settings), owners or {})


# --- rendering -----------------------------------------------------------------------------

INVENTORY_COLUMNS = (
    ("namespace", "NAMESPACE"),
    ("serviceAccount", "SERVICEACCOUNT"),
    ("roleName", "ROLE"),
    ("roleArn", "ROLE ARN"),
    ("audience", "AUDIENCE"),
    ("expiration", "EXPIRATION"),
    ("source", "SOURCE"),
    ("podsNotInjected", "NOT INJECTED"),
)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """kubectl-style columns: left aligned, two spaces apart, no trailing blanks."""
    cells = [list(map(str, headers)), *([str(c) if c != "" else "-" for c in r] for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


# `-o table` leaves out what `-o wide` adds, as kubectl does: long values a person rarely needs.
_WIDE_ONLY = frozenset({"roleArn", "audience", "expiration"})


def render_table(report: AuditReport, wide: bool = False) -> str:
    columns = [c for c in INVENTORY_COLUMNS if wide or c[0] not in _WIDE_ONLY]
    lines = [f"ServiceAccounts with a role: {len(report.assignments)}"]
    if report.assignments:
        lines.append(
            format_table(
                [title for _, title in columns],
                ([row[key] for key, _ in columns] for row in report.inventory_rows()),
            )
        )
    pods = sum(len(w.pods) for w in report.not_injected)
    lines += [
        "",
        f"Running pods without their role: {pods} in {len(report.not_injected)} workload(s) "
        f"({report.pods_checked} pod(s) of ServiceAccounts with a role checked)",
    ]
    if report.not_injected:
        headers = ["NAMESPACE", "OWNER", "PODS", "SERVICEACCOUNT", "RESTART"]
        if wide:
            headers += ["POD NAMES", "MISSING"]
        rows = []
        for w in report.not_injected:
            row: list[object] = [
                w.owner.namespace,
                w.owner.label,
                len(w.pods),
                ",".join(sorted({p.service_account for p in w.pods})),
                "rollout restart" if w.owner.restartable else "manual",
            ]
            if wide:
                row.append(",".join(p.name for p in w.pods))
                row.append("; ".join(sorted({m for p in w.pods for m in p.missing})))
            rows.append(row)
        lines.append(format_table(headers, rows))
    return "\n".join(lines)


def render_csv(report: AuditReport) -> str:
    """The inventory, one row per ServiceAccount with a role (findings are not tabular)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [key for key, _ in INVENTORY_COLUMNS]
    writer.writerow(keys)
    for row in report.inventory_rows():
        writer.writerow([row[key] for key in keys])
    return buffer.getvalue()
