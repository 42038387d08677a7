"""`replay --expect-recorded`: compare each answer with the one `serve --record-dir` stored.

A record holds the request and the server's response; replaying it with the server's flags
and objects must give the same response, byte for byte once parsed. Reviews without a stored
answer (not from a record file) are counted, not compared.
"""

from __future__ import annotations

import base64
import difflib
import sys
from typing import Any

import orjson

from webhook.cli.replay_inputs import Case


def _lines(response: dict[str, Any]) -> list[str]:
    """Pretty lines with the patch decoded, so a mismatch shows which operation differs."""
    inner = dict(response.get("response") or {})
    if isinstance(inner.get("patch"), str):
        try:
            inner["patch"] = orjson.loads(base64.b64decode(inner["patch"]))
        except ValueError:
            pass
    shown = {**response, "response": inner}
    return (
        orjson.dumps(shown, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()
    )


class RecordedExpectations:
    def __init__(self) -> None:
        self.matched = 0
        self.failures = 0
        self.without = 0  # reviews that came with no recorded answer

    def check(self, case: Case, response: dict[str, Any]) -> None:
        if case.recorded is None:
            self.without += 1
            return
        recorded = orjson.loads(case.recorded)
        if recorded == response:
            self.matched += 1
            return
        self.failures += 1
        diff = "\n".join(
            difflib.unified_diff(
                _lines(recorded), _lines(response), "recorded", "replayed", lineterm=""
            )
        )
        print(f"DIFFERENT {case.label}:\n{diff}", file=sys.stderr)

    def summary(self) -> str:
        compared = self.matched + self.failures
        text = f"replay: {self.matched} of {compared} matched the recorded responses"
        if self.without:
            text += f"; {self.without} review(s) had no recorded response"
        return text
