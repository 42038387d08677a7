"""From (pod, identity, settings) to the JSON patch: additions only, never rewrites.

Each operation adds one env var, mount, volume or label at a precise path, so applying the
patch yields exactly the original pod plus our additions; fields we do not know survive.
Order of additions, names and defaults follow upstream so swapped binaries produce equal pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.core.gocompat import csv_first_record, join_path
from webhook.core.identity import Identity, Mode, is_valid_role_arn, parse_expiration
from webhook.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    POD_IDENTITY_LABEL,
    WEB_IDENTITY_TOKEN_PATH,
    WEB_IDENTITY_VOLUME_NAME,
    MutationSettings,
    clamp_expiration,
    expiration_warning,
)
from webhook.core.wire import EnvVar, PatchOp, Pod, VolumeMount

ROLE_ARN = "AWS_ROLE_ARN"
WEB_IDENTITY_TOKEN_FILE = "AWS_WEB_IDENTITY_TOKEN_FILE"
CONTAINER_CREDENTIALS_FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
CONTAINER_AUTHORIZATION_TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
REGION = "AWS_REGION"
DEFAULT_REGION = "AWS_DEFAULT_REGION"
STS_REGIONAL_ENDPOINTS = "AWS_STS_REGIONAL_ENDPOINTS"

_WEB_IDENTITY_PAIR = frozenset({ROLE_ARN, WEB_IDENTITY_TOKEN_FILE})
_CONTAINER_CREDENTIALS_PAIR = frozenset(
    {CONTAINER_CREDENTIALS_FULL_URI, CONTAINER_AUTHORIZATION_TOKEN_FILE}
)
_REGION_NAMES = frozenset({REGION, DEFAULT_REGION})
_OS_SELECTORS = ("kubernetes.io/os", "beta.kubernetes.io/os")

Jitter = Callable[[], int]


@dataclass(slots=True)
class Plan:
    """The outcome of planning; `operations` empty means the pod already has everything.

    `warnings` say where we deviated from the plain recipe so that the pod stays valid
    (they become the AdmissionReview response's warnings, which kubectl prints).
    """

    operations: list[PatchOp]
    token_expiration: int
    warnings: list[str] = field(default_factory=list)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def pod_annotations(pod: Pod) -> Mapping[str, str]:
    meta = pod.get("metadata") or {}
    return meta.get("annotations") or {}


def containers_to_skip(
    annotations: Mapping[str, str], settings: MutationSettings
) -> frozenset[str]:
    raw = annotations.get(settings.skip_containers_key)
    if raw is None:
        return frozenset()
    return frozenset(csv_first_record(raw) or ())


def token_expiration_for(
    identity: Identity,
    annotations: Mapping[str, str],
    settings: MutationSettings,
    jitter: Jitter,
) -> tuple[int, str | None]:
    """flag < ServiceAccount/ConfigMap < pod annotation; container credentials add jitter.

    Returns the seconds and, when the pod's annotation asked for more than the API server
    accepts, the warning saying so.
    """
    requested = parse_expiration(annotations.get(settings.token_expiration_key))
    expiration = identity.token_expiration if requested is None else clamp_expiration(requested)
    if identity.mode is Mode.CONTAINER_CREDENTIALS and expiration == DEFAULT_TOKEN_EXPIRATION:
        expiration = jitter()
    if requested is None:
        return expiration, None
    origin = f"pod annotation {settings.token_expiration_key}"
    return expiration, expiration_warning(origin, requested)


def is_windows(spec: Mapping[str, Any]) -> bool:
    selector = spec.get("nodeSelector") or {}
    if any(selector.get(key) == "windows" for key in _OS_SELECTORS):
        return True
    os_field = spec.get("os") or {}
    return bool(os_field.get("name") == "windows")


def _token_file(mount_path: str, token_path: str, windows: bool) -> str:
    path = join_path(mount_path, token_path)
    if windows:
        return "C:" + path.replace("/", "\\")
    return path


@dataclass(frozen=True, slots=True)
class _Injection:
    """What each container should receive, computed once per pod."""

    credential_names: frozenset[str]
    credentials: tuple[EnvVar, EnvVar]
    token_file_env: str  # the variable naming the token file
    region: str
    use_regional_sts: bool
    mount: VolumeMount


def _env_additions(names: set[str], injection: _Injection) -> list[EnvVar] | None:
    """None when the container already has everything upstream looks for."""
    has_credentials = not names.isdisjoint(injection.credential_names)
    has_region = not names.isdisjoint(_REGION_NAMES)
    has_sts = STS_REGIONAL_ENDPOINTS in names
    if has_credentials and has_region and has_sts:
        return None
    additions: list[EnvVar] = []
    if not has_sts and injection.use_regional_sts:
        additions.append({"name": STS_REGIONAL_ENDPOINTS, "value": "regional"})
    if not has_region and injection.region:
        additions.append({"name": DEFAULT_REGION, "value": injection.region})
        additions.append({"name": REGION, "value": injection.region})
    if not has_credentials:
        additions.extend(injection.credentials)
    return additions


def _add_to_list(
    ops: list[PatchOp], owner: Mapping[str, Any], path: str, key: str, items: Iterable[Any]
) -> None:
    items = list(items)
    if not items:
        return
    if owner.get(key) is None:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": items})
    else:
        ops.extend({"op": "add", "path": f"{path}/{key}/-", "value": item} for item in items)


def _occupant(container: Mapping[str, Any], mount_path: str) -> tuple[str, str] | None:
    """What already sits at `mount_path` in this container, as (verb, what): the API server
    allows one mount or raw block device per path, so ours there would get the pod rejected."""
    for mount in container.get("volumeMounts") or ():
        if mount.get("mountPath") == mount_path:
            return "mounts", f"volume {mount.get('name')!r}"
    for device in container.get("volumeDevices") or ():
        if isinstance(device, dict) and device.get("devicePath") == mount_path:
            return "has", f"block device {device.get('name')!r}"
    return None


def _occupied_warning(container_name: Any, occupant: tuple[str, str], injection: _Injection) -> str:
    verb, what = occupant
    mount = injection.mount
    return (
        f"pod-identity-webhook: container {container_name!r} already {verb} {what} at "
        f"{mount['mountPath']}, so the {mount['name']} volume is not mounted there (the API "
        f"server rejects two mounts at one path); {injection.token_file_env} points into "
        f"{what} instead"
    )


def _plan_containers(
    ops: list[PatchOp],
    warnings: list[str],
    spec: Mapping[str, Any],
    list_name: str,
    skip: frozenset[str],
    injection: _Injection,
) -> None:
    for index, container in enumerate(spec.get(list_name) or ()):
        name = container.get("name")
        if name in skip:
            continue
        env = container.get("env") or ()
        names = {var.get("name") for var in env}
        additions = _env_additions(names, injection)
        if additions is None:
            continue
        path = f"/spec/{list_name}/{index}"
        mounts = container.get("volumeMounts") or ()
        has_mount = any(m.get("name") == injection.mount["name"] for m in mounts)
        _add_to_list(ops, container, path, "env", additions)
        if has_mount:
            continue
        occupant = _occupant(container, injection.mount["mountPath"])
        if occupant is None:
            _add_to_list(ops, container, path, "volumeMounts", (dict(injection.mount),))
        elif names.isdisjoint(injection.credential_names):  # we point the env at that path
            warnings.append(_occupied_warning(name, occupant, injection))


def role_arn_warning(identity: Identity, namespace: str, service_account: str) -> str | None:
    if identity.mode is not Mode.WEB_IDENTITY or is_valid_role_arn(identity.role_arn):
        return None
    where = (
        f"annotation on ServiceAccount {namespace}/{service_account}"
        if identity.source.value == "annotation"
        else f"pod-identity-webhook ConfigMap entry for {namespace}/{service_account}"
    )
    return (
        f"pod-identity-webhook: role ARN {identity.role_arn!r} from the {where} is not a valid "
        "IAM role ARN (expected arn:<partition>:iam::<12-digit account>:role/<name>); it was "
        "injected as given, but STS AssumeRoleWithWebIdentity will reject it"
    )


def identity_warnings(identity: Identity, namespace: str, service_account: str) -> list[str]:
    """Admission warnings about the identity's configuration (role ARN, audience, expiration)."""
    warnings = [
        f"pod-identity-webhook: ServiceAccount {namespace}/{service_account}: {note}"
        for note in identity.warnings
    ]
    role = role_arn_warning(identity, namespace, service_account)
    return [role, *warnings] if role else warnings


def plan_mutation(
    pod: Pod,
    namespace: str,
    identity: Identity,
    settings: MutationSettings,
    jitter: Jitter,
) -> Plan:
    """The additions that give `pod` its identity. Pure: same inputs, same plan."""
    annotations = pod_annotations(pod)
    spec = pod.get("spec") or {}
    expiration, expiration_note = token_expiration_for(identity, annotations, settings, jitter)
    ops: list[PatchOp] = []
    plan = Plan(operations=ops, token_expiration=expiration)
    if expiration_note:
        plan.warnings.append(f"pod-identity-webhook: {expiration_note}")

    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        cc = settings.container_credentials
        volume_name, mount_path, token_path = cc.volume_name, cc.mount_path, cc.token_path
        token_file = _token_file(mount_path, token_path, is_windows(spec))
        credentials: tuple[EnvVar, EnvVar] = (
            {"name": CONTAINER_CREDENTIALS_FULL_URI, "value": cc.full_uri},
            {"name": CONTAINER_AUTHORIZATION_TOKEN_FILE, "value": token_file},
        )
        credential_names = _CONTAINER_CREDENTIALS_PAIR
        token_file_env = CONTAINER_AUTHORIZATION_TOKEN_FILE
        labels = (pod.get("metadata") or {}).get("labels")
        if labels is None:
            ops.append(
                {"op": "add", "path": "/metadata/labels", "value": {POD_IDENTITY_LABEL: "enabled"}}
            )
        elif labels.get(POD_IDENTITY_LABEL) != "enabled":
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/labels/" + _escape(POD_IDENTITY_LABEL),
                    "value": "enabled",
                }
            )
    else:
        volume_name = WEB_IDENTITY_VOLUME_NAME
        mount_path, token_path = settings.token_mount_path, WEB_IDENTITY_TOKEN_PATH
        token_file = _token_file(mount_path, token_path, is_windows(spec))
        credentials = (
            {"name": ROLE_ARN, "value": identity.role_arn},
            {"name": WEB_IDENTITY_TOKEN_FILE, "value": token_file},
        )
        credential_names = _WEB_IDENTITY_PAIR
        token_file_env = WEB_IDENTITY_TOKEN_FILE

    volumes = spec.get("volumes")
    if not any(v.get("name") == volume_name for v in volumes or ()):
        volume = {
            "name": volume_name,
            "projected": {
                "sources": [
                    {
                        # Upstream's struct omits an empty audience; so do we.
                        "serviceAccountToken": {
                            **({"audience": identity.audience} if identity.audience else {}),
                            "expirationSeconds": expiration,
                            "path": token_path,
                        }
                    }
                ]
            },
        }
        # Upstream prepends the volume; we keep its position so stored pods compare equal.
        if volumes is None:
            ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
        else:
            ops.append({"op": "add", "path": "/spec/volumes/0", "value": volume})

    injection = _Injection(
        credential_names=credential_names,
        credentials=credentials,
        token_file_env=token_file_env,
        region=settings.aws_default_region,
        use_regional_sts=identity.use_regional_sts,
        mount={"name": volume_name, "readOnly": True, "mountPath": mount_path},
    )
    skip = containers_to_skip(annotations, settings)
    _plan_containers(ops, plan.warnings, spec, "initContainers", skip, injection)
    _plan_containers(ops, plan.warnings, spec, "containers", skip, injection)
    return plan
