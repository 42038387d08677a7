"""Wire types: the JSON shapes we read and write, as TypedDicts over plain dicts.

Pods stay raw JSON data end to end so that fields unknown to us survive untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict

JSON = Any
Pod = dict[str, Any]


class PatchOp(TypedDict):
    op: Literal["add"]
    path: str
    value: JSON


class EnvVar(TypedDict):
    name: str
    value: str


class VolumeMount(TypedDict):
    name: str
    readOnly: bool
    mountPath: str


class Status(TypedDict, total=False):
    message: str
    code: int


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patch: NotRequired[str]  # base64 of the JSON patch
    patchType: NotRequired[Literal["JSONPatch"]]
    status: NotRequired[Status]
    warnings: NotRequired[list[str]]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


# -- what a review is read as ------------------------------------------------------------
# The fields of an AdmissionReview a mutation reads, and nothing else: the review decoder
# builds these and skips every other field without materialising it (a pod's managedFields,
# probes, resources... are never built). Every key is optional, and null reads as absent, as
# Go's encoding/json has it. The pod's types (PodIn and below) are the Pod schema's, and the
# one description of them: the typed decode reads them, and `podshape.pod_shape_error`
# derives from them the check that names the offending field when the typed decode refused a
# body (it is then read in full). Fields typed `Any` are read but checked by the code that
# uses them. Declaration order is the order in which fields are checked (see podshape).


@dataclass(frozen=True, slots=True)
class ShapeMessage:
    """In Annotated[...]: the denial for any wrong type in this field (ignored by msgspec)."""

    text: str


class NamedIn(TypedDict, total=False):
    name: str | None


class VolumeMountIn(TypedDict, total=False):
    name: str | None
    mountPath: Any


class VolumeDeviceIn(TypedDict, total=False):
    name: str | None
    devicePath: Any


class ContainerIn(TypedDict, total=False):
    name: str | None
    env: list[NamedIn] | None
    volumeMounts: list[VolumeMountIn] | None
    volumeDevices: list[VolumeDeviceIn] | None


class PodOSIn(TypedDict, total=False):
    name: str


class PodSpecIn(TypedDict, total=False):
    serviceAccountName: str | None
    nodeSelector: dict[str, str] | None
    volumes: list[NamedIn] | None
    os: Annotated[PodOSIn | None, ShapeMessage("spec.os must be an object with a string name")]
    initContainers: list[ContainerIn] | None
    containers: list[ContainerIn] | None


class ObjectMetaIn(TypedDict, total=False):
    name: str | None
    generateName: str | None
    namespace: str | None
    annotations: dict[str, str] | None
    labels: dict[str, str] | None


class PodIn(TypedDict, total=False):
    metadata: ObjectMetaIn | None
    spec: PodSpecIn | None


class AdmissionRequestIn(TypedDict, total=False):
    uid: Any
    kind: Any
    namespace: Any
    operation: Any
    subResource: Any
    object: PodIn | None


class AdmissionReviewIn(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    request: AdmissionRequestIn | None
