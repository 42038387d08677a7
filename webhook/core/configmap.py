"""The `pod-identity-webhook` ConfigMap: `data.config` is JSON keyed by "<namespace>/<sa>".

Parsing follows Go's encoding/json into upstream's Entry struct (field names match
case-insensitively, the last duplicate wins, a wrong type rejects the whole document) with
the improvements listed in the README: glob namespaces, audience and expiration defaults.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from webhook.core.gocompat import json_field
from webhook.core.identity import IdentityEntry, empty_audience_warning
from webhook.core.settings import MutationSettings, clamp_expiration, expiration_warning

_GLOB_CHARS = frozenset("*?[")
_INT64 = range(-(2**63), 2**63)  # Entry.TokenExpiration is an int64 in upstream
_ORIGIN = "the pod-identity-webhook ConfigMap entry's {}"


class ConfigMapError(ValueError):
    """The document cannot be used; the previous contents stay in force."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    namespace_glob: str
    matcher: re.Pattern[str]
    service_account: str
    entry: IdentityEntry


@dataclass(frozen=True, slots=True)
class ConfigMapIndex:
    exact: dict[tuple[str, str], IdentityEntry] = field(default_factory=dict)
    patterns: tuple[_Pattern, ...] = ()  # most specific first; `*` last
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.exact) + len(self.patterns)

    def lookup_exact(self, namespace: str, service_account: str) -> IdentityEntry | None:
        return self.exact.get((namespace, service_account))

    def lookup(self, namespace: str, service_account: str) -> IdentityEntry | None:
        entry = self.exact.get((namespace, service_account))
        if entry is not None:
            return entry
        for pattern in self.patterns:
            if pattern.service_account == service_account and pattern.matcher.match(namespace):
                return pattern.entry
        return None


EMPTY_INDEX = ConfigMapIndex()


def _entry(key: str, raw: Any, settings: MutationSettings) -> IdentityEntry:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigMapError(f"entry {key!r} must be an object, got {type(raw).__name__}")
    role_arn = json_field(raw, "RoleARN")
    audience = json_field(raw, "Audience")
    regional = json_field(raw, "UseRegionalSTS")
    expiration = json_field(raw, "TokenExpiration")
    for name, value, kind in (
        ("RoleARN", role_arn, str),
        ("Audience", audience, str),
        ("UseRegionalSTS", regional, bool),
    ):
        if value is not None and not isinstance(value, kind):
            raise ConfigMapError(f"entry {key!r}: {name} must be a {kind.__name__}")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int)):
        raise ConfigMapError(f"entry {key!r}: TokenExpiration must be an integer")
    if expiration is not None and expiration not in _INT64:
        # Upstream cannot decode it either and keeps the previous document; so do we.
        raise ConfigMapError(f"entry {key!r}: TokenExpiration {expiration} is out of int64 range")
    return IdentityEntry(
        role_arn=role_arn or "",
        audience=audience or settings.token_audience,
        use_regional_sts=bool(regional),
        token_expiration=clamp_expiration(expiration or settings.token_expiration),
        expiration_warning=(
            expiration_warning(_ORIGIN.format("TokenExpiration"), expiration)
            if expiration
            else None
        ),
        audience_warning=(
            empty_audience_warning(_ORIGIN.format("Audience"), settings.token_audience)
            if audience == ""
            else None
        ),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; Go does not


def _specificity(pattern: _Pattern) -> tuple[bool, int, str]:
    # Longest pattern first, ties in lexical order, the catch-all `*` last.
    glob = pattern.namespace_glob
    return (glob == "*", -len(glob), glob)


def parse_config(document: str | None, settings: MutationSettings) -> ConfigMapIndex:
    """Parse `data.config`. Raises ConfigMapError when the document must be rejected whole.

    Missing, blank and `null` mean no entries (upstream: `null` decodes to an empty map; a
    blank document is a decode error there, which keeps the old entries).
    """
    if document is None or not document.strip():
        return EMPTY_INDEX
    try:
        raw = json.loads(document, parse_constant=_reject_constant)
    except ValueError as err:
        raise ConfigMapError(f"config is not valid JSON: {err}") from None
    if raw is None:
        return EMPTY_INDEX
    if not isinstance(raw, dict):
        raise ConfigMapError('config must be a JSON object keyed by "<namespace>/<sa>"')
    exact: dict[tuple[str, str], IdentityEntry] = {}
    patterns: list[_Pattern] = []
    warnings: list[str] = []
    for key, value in raw.items():
        parts = key.split("/")
        if len(parts) < 2:
            warnings.append(f'ignoring ConfigMap key {key!r}: expected "<namespace>/<sa>"')
            continue
        namespace, service_account = parts[0], parts[1]
        entry = _entry(key, value, settings)
        if any(c in _GLOB_CHARS for c in namespace):
            matcher = re.compile(fnmatch.translate(namespace))
            patterns.append(_Pattern(namespace, matcher, service_account, entry))
        else:
            exact[(namespace, service_account)] = entry
    patterns.sort(key=_specificity)
    return ConfigMapIndex(exact=exact, patterns=tuple(patterns), warnings=tuple(warnings))
