"""Check, cheaply, that the parts of a pod we read have the types the Pod schema gives them.

Upstream decodes into corev1.Pod and answers a type error with allowed=false; we do the same
for the fields we touch, without building a model that would drop unknown fields.
"""

from __future__ import annotations

from typing import Any

_CONTAINER_LISTS = ("initContainers", "containers")


def _string_map(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{path} must be an object of strings"
    for key, item in value.items():
        if not isinstance(item, str):
            return f"{path}[{key!r}] must be a string"
    return None


def _object_list(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return f"{path} must be a list"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"{path}[{index}] must be an object"
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            return f"{path}[{index}].name must be a string"
    return None


def pod_shape_error(pod: Any) -> str | None:
    """None when usable, else a message naming the first offending field."""
    if not isinstance(pod, dict):
        return "object is not a Pod: expected a JSON object"
    meta = pod.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            return "metadata must be an object"
        for key in ("name", "generateName", "namespace"):
            if meta.get(key) is not None and not isinstance(meta[key], str):
                return f"metadata.{key} must be a string"
        for key in ("annotations", "labels"):
            error = _string_map(meta.get(key), f"metadata.{key}")
            if error:
                return error
    spec = pod.get("spec")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return "spec must be an object"
    account = spec.get("serviceAccountName")
    if account is not None and not isinstance(account, str):
        return "spec.serviceAccountName must be a string"
    error = _string_map(spec.get("nodeSelector"), "spec.nodeSelector") or _object_list(
        spec.get("volumes"), "spec.volumes"
    )
    if error:
        return error
    os_field = spec.get("os")
    if os_field is not None and not (
        isinstance(os_field, dict) and isinstance(os_field.get("name", ""), str)
    ):
        return "spec.os must be an object with a string name"
    for list_name in _CONTAINER_LISTS:
        containers = spec.get(list_name)
        error = _object_list(containers, f"spec.{list_name}")
        if error:
            return error
        for index, container in enumerate(containers or ()):
            for field in ("env", "volumeMounts", "volumeDevices"):
                error = _object_list(container.get(field), f"spec.{list_name}[{index}].{field}")
                if error:
                    return error
    return None
