"""Check, cheaply, that the parts of a pod we read have the types the Pod schema gives them.

Upstream decodes into corev1.Pod and answers a type error with allowed=false; we do the same
for the fields we touch, without building a model that would drop unknown fields.

There is one description of those fields: the `wire.PodIn` TypedDicts, which the typed review
decoder (msgspec) reads. This module derives its checks from them, so the two cannot drift:
a body the typed decoder refuses is read in full and checked here, and the denial names the
first offending field. Within an object its plain fields (strings, `Any`) are checked before
its nested ones, and the items of a list all have their plain fields checked before any
item's nested lists, in declaration order.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from webhook.core.wire import PodIn, ShapeMessage


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "any", "str", "strmap", "object", "list"
    nullable: bool = True
    message: str | None = None  # replaces every message about this field and what it holds
    fields: tuple[tuple[str, _Node], ...] = ()  # "object", or the items of a "list"


def _node(hint: Any) -> _Node:
    message = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        message = next((e.text for e in extras if isinstance(e, ShapeMessage)), None)
    nullable = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        alternatives = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(alternatives) < len(typing.get_args(hint))
        (hint,) = alternatives
    if hint is Any:
        return _Node("any", True, message)
    if hint is str:
        return _Node("str", nullable, message)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and args == (str, str):
        return _Node("strmap", nullable, message)
    if origin is list:
        item = _node(args[0])
        if item.kind != "object":
            raise TypeError(f"no shape check for lists of {args[0]!r}")
        return _Node("list", nullable, message, item.fields)
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        return _Node("object", nullable, message, tuple((k, _node(v)) for k, v in hints.items()))
    raise TypeError(f"no shape check for {hint!r}")


def _plain(node: _Node) -> bool:
    return node.kind in ("any", "str")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check(node: _Node, value: Any, path: str) -> str | None:
    """None when `value` fits `node`, else the message for the first offending field."""
    error = _check_value(node, value, path)
    if error is not None and node.message is not None:
        return node.message
    return error


def _check_value(node: _Node, value: Any, path: str) -> str | None:
    if value is None and node.nullable:
        return None
    kind = node.kind
    if kind == "any":
        return None
    if kind == "str":
        return None if isinstance(value, str) else f"{path} must be a string"
    if kind == "strmap":
        if not isinstance(value, dict):
            return f"{path} must be an object of strings"
        for key, item in value.items():
            if not isinstance(item, str):
                return f"{path}[{key!r}] must be a string"
        return None
    if kind == "object":
        if not isinstance(value, dict):
            return f"{path} must be an object"
        return _check_plain(node.fields, value, path) or _check_nested(node.fields, value, path)
    if not isinstance(value, list):
        return f"{path} must be a list"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"{path}[{index}] must be an object"
        error = _check_plain(node.fields, item, f"{path}[{index}]")
        if error:
            return error
    for index, item in enumerate(value):
        error = _check_nested(node.fields, item, f"{path}[{index}]")
        if error:
            return error
    return None


def _check_plain(
    fields: tuple[tuple[str, _Node], ...], value: dict[str, Any], path: str
) -> str | None:
    for name, child in fields:
        if _plain(child) and name in value:
            error = _check(child, value[name], _join(path, name))
            if error:
                return error
    return None


def _check_nested(
    fields: tuple[tuple[str, _Node], ...], value: dict[str, Any], path: str
) -> str | None:
    for name, child in fields:
        if not _plain(child) and name in value:
            error = _check(child, value[name], _join(path, name))
            if error:
                return error
    return None


_POD = _node(PodIn)


def pod_shape_error(pod: Any) -> str | None:
    """None when usable, else a message naming the first offending field."""
    if not isinstance(pod, dict):
        return "object is not a Pod: expected a JSON object"
    return _check_value(_POD, pod, "")
