"""From (pod, identity, settings) to the JSON patch: additions only, never rewrites.

Each operation adds one env var, mount, volume or label at a precise path, so applying the
patch yields exactly the original pod plus our additions; fields we do not know survive.
Order of additions, names and defaults follow upstream so swapped binaries produce equal pods.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook.core.gocompat import csv_first_record, join_path
from webhook.core.identity import (
    Identity,
    Lookup,
    Mode,
    is_valid_role_arn,
    parse_expiration,
    resolve_identity,
)
from webhook.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    POD_IDENTITY_LABEL,
    WEB_IDENTITY_TOKEN_PATH,
    WEB_IDENTITY_VOLUME_NAME,
    MutationSettings,
    clamp_expiration,
    expiration_warning,
)
from webhook.core.wire import PatchOp, Pod

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
_OS_SELECTORS = ("kubernetes.io/os", "beta.kubernetes.io/os")
_NO_SKIP: frozenset[str] = frozenset()

Jitter = Callable[[], int]


@dataclass(slots=True)
class Plan:
    """The outcome of planning: the JSON patch, encoded once; b"" when the pod already has
    everything.

    `warnings` say where we deviated from the plain recipe so that the pod stays valid
    (they become the AdmissionReview response's warnings, which kubectl prints).
    """

    patch: bytes
    token_expiration: int
    warnings: list[str] = field(default_factory=list)

    @property
    def operations(self) -> list[PatchOp]:
        """The patch as data, for readers (tests, tools); the server sends `patch` as is."""
        return orjson.loads(self.patch) if self.patch else []


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
    raw = annotations.get(settings.token_expiration_key) if annotations else None
    requested = None if raw is None else parse_expiration(raw)
    expiration = identity.token_expiration if requested is None else clamp_expiration(requested)
    if identity.mode is Mode.CONTAINER_CREDENTIALS and expiration == DEFAULT_TOKEN_EXPIRATION:
        expiration = jitter()
    if requested is None:
        return expiration, None
    origin = f"pod annotation {settings.token_expiration_key}"
    return expiration, expiration_warning(origin, requested)


def is_windows(spec: Mapping[str, Any]) -> bool:
    selector = spec.get("nodeSelector")
    if selector:
        for key in _OS_SELECTORS:
            if selector.get(key) == "windows":
                return True
    os_field = spec.get("os")
    return bool(os_field and os_field.get("name") == "windows")


def _token_file(mount_path: str, token_path: str, windows: bool) -> str:
    path = join_path(mount_path, token_path)
    if windows:
        return "C:" + path.replace("/", "\\")
    return path


# The patch is written as JSON text directly: every value we add is known per identity, so it
# is encoded once (orjson, in the identity's Recipe) and a review only fills in the container
# paths. The text is
# exactly what orjson.dumps writes for the same operations (tests/test_mutation.py checks).
# A template is a tuple of text segments with a container's path going between them.
Template = tuple[str, ...]


def _op(path: str, value: object) -> str:
    return orjson.dumps({"op": "add", "path": path, "value": value}).decode()


def _template(suffix: str, values: list[object]) -> Template:
    """Operations adding each value at <container path> + suffix, one after the other."""
    head, tail = '{"op":"add","path":"', '","value":'
    segments = [head]
    for value in values:
        segments.append(f"{suffix}{tail}{orjson.dumps(value).decode()}}},{head}")
    segments[-1] = segments[-1][: -len("," + head)]
    return tuple(segments)


# What a container already has, as three flags: (credentials, region, regional STS).
_Have = tuple[bool, bool, bool]


@dataclass(frozen=True, slots=True)
class _EnvOps:
    """The env operations for one container, by how its env list looks."""

    whole: Template  # the container has no env list: add it with all our variables
    appended: Template  # it has one: append each variable


@dataclass(frozen=True, slots=True)
class _Injection:
    """What each container should receive, the same for every pod of one identity: built once
    (in the Recipe), so a review only picks the env operations that apply and fills in paths."""

    credential_names: frozenset[str]
    token_file_env: str  # the variable naming the token file
    volume_name: str
    mount_path: str
    # By what the container already has, indexed 4*credentials + 2*region + regional STS.
    # None: it has all three, and upstream leaves it alone (no mount either); an _EnvOps with
    # empty templates: nothing to add but the mount.
    env_ops: tuple[_EnvOps | None, ...]
    mount_whole: Template  # the container has no volumeMounts list
    mount_appended: Template


def _env_additions(
    have: _Have, region: str, use_regional_sts: bool, credentials: tuple[tuple[str, str], ...]
) -> list[dict[str, str]] | None:
    """Upstream's order: regional STS, region (both names), then the credential pair."""
    has_credentials, has_region, has_sts = have
    if has_credentials and has_region and has_sts:
        return None
    additions: list[tuple[str, str]] = []
    if not has_sts and use_regional_sts:
        additions.append((STS_REGIONAL_ENDPOINTS, "regional"))
    if not has_region and region:
        additions.append((DEFAULT_REGION, region))
        additions.append((REGION, region))
    if not has_credentials:
        additions.extend(credentials)
    return [{"name": name, "value": value} for name, value in additions]


# The encoded pieces of the recipes being built for one identity, by what they encode: the
# Linux and Windows recipes (and the 8 env cases of each) share every piece that comes out
# the same, which most do. Local to one `resolve` call.
_Parts = dict[tuple[object, ...], Any]


def _env_ops(additions: list[dict[str, str]] | None, parts: _Parts) -> _EnvOps | None:
    if additions is None:
        return None
    key = ("env", *((item["name"], item["value"]) for item in additions))
    built = parts.get(key)
    if built is None:
        built = parts[key] = (
            _EnvOps(
                whole=_template("/env", [additions]),
                appended=_template("/env/-", list(additions)),
            )
            if additions
            else _EnvOps((), ())
        )
    return built


def _mount_ops(volume_name: str, mount_path: str, parts: _Parts) -> tuple[Template, Template]:
    key = ("mount", volume_name, mount_path)
    built = parts.get(key)
    if built is None:
        mount = {"name": volume_name, "readOnly": True, "mountPath": mount_path}
        built = parts[key] = (
            _template("/volumeMounts", [[mount]]),
            _template("/volumeMounts/-", [mount]),
        )
    return built


def _injection(
    credential_names: frozenset[str],
    credentials: tuple[tuple[str, str], ...],
    token_file_env: str,
    volume_name: str,
    mount_path: str,
    region: str,
    use_regional_sts: bool,
    parts: _Parts,
) -> _Injection:
    flags = (False, True)
    mount_whole, mount_appended = _mount_ops(volume_name, mount_path, parts)
    return _Injection(
        credential_names=credential_names,
        token_file_env=token_file_env,
        volume_name=volume_name,
        mount_path=mount_path,
        env_ops=tuple(  # product() yields the flags in index order: (F,F,F), (F,F,T), ...
            _env_ops(_env_additions(have, region, use_regional_sts, credentials), parts)
            for have in itertools.product(flags, flags, flags)
        ),
        mount_whole=mount_whole,
        mount_appended=mount_appended,
    )


def _volume_op(
    volume_name: str, audience: str, expiration: int, token_path: str, first: bool
) -> str:
    token: dict[str, object] = {"audience": audience} if audience else {}  # upstream omits ""
    token["expirationSeconds"] = expiration
    token["path"] = token_path
    volume = {"name": volume_name, "projected": {"sources": [{"serviceAccountToken": token}]}}
    # Upstream prepends the volume; we keep its position so stored pods compare equal.
    if first:
        return _op("/spec/volumes", [volume])
    return _op("/spec/volumes/0", volume)


_LABEL_OPS = (
    _op("/metadata/labels", {POD_IDENTITY_LABEL: "enabled"}),
    _op("/metadata/labels/" + _escape(POD_IDENTITY_LABEL), "enabled"),
)


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
    return (
        f"pod-identity-webhook: container {container_name!r} already {verb} {what} at "
        f"{injection.mount_path}, so the {injection.volume_name} volume is not mounted there "
        f"(the API server rejects two mounts at one path); {injection.token_file_env} points "
        f"into {what} instead"
    )


def _plan_containers(
    ops: list[str],  # operation texts
    warnings: list[str],
    containers: Any,
    list_name: str,
    skip: frozenset[str],
    injection: _Injection,
) -> None:
    # The hot loop of every review: plain loops and precomputed operation texts.
    credential_names = injection.credential_names
    volume_name, mount_path = injection.volume_name, injection.mount_path
    env_ops = injection.env_ops
    for index, container in enumerate(containers):
        name = container.get("name")
        if name in skip:
            continue
        env = container.get("env")
        names = {var.get("name") for var in env} if env else set()
        has_credentials = not credential_names.isdisjoint(names)
        chosen = env_ops[
            4 * has_credentials
            + 2 * (DEFAULT_REGION in names or REGION in names)
            + (STS_REGIONAL_ENDPOINTS in names)
        ]
        if chosen is None:
            continue
        path = f"/spec/{list_name}/{index}"
        template = chosen.whole if env is None else chosen.appended
        if template:
            ops.append(path.join(template))
        mounts = container.get("volumeMounts")
        occupied = False  # something else is mounted at our path
        if mounts:
            has_mount = False
            for mount in mounts:
                if mount.get("name") == volume_name:
                    has_mount = True
                    break
                if mount.get("mountPath") == mount_path:
                    occupied = True
            if has_mount:
                continue
        occupant = (
            _occupant(container, mount_path) if occupied or "volumeDevices" in container else None
        )
        if occupant is None:
            template = injection.mount_whole if mounts is None else injection.mount_appended
            ops.append(path.join(template))
        elif not has_credentials:  # we point the env at that path
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
    if not identity.warnings and (
        identity.mode is not Mode.WEB_IDENTITY or is_valid_role_arn(identity.role_arn)
    ):
        return []  # the common case, on every review
    warnings = [
        f"pod-identity-webhook: ServiceAccount {namespace}/{service_account}: {note}"
        for note in identity.warnings
    ]
    role = role_arn_warning(identity, namespace, service_account)
    return [role, *warnings] if role else warnings


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything planning derives from (identity, settings, windows), so that a review only
    reads the pod: built by `recipe`, kept per ServiceAccount entry by the store (Resolution)."""

    container_credentials: bool
    volume_name: str
    token_path: str
    injection: _Injection
    # The volume operation at the identity's own expiration (what most pods get), as
    # (prepended to a volumes list, a new volumes list).
    expiration: int
    volume_ops: tuple[str, str]


def recipe(
    identity: Identity, settings: MutationSettings, windows: bool, parts: _Parts | None = None
) -> Recipe:
    """`parts`: pieces already encoded for this identity's other recipe, to share."""
    parts = {} if parts is None else parts
    if identity.mode is Mode.CONTAINER_CREDENTIALS:
        cc = settings.container_credentials
        volume_name, mount_path, token_path = cc.volume_name, cc.mount_path, cc.token_path
        token_file = _token_file(mount_path, token_path, windows)
        credentials: tuple[tuple[str, str], ...] = (
            (CONTAINER_CREDENTIALS_FULL_URI, cc.full_uri),
            (CONTAINER_AUTHORIZATION_TOKEN_FILE, token_file),
        )
        credential_names, token_file_env = (
            _CONTAINER_CREDENTIALS_PAIR,
            CONTAINER_AUTHORIZATION_TOKEN_FILE,
        )
    else:
        volume_name = WEB_IDENTITY_VOLUME_NAME
        mount_path, token_path = settings.token_mount_path, WEB_IDENTITY_TOKEN_PATH
        token_file = _token_file(mount_path, token_path, windows)
        credentials = ((ROLE_ARN, identity.role_arn), (WEB_IDENTITY_TOKEN_FILE, token_file))
        credential_names, token_file_env = _WEB_IDENTITY_PAIR, WEB_IDENTITY_TOKEN_FILE
    expiration = identity.token_expiration
    return Recipe(
        container_credentials=identity.mode is Mode.CONTAINER_CREDENTIALS,
        volume_name=volume_name,
        token_path=token_path,
        injection=_injection(
            credential_names,
            credentials,
            token_file_env,
            volume_name,
            mount_path,
            settings.aws_default_region,
            identity.use_regional_sts,
            parts,
        ),
        expiration=expiration,
        volume_ops=_volume_ops(volume_name, identity.audience, expiration, token_path, parts),
    )


def _volume_ops(
    volume_name: str, audience: str, expiration: int, token_path: str, parts: _Parts
) -> tuple[str, str]:
    key = ("volume", volume_name, audience, expiration, token_path)
    built = parts.get(key)
    if built is None:
        built = parts[key] = (
            _volume_op(volume_name, audience, expiration, token_path, False),
            _volume_op(volume_name, audience, expiration, token_path, True),
        )
    return built


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a review derives from a Lookup alone under `settings`: the identity, its recipes
    for Linux and Windows pods, and whether identity_warnings has anything to say. Pure data,
    computed by `resolve`; the store keeps one per ServiceAccount entry (on the Lookup it hands
    out), so most reviews derive nothing."""

    settings: MutationSettings
    identity: Identity | None
    recipes: tuple[Recipe, Recipe] | None  # by windows: (Linux, Windows)
    warns: bool


def resolve(lookup: Lookup, settings: MutationSettings) -> Resolution:
    identity = resolve_identity(lookup, settings)
    if identity is None:
        return Resolution(settings, None, None, False)
    parts: _Parts = {}  # the two recipes share what encodes the same
    return Resolution(
        settings,
        identity,
        (recipe(identity, settings, False, parts), recipe(identity, settings, True, parts)),
        bool(identity.warnings)
        or (identity.mode is Mode.WEB_IDENTITY and not is_valid_role_arn(identity.role_arn)),
    )


def resolution_for(lookup: Lookup, settings: MutationSettings) -> Resolution:
    """The lookup's own Resolution when it was made under these very settings, else a new one."""
    kept = lookup.resolution
    if kept is not None and kept.settings is settings:
        return kept
    return resolve(lookup, settings)


# The most containers (initContainers and containers together) one review may mutate. Each
# container costs a few µs and ~550 bytes of answer, so 1,000,000 empty ones (a 3 MB review)
# took 5-6 s of the event loop and a 553 MB answer. No pod the API server can store comes near
# this: etcd takes objects up to 1.5 MiB by default (--max-request-bytes), and a container as
# stored after our patch (name, image, the defaulted terminationMessagePath/-Policy and
# imagePullPolicy, our two env vars and the mount) is over 250 bytes even in protobuf, so
# ~6,000 containers at the default and ~40,000 with etcd raised to 10 MiB. At this ceiling a
# review costs ~0.3 s and a ~27 MB answer, once, then it is denied.
MAX_CONTAINERS = 50_000


def container_count_error(pod: Pod) -> str | None:
    """Why `pod` is too large to mutate (too many containers), or None. O(1)."""
    spec = pod.get("spec") or {}
    count = len(spec.get("initContainers") or ()) + len(spec.get("containers") or ())
    if count <= MAX_CONTAINERS:
        return None
    return (
        f"pod has {count} containers and initContainers, more than the {MAX_CONTAINERS} one "
        "review may mutate (no pod the API server can store has that many)"
    )


def plan_mutation(
    pod: Pod,
    namespace: str,
    identity: Identity,
    settings: MutationSettings,
    jitter: Jitter,
    recipes: tuple[Recipe, Recipe] | None = None,
) -> Plan:
    """The additions that give `pod` its identity. Pure: same inputs, same plan. `recipes`:
    the identity's (Resolution.recipes), when the caller has them already."""
    annotations = pod_annotations(pod)
    spec = pod.get("spec") or {}
    expiration, expiration_note = token_expiration_for(identity, annotations, settings, jitter)
    ops: list[str] = []  # operation texts
    warnings: list[str] = []
    if expiration_note:
        warnings.append(f"pod-identity-webhook: {expiration_note}")
    windows = is_windows(spec)
    chosen = recipes[windows] if recipes is not None else recipe(identity, settings, windows)

    if chosen.container_credentials:
        labels = (pod.get("metadata") or {}).get("labels")
        if labels is None:
            ops.append(_LABEL_OPS[0])
        elif labels.get(POD_IDENTITY_LABEL) != "enabled":
            ops.append(_LABEL_OPS[1])

    volume_name = chosen.volume_name
    volumes = spec.get("volumes")
    has_volume = False
    for volume in volumes or ():
        if volume.get("name") == volume_name:
            has_volume = True
            break
    if not has_volume:
        first = volumes is None
        ops.append(
            chosen.volume_ops[first]
            if expiration == chosen.expiration
            else _volume_op(volume_name, identity.audience, expiration, chosen.token_path, first)
        )

    injection = chosen.injection
    skip = (
        containers_to_skip(annotations, settings)
        if annotations and settings.skip_containers_key in annotations
        else _NO_SKIP
    )
    init_containers = spec.get("initContainers")
    if init_containers:
        _plan_containers(ops, warnings, init_containers, "initContainers", skip, injection)
    containers = spec.get("containers")
    if containers:
        _plan_containers(ops, warnings, containers, "containers", skip, injection)
    patch = ("[" + ",".join(ops) + "]").encode() if ops else b""
    return Plan(patch=patch, token_expiration=expiration, warnings=warnings)
