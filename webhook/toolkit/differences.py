"""Classify how another webhook's answer differs from ours: identical, one of the deliberate
differences the README lists (named), or an undocumented difference.

Both answers are applied to the same pod and compared as the API server would store them (an
empty map or list is the same as none). Each documented difference is an *eraser*: when its
condition holds, it removes exactly the aspect the README says differs from both pods. If the
pods are equal once the applicable erasers ran, the difference is documented, and the erasers
that changed something name it; anything left over is an undocumented difference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from webhook.core.mutation import (
    CONTAINER_AUTHORIZATION_TOKEN_FILE,
    ROLE_ARN,
    WEB_IDENTITY_TOKEN_FILE,
    is_windows,
)
from webhook.core.settings import (
    JITTER_MIN_TOKEN_EXPIRATION,
    MAX_TOKEN_EXPIRATION,
    MIN_TOKEN_EXPIRATION,
    WEB_IDENTITY_VOLUME_NAME,
    ContainerCredentialsSettings,
)

Pod = dict[str, Any]
CONTAINER_LISTS = ("containers", "initContainers")
TOKEN_VOLUMES = (WEB_IDENTITY_VOLUME_NAME, ContainerCredentialsSettings().volume_name)
TOKEN_FILE_ENVS = (WEB_IDENTITY_TOKEN_FILE, CONTAINER_AUTHORIZATION_TOKEN_FILE)
ERASED = "<differs as documented>"


@dataclass(frozen=True, slots=True)
class Answer:
    """One webhook's answer, applied: the pod it would store (or None when denied)."""

    allowed: bool
    pod: Pod | None
    message: str = ""
    warnings: tuple[str, ...] = ()
    rewritten: frozenset[str] = frozenset()  # spec lists the patch wrote whole (`containers`)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the erasers may know beyond the pods: the review and how we found the identity."""

    original: Pod
    pod_create: bool = True  # a Pod CREATE (no subresource): what the webhook is registered for
    config_map_pattern: bool = False  # our identity came from a ConfigMap glob, not an exact key
    identity_source: str = ""  # where our identity came from: annotation, configmap, ...


@dataclass(slots=True)
class Sides:
    ours: Pod
    theirs: Pod
    facts: Facts
    rewritten: frozenset[str] = frozenset()  # the lists the other webhook's patch wrote whole


Eraser = Callable[[Sides], None]


@dataclass(frozen=True, slots=True)
class Documented:
    name: str
    readme: str  # the start of the README row in "What differs from upstream, and why"
    erase: Eraser = field(repr=False)


# -- canonical form ----------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """Drop nulls and empty maps/lists: the API server stores `resources: {}` and no
    `resources` alike, and Go's encoder writes empty structs that Python patches leave out."""
    if isinstance(value, dict):
        pruned = {k: canonical(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


# -- helpers the erasers share -------------------------------------------------------------------


def _containers(pod: Pod) -> Iterator[tuple[str, int, dict[str, Any]]]:
    spec = pod.get("spec") or {}
    for kind in CONTAINER_LISTS:
        for index, container in enumerate(spec.get(kind) or []):
            if isinstance(container, dict):
                yield kind, index, container


def _container(pod: Pod, kind: str, index: int) -> dict[str, Any] | None:
    items = (pod.get("spec") or {}).get(kind) or []
    return items[index] if index < len(items) and isinstance(items[index], dict) else None


def _token_sources(pod: Pod) -> Iterator[dict[str, Any]]:
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") not in TOKEN_VOLUMES:
            continue
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if isinstance(token, dict):
                yield token


def _pair(sides: Sides) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The token sources of both pods, side by side."""
    yield from zip(_token_sources(sides.ours), _token_sources(sides.theirs), strict=False)


def _forget_everything(sides: Sides) -> None:
    sides.ours = copy.deepcopy(sides.theirs)


# -- the erasers, one per README row ---------------------------------------------------------------


def _dropped_fields(sides: Sides) -> None:
    """Upstream writes whole container and volume lists, re-encoded through its Go structs:
    fields of the original pod its vendored k8s.io/api does not know disappear. In the lists
    the other patch wrote whole, remove from our pod what the original had and theirs lost."""

    def prune(ours: Any, theirs: Any, original: Any) -> None:
        if isinstance(ours, dict) and isinstance(theirs, dict) and isinstance(original, dict):
            for key in list(ours):
                if key not in theirs and key in original:
                    del ours[key]
                elif key in theirs and key in original:
                    prune(ours[key], theirs[key], original[key])
        elif isinstance(ours, list) and isinstance(theirs, list) and isinstance(original, list):
            for o, t, g in zip(ours, theirs, original, strict=False):
                prune(o, t, g)

    spec, theirs, original = (
        sides.ours.get("spec") or {},
        sides.theirs.get("spec") or {},
        canonical(sides.facts.original).get("spec") or {},
    )
    for key in (*CONTAINER_LISTS, "volumes"):
        if key in sides.rewritten:
            prune(spec.get(key), theirs.get(key), original.get(key))


def _windows_by_os_field(sides: Sides) -> None:
    spec = sides.facts.original.get("spec") or {}
    if not is_windows(spec) or is_windows({**spec, "os": None}):
        return  # not Windows, or Windows by nodeSelector, which upstream reads too
    for kind, index, ours in _containers(sides.ours):
        theirs = _container(sides.theirs, kind, index) or {}
        theirs_env = {e.get("name"): e for e in theirs.get("env") or []}
        for env in ours.get("env") or []:
            other = theirs_env.get(env.get("name"))
            if env.get("name") in TOKEN_FILE_ENVS and other is not None and other != env:
                env["value"] = other["value"] = ERASED


def _mount_path_taken(sides: Sides) -> None:
    """Where the original container already used a path, upstream mounts the token there too
    (and the API server rejects the pod); we leave it out."""
    for kind, index, original in _containers(sides.facts.original):
        taken = {m.get("mountPath") for m in original.get("volumeMounts") or []}
        taken |= {d.get("devicePath") for d in original.get("volumeDevices") or []}
        theirs = _container(sides.theirs, kind, index)
        if theirs is None or not theirs.get("volumeMounts"):
            continue
        theirs["volumeMounts"] = [
            m
            for m in theirs["volumeMounts"]
            if not (m.get("name") in TOKEN_VOLUMES and m.get("mountPath") in taken)
        ]


def _expiration_above_limit(sides: Sides) -> None:
    for ours, theirs in _pair(sides):
        if (
            ours.get("expirationSeconds") == MAX_TOKEN_EXPIRATION
            and (theirs.get("expirationSeconds") or 0) > MAX_TOKEN_EXPIRATION
        ):
            ours["expirationSeconds"] = theirs["expirationSeconds"] = ERASED


def _config_map_defaults(sides: Sides) -> None:
    """ConfigMap entries: expirations below 600 s are clamped (upstream's pass through), and no
    or an empty Audience means --token-audience (upstream's token has none)."""
    if sides.facts.identity_source != "configmap":
        return
    _missing_audience(sides)
    for ours, theirs in _pair(sides):
        seconds = theirs.get("expirationSeconds")
        if (
            ours.get("expirationSeconds") == MIN_TOKEN_EXPIRATION
            and isinstance(seconds, int)
            and seconds < MIN_TOKEN_EXPIRATION
        ):
            ours["expirationSeconds"] = theirs["expirationSeconds"] = ERASED


def _empty_audience(sides: Sides) -> None:
    if sides.facts.identity_source != "configmap":
        _missing_audience(sides)


def _missing_audience(sides: Sides) -> None:
    for ours, theirs in _pair(sides):
        if not theirs.get("audience") and ours.get("audience"):
            ours.pop("audience")
            theirs.pop("audience", None)


def _uid_jitter(sides: Sides) -> None:
    jitter = range(JITTER_MIN_TOKEN_EXPIRATION, 86401)
    for ours, theirs in _pair(sides):
        seconds = ours.get("expirationSeconds"), theirs.get("expirationSeconds")
        if seconds[0] != seconds[1] and all(s in jitter for s in seconds):
            ours["expirationSeconds"] = theirs["expirationSeconds"] = ERASED


def _config_map_glob(sides: Sides) -> None:
    if sides.facts.config_map_pattern and canonical(sides.theirs) == canonical(
        sides.facts.original
    ):
        _forget_everything(sides)


def _not_a_pod_create(sides: Sides) -> None:
    if not sides.facts.pod_create:
        _forget_everything(sides)


def _composed_empty_role(sides: Sides) -> None:
    roles = [
        env.get("value")
        for _, _, container in _containers(sides.theirs)
        for env in container.get("env") or []
        if env.get("name") == ROLE_ARN
    ]
    empty = roles and all(isinstance(r, str) and r.endswith(":role/") for r in roles)
    if empty and canonical(sides.ours) == canonical(sides.facts.original):
        _forget_everything(sides)


DOCUMENTED: tuple[Documented, ...] = (
    Documented(
        "keeps-unknown-fields",
        "Patches only **add** (env vars, mounts, volume, label) at precise paths",
        _dropped_fields,
    ),
    Documented(
        "windows-spec-os",
        "`spec.os.name: windows` also selects the Windows token path",
        _windows_by_os_field,
    ),
    Documented(
        "mount-path-taken",
        "A container that already mounts a volume or raw block device at the token mount path",
        _mount_path_taken,
    ),
    Documented("expiration-above-2^32", "Token expirations above 2^32 s", _expiration_above_limit),
    Documented(
        "config-map-defaults",
        "ConfigMap entries without `Audience` use `--token-audience`",
        _config_map_defaults,
    ),
    Documented(
        "empty-audience",
        "An empty `audience` annotation (or an explicitly empty ConfigMap `Audience`)",
        _empty_audience,
    ),
    Documented(
        "uid-jitter",
        "Container-credentials jitter is derived from the request UID",
        _uid_jitter,
    ),
    Documented("config-map-glob", "ConfigMap keys may use glob namespaces", _config_map_glob),
    Documented(
        "only-pod-creates",
        "Reviews that are not a Pod `CREATE`",
        _not_a_pod_create,
    ),
    Documented(
        "compose-empty-role",
        "An empty `role-arn` annotation with `--compose-role-arn` injects nothing",
        _composed_empty_role,
    ),
)
ONLY_FIELDS_WE_READ = Documented(
    "type-checks-only-read-fields",
    "Only the fields we read are type-checked",
    lambda sides: None,
)


# -- verdicts --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # identical | documented | differs | error
    documented: tuple[Documented, ...] = ()
    detail: str = ""  # the unified diff (documented, differs), or what went wrong (error)

    @property
    def undocumented(self) -> bool:
        return self.kind in ("differs", "error")

    def describe(self) -> str:
        if self.kind == "documented":
            return "differs as documented: " + "; ".join(
                f"{d.name} ({d.readme.replace('**', '').replace('`', '')})" for d in self.documented
            )
        return {"identical": "identical", "differs": "differs", "error": "error"}[self.kind]


def _denials(ours: Answer, theirs: Answer) -> Verdict | None:
    if ours.allowed and theirs.allowed:
        return None
    if not ours.allowed and not theirs.allowed:
        return Verdict("identical", detail="both denied")
    if ours.allowed and theirs.message.startswith("json: "):
        # Go's decoder refused a field we never read; ours type-checks only what it uses.
        return Verdict("documented", (ONLY_FIELDS_WE_READ,))
    denied = "ours" if not ours.allowed else "theirs"
    message = ours.message if denied == "ours" else theirs.message
    return Verdict("differs", detail=f"only {denied} denied the pod: {message}\n")


def classify(
    ours: Answer, theirs: Answer, facts: Facts, diff: Callable[[Pod, Pod], str]
) -> Verdict:
    """`diff(ours, theirs)` renders the unified diff shown for an undocumented difference."""
    denial = _denials(ours, theirs)
    if denial is not None:
        return denial
    assert ours.pod is not None and theirs.pod is not None
    a, b = canonical(ours.pod), canonical(theirs.pod)
    if a == b:
        return Verdict("identical")
    sides = Sides(copy.deepcopy(a), copy.deepcopy(b), facts, theirs.rewritten)
    used: list[Documented] = []
    for documented in DOCUMENTED:
        before = (copy.deepcopy(sides.ours), copy.deepcopy(sides.theirs))
        documented.erase(sides)
        if (sides.ours, sides.theirs) != before:
            used.append(documented)
        if canonical(sides.ours) == canonical(sides.theirs):
            return Verdict("documented", tuple(used), diff(a, b))
    return Verdict("differs", detail=diff(a, b))
