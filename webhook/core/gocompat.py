"""Go standard-library parsing semantics that upstream's behaviour depends on.

Users write annotations and flags that the Go webhook accepted; to be a drop-in replacement we
must accept exactly the same spellings, and reject the same ones.
"""

from __future__ import annotations

import re
from typing import Any

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z", re.ASCII)


def parse_bool(text: str) -> bool:
    """`strconv.ParseBool`: the only twelve accepted spellings; ValueError for anything else."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r} (accepted: 1, t, T, TRUE, true, True, 0, f, ...)")


def parse_int64(text: str) -> int:
    """`strconv.ParseInt(s, 10, 64)`: optional sign, ASCII digits only, no spaces or '_'."""
    if not _DECIMAL.match(text):
        raise ValueError(f"invalid integer {text!r}")
    value = int(text, 10)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"integer {text!r} out of range")
    return value


def csv_first_record(text: str) -> list[str] | None:
    """The first record `encoding/csv` (default Reader) reads from `text`, or None on error/EOF.

    Go semantics that matter here: blank lines are skipped, leading spaces are kept, a field may
    be quoted with `""` escaping a quote, a quote inside an unquoted field or text after a
    closing quote is an error, and a record ends at the first newline outside quotes.
    """
    text = text.replace("\r\n", "\n")
    if text.endswith("\r"):  # the reader drops a lone trailing \r before EOF
        text = text[:-1]
    pos = 0
    n = len(text)
    while pos < n and text[pos] == "\n":  # the reader skips empty lines
        pos += 1
    if pos >= n:
        return None
    fields: list[str] = []
    while True:
        if pos < n and text[pos] == '"':
            pos += 1
            buf: list[str] = []
            while True:
                quote = text.find('"', pos)
                if quote < 0:
                    return None  # extraneous or missing " in quoted-field
                buf.append(text[pos:quote])
                pos = quote + 1
                if pos < n and text[pos] == '"':
                    buf.append('"')
                    pos += 1
                    continue
                break
            fields.append("".join(buf))
            if pos >= n or text[pos] == "\n":
                return fields
            if text[pos] != ",":
                return None  # `"a"b`: extraneous " in field
            pos += 1
            continue
        end = pos
        while end < n and text[end] not in ",\n":
            end += 1
        field = text[pos:end]
        if '"' in field:
            return None  # bare " in non-quoted field
        fields.append(field)
        if end >= n or text[end] == "\n":
            return fields
        pos = end + 1


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """`time.ParseDuration` → seconds. Accepts "0", "1.5s", "1m30s", "-2h", "300ms"."""
    original = text
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"invalid duration {original!r}")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {original!r} (examples: 300ms, 1.5s, 2m)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def clean_path(path: str) -> str:
    """`path.Clean`: lexical clean-up; unlike posixpath.normpath, "//a" becomes "/a"."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def join_path(*elements: str) -> str:
    """`filepath.Join` on Linux: join the non-empty elements with "/" and clean the result."""
    kept = [e for e in elements if e]
    if not kept:
        return ""
    return clean_path("/".join(kept))


def json_field(obj: dict[str, Any], name: str) -> Any:
    """A struct field as encoding/json fills it: keys match case-insensitively, last one wins."""
    value: Any = None
    lowered = name.lower()
    for key, item in obj.items():
        if key.lower() == lowered:
            value = item
    return value
