"""Wire types: the JSON shapes we read and write, as TypedDicts over plain dicts.

Pods stay raw JSON data end to end so that fields unknown to us survive untouched.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

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
