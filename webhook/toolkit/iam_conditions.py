"""IAM `Condition` blocks: parsing and evaluation of the string operators.

Only what trust policies for web identity need is evaluated (the String* family, their
IfExists forms, the ForAnyValue/ForAllValues set qualifiers and Null); other operators are
parsed but reported as not evaluable. Semantics follow the IAM documentation:

* condition key names are case-insensitive, values are case-sensitive (except *IgnoreCase);
* several values for one key are ORed, several keys and operators are ANDed;
* a key absent from the request makes positive operators false, negated operators
  (StringNot*) true, ...IfExists operators true, ForAllValues true and ForAnyValue false;
* StringLike/StringNotLike understand `*` (any run of characters) and `?` (one character);
  StringEquals compares literally, so a `*` there only matches a literal asterisk.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from webhook.toolkit.render import InputError

STRING_OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
    }
)
EVALUABLE_OPERATORS = STRING_OPERATORS | {"Null"}
POSITIVE_STRING_OPERATORS = frozenset({"StringEquals", "StringEqualsIgnoreCase", "StringLike"})


class PolicyError(InputError):
    """A policy document that is not shaped like an IAM policy."""


@dataclass(frozen=True)
class Clause:
    """One `"Operator": {"key": values}` pair of a Condition block."""

    operator: str  # as written, e.g. "ForAnyValue:StringLike"
    base: str  # operator without qualifier and IfExists, e.g. "StringLike"
    qualifier: str | None  # "ForAnyValue", "ForAllValues" or None
    if_exists: bool
    key: str  # as written
    values: tuple[str, ...]

    @property
    def key_lower(self) -> str:
        return self.key.lower()

    @property
    def negated(self) -> bool:
        return self.base.startswith("StringNot")

    @property
    def evaluable(self) -> bool:
        return self.base in EVALUABLE_OPERATORS

    @property
    def uses_wildcards(self) -> bool:
        """Whether any value is a pattern (only meaningful for the *Like operators)."""
        return self.base in ("StringLike", "StringNotLike") and any(
            has_wildcard(v) for v in self.values
        )


def has_wildcard(value: str) -> bool:
    return "*" in _strip_escapes(value) or "?" in _strip_escapes(value)


def _strip_escapes(value: str) -> str:
    return value.replace("${*}", "").replace("${?}", "").replace("${$}", "")


def _value_text(value: object) -> str:
    # IAM accepts JSON booleans and numbers as condition values and compares their text.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise PolicyError(f"condition value {value!r} is not a string")


def split_operator(operator: str) -> tuple[str | None, str, bool]:
    """'ForAnyValue:StringLikeIfExists' -> ('ForAnyValue', 'StringLike', True)."""
    qualifier: str | None = None
    base = operator
    if ":" in operator:
        qualifier, base = operator.split(":", 1)
    if_exists = base.endswith("IfExists") and base != "IfExists"
    if if_exists:
        base = base.removesuffix("IfExists")
    return qualifier, base, if_exists


def parse_condition(block: object) -> list[Clause]:
    """The clauses of a statement's Condition element (absent -> no clauses)."""
    if block is None:
        return []
    if not isinstance(block, dict):
        raise PolicyError("Condition must be a JSON object of operators")
    clauses: list[Clause] = []
    for operator, keys in block.items():
        if not isinstance(keys, dict):
            raise PolicyError(f"Condition operator {operator} must map condition keys to values")
        qualifier, base, if_exists = split_operator(str(operator))
        for key, raw in keys.items():
            items = raw if isinstance(raw, list) else [raw]
            values = tuple(_value_text(v) for v in items)
            clauses.append(Clause(str(operator), base, qualifier, if_exists, str(key), values))
    return clauses


@lru_cache(maxsize=512)
def _like_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        # ${*}, ${?} and ${$} are IAM's escapes for literal *, ? and $.
        if pattern.startswith(("${*}", "${?}", "${$}"), i):
            out.append(re.escape(pattern[i + 2]))
            i += 4
            continue
        char = pattern[i]
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def string_like(pattern: str, value: str) -> bool:
    """IAM StringLike: `*` matches any run (also empty), `?` exactly one character."""
    return _like_regex(pattern).fullmatch(value) is not None


def _literal(value: str) -> str:
    return value.replace("${*}", "*").replace("${?}", "?").replace("${$}", "$")


def _value_matches(base: str, policy_value: str, request_value: str) -> bool:
    if base in ("StringEquals", "StringNotEquals"):
        return _literal(policy_value) == request_value
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return _literal(policy_value).casefold() == request_value.casefold()
    return string_like(policy_value, request_value)


def evaluate(clause: Clause, context: Mapping[str, Sequence[str]]) -> bool | None:
    """Whether the clause holds for a request whose condition keys (lower-case) map to values.

    Returns None when the operator is not one this module evaluates."""
    if not clause.evaluable:
        return None
    present = clause.key_lower in context
    request = list(context.get(clause.key_lower, ()))
    if clause.base == "Null":
        wants_absent = any(v.lower() == "true" for v in clause.values)
        return (not present) if wants_absent else present

    def matches(value: str) -> bool:
        return any(_value_matches(clause.base, p, value) for p in clause.values)

    if clause.qualifier == "ForAllValues":
        if not request:
            return True
        if clause.negated:
            return all(not matches(v) for v in request)
        return all(matches(v) for v in request)
    if clause.qualifier == "ForAnyValue":
        if not request:
            return clause.if_exists
        if clause.negated:
            return any(not matches(v) for v in request)
        return any(matches(v) for v in request)
    if not present:
        return clause.negated or clause.if_exists
    if clause.negated:
        return not any(matches(v) for v in request)
    return any(matches(v) for v in request)


def describe_clause(clause: Clause) -> str:
    values = ", ".join(f'"{v}"' for v in clause.values)
    return f'{clause.operator} "{clause.key}" = [{values}]'
