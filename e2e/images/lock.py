"""What requirements/runtime.txt pins: the distributions the webhook image installs."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

__all__ = ["RUNTIME_LOCK", "locked_pins"]

RUNTIME_LOCK = Path(__file__).resolve().parent.parent.parent / "requirements" / "runtime.txt"

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
