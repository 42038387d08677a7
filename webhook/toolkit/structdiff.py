"""A diff of two Kubernetes objects by structure, not by text: each difference is a path
(`spec.containers[app].env[AWS_REGION].value`) and the two values there.

A text diff of two YAML dumps aligns lines, not fields: when one webhook inserts an env entry
the other does not, the lines after it (the container's image, say) can show as removed and
re-added though they are equal. Here lists of objects that carry a unique `name` (containers,
env, volumes, volumeMounts) are matched by name, as the API server's strategic merge does, so
only what differs is shown; a different order of the same names is reported as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


def _names(items: list[Any]) -> list[str] | None:
    """The `name` of every item, when all are objects with a unique string name."""
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if not items or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return None
    return [str(n) for n in names]


def _lines(sign: str, value: Any) -> list[str]:
    text = yaml.safe_dump(value, sort_keys=True, default_flow_style=False).rstrip("\n")
    text = text.removesuffix("\n...")  # a scalar's document end marker
    return [f"{sign}{line}" for line in text.splitlines()]


def _walk(path: str, before: Any, after: Any) -> Iterator[tuple[str, list[str]]]:
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            child = f"{path}.{key}" if path else str(key)
            if key not in after:
                yield child, _lines("-", before[key])
            elif key not in before:
                yield child, _lines("+", after[key])
            else:
                yield from _walk(child, before[key], after[key])
        return
    if isinstance(before, list) and isinstance(after, list):
        old, new = _names(before), _names(after)
        if old is not None and new is not None:
            by_old = dict(zip(old, before, strict=True))
            by_new = dict(zip(new, after, strict=True))
            for name in [*old, *(n for n in new if n not in by_old)]:
                child = f"{path}[{name}]"
                if name not in by_new:
                    yield child, _lines("-", by_old[name])
                elif name not in by_old:
                    yield child, _lines("+", by_new[name])
                else:
                    yield from _walk(child, by_old[name], by_new[name])
            common_old = [n for n in old if n in by_new]
            common_new = [n for n in new if n in by_old]
            if common_old != common_new:
                yield f"{path} (order)", [f"-{common_old}", f"+{common_new}"]
            return
        if len(before) == len(after):
            for index, (a, b) in enumerate(zip(before, after, strict=True)):
                yield from _walk(f"{path}[{index}]", a, b)
            return
    yield path or ".", [*_lines("-", before), *_lines("+", after)]


def structural_diff(before: Any, after: Any, from_label: str, to_label: str) -> str:
    """`--- from_label` / `+++ to_label`, then `@@ path` and its `-`/`+` lines per difference;
    empty when the two are equal."""
    hunks = list(_walk("", before, after))
    if not hunks:
        return ""
    out = [f"--- {from_label}", f"+++ {to_label}"]
    for path, lines in hunks:
        out.append(f"@@ {path}")
        out.extend(lines)
    return "\n".join(out) + "\n"
