"""What requirements/runtime.txt pins: the distributions the webhook image installs."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

__all__ = ["NOT_SHIPPED", "RUNTIME_LOCK", "locked_pins", "not_shipped", "shipped_pins"]

RUNTIME_LOCK = Path(__file__).resolve().parent.parent.parent / "requirements" / "runtime.txt"
NOT_SHIPPED = RUNTIME_LOCK.with_name("not-shipped.txt")

# `name==version \` or `name==version ; marker \` at the start of a line (uv's output).
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked_pins(lock: Path = RUNTIME_LOCK, *, this_platform: bool = True) -> dict[str, str]:
    """{canonical name: version} of `lock`; with `this_platform`, only the pins whose
    environment marker holds for the running interpreter (what pip installs here)."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if this_platform and marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = version
    return pins


def not_shipped(path: Path = NOT_SHIPPED) -> set[str]:
    """The canonical names requirements/not-shipped.txt lists (removed from the image)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line}


def shipped_pins(lock: Path = RUNTIME_LOCK) -> dict[str, str]:
    """What the image holds: the runtime lock's pins less the not-shipped distributions."""
    dropped = not_shipped()
    return {name: v for name, v in locked_pins(lock).items() if name not in dropped}
