"""Structured logs: one line per event, `key=value` (logfmt) or JSON, never secrets.

Verbosity follows klog's `-v`: 0 info (every denial is a warning line), 3 adds upstream's
"Pod was mutated" line per pod, 4 and above debug (one line per admission review).
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from webhook.review import KLOG_V3

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: object) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(record), default=str).decode()


def configure(verbosity: int, fmt: str, quiet: bool = False) -> None:
    """`quiet`: offline commands show only warnings unless -v asks for more."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.addLevelName(KLOG_V3, "INFO")  # klog writes V(3) lines as info too
    if verbosity >= 4:
        root.setLevel(logging.DEBUG)
    elif verbosity == 3:
        root.setLevel(KLOG_V3)
    else:
        root.setLevel(logging.WARNING if quiet and verbosity == 0 else logging.INFO)
    for noisy in ("uvicorn", "uvicorn.error", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
