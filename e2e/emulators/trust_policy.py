"""Role trust-policy evaluation for sts:AssumeRoleWithWebIdentity, the part IAM applies to OIDC.

An explicit Deny wins; otherwise some Allow statement must name the caller's federated principal,
the action, and have every condition hold. Supported condition operators: StringEquals,
StringNotEquals, StringLike, StringNotLike (each optionally ...IfExists), with the ForAnyValue: /
ForAllValues: set qualifiers. Condition keys compare case-insensitively, values case-sensitively,
as IAM does. An unsupported operator never holds, so an Allow that uses one grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ACTION = "sts:AssumeRoleWithWebIdentity"
# Multi-valued request context: key (lower-cased) -> values.
Context = Mapping[str, Sequence[str]]


def allows(policy: Mapping[str, Any], *, federated: str, context: Context) -> bool:
    """Whether `policy` lets the federated principal `federated` assume the role here."""
    context = {k.lower(): list(v) for k, v in context.items()}
    matching = [s for s in _statements(policy) if _applies(s, federated, context)]
    if any(str(s.get("Effect")) == "Deny" for s in matching):
        return False
    return any(str(s.get("Effect")) == "Allow" for s in matching)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = policy.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    return [s for s in statements if isinstance(s, Mapping)]


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _applies(statement: Mapping[str, Any], federated: str, context: Context) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        principal_ok = True
    elif isinstance(principal, Mapping):
        principal_ok = federated in _as_list(principal.get("Federated"))
    else:
        principal_ok = False
    actions = _as_list(statement.get("Action"))
    action_ok = any(_like(a.lower(), ACTION.lower()) for a in actions)  # "sts:*" etc.
    conditions = statement.get("Condition", {})
    if not (principal_ok and action_ok and isinstance(conditions, Mapping)):
        return False
    return all(
        isinstance(block, Mapping) and _condition_holds(op, block, context)
        for op, block in conditions.items()
    )


def _like(pattern: str, value: str) -> bool:
    # IAM's StringLike: `*` any run, `?` one character, nothing else special.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _equals(pattern: str, value: str) -> bool:
    return pattern == value


# operator name (lower case) -> (how one pattern matches one value, whether the result is negated)
_MATCHERS: dict[str, tuple[Callable[[str, str], bool], bool]] = {
    "stringequals": (_equals, False),
    "stringnotequals": (_equals, True),
    "stringlike": (_like, False),
    "stringnotlike": (_like, True),
}


def _condition_holds(operator: str, block: Mapping[str, Any], context: Context) -> bool:
    qualifier, _, name = operator.rpartition(":")
    name = name.lower()
    if_exists = name.endswith("ifexists")
    name = name.removesuffix("ifexists")
    if name not in _MATCHERS or qualifier.lower() not in ("", "foranyvalue", "forallvalues"):
        return False  # unknown operator: IAM would not grant on a condition it cannot test
    match, negated = _MATCHERS[name]
    for key, wanted in block.items():
        values = context.get(key.lower())
        patterns = _as_list(wanted)
        if values is None:
            if if_exists or qualifier.lower() == "forallvalues":
                continue  # absent key: ...IfExists and ForAllValues hold vacuously
            if negated and not if_exists:
                continue  # a Not-operator on an absent key holds, as in IAM
            return False

        results = [any(match(p, v) for p in patterns) != negated for v in values]
        # ForAllValues: every value satisfies it; single-valued keys and ForAnyValue: some value.
        if not (all(results) if qualifier.lower() == "forallvalues" else any(results)):
            return False
    return True
