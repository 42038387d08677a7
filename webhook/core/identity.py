"""Which AWS identity a pod gets: pure resolution over what the sources know.

The shell gathers a `Lookup` (ServiceAccount annotations, ConfigMap entries, container
credentials identities) and `resolve_identity` decides, in upstream's order:
container credentials, then the ServiceAccount's role annotation, then the ConfigMap.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from webhook.core.gocompat import parse_bool, parse_int64
from webhook.core.settings import DEFAULT_TOKEN_EXPIRATION, MutationSettings, clamp_expiration

# Upstream's validity check, with Go RE2 semantics: ASCII \d and \w, `$` only at the very end.
_ROLE_ARN = re.compile(r"^arn:aws[a-z0-9-]*:iam::\d{12}:role/[\w\-/.@+=,]+\Z", re.ASCII)


def is_valid_role_arn(arn: str) -> bool:
    return _ROLE_ARN.match(arn) is not None


class Mode(enum.Enum):
    WEB_IDENTITY = "sts_web_identity"
    CONTAINER_CREDENTIALS = "container_credentials"


class Source(enum.Enum):
    ANNOTATION = "annotation"
    CONFIG_MAP = "configmap"
    CONTAINER_CREDENTIALS = "container-credentials"


@dataclass(frozen=True, slots=True)
class IdentityEntry:
    """What one ServiceAccount annotation set or ConfigMap entry says; parsed once on arrival."""

    role_arn: str  # "" when no role is configured
    audience: str
    use_regional_sts: bool
    token_expiration: int


def expiration_override(raw: str | None, fallback: int) -> int:
    """An annotation's expiration, clamped; absent or unparsable keeps the previous level."""
    if raw is None:
        return fallback
    try:
        return clamp_expiration(parse_int64(raw))
    except ValueError:
        return fallback


def entry_from_annotations(
    annotations: Mapping[str, str], settings: MutationSettings
) -> IdentityEntry:
    """Parse a ServiceAccount's annotations; invalid values fall back to the flag values."""
    role_arn = annotations.get(settings.role_arn_key, "")
    if role_arn and settings.compose_role_arn is not None:
        role_arn = settings.compose_role_arn.compose(role_arn)
    regional = settings.sts_regional_endpoint
    raw_regional = annotations.get(settings.sts_regional_key)
    if raw_regional is not None:
        try:
            regional = parse_bool(raw_regional)
        except ValueError:
            pass
    expiration = expiration_override(
        annotations.get(settings.token_expiration_key), settings.token_expiration
    )
    return IdentityEntry(
        role_arn=role_arn,
        audience=annotations.get(settings.audience_key, settings.token_audience),
        use_regional_sts=regional,
        token_expiration=expiration,
    )


@dataclass(frozen=True, slots=True)
class Lookup:
    """Everything the sources know about one (namespace, serviceAccount) pair."""

    service_account: IdentityEntry | None = None  # None: the ServiceAccount is not known
    config_map: IdentityEntry | None = None  # best ConfigMap match: exact, glob, then `*`
    config_map_exact: IdentityEntry | None = None  # exact-namespace ConfigMap key only
    container_credentials: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    mode: Mode
    source: Source
    role_arn: str
    audience: str
    use_regional_sts: bool
    token_expiration: int  # before the pod's own token-expiration annotation


def resolve_identity(lookup: Lookup, settings: MutationSettings) -> Identity | None:
    if lookup.container_credentials:
        # Only STS and expiration carry over; a role ARN is irrelevant in this mode.
        common = lookup.service_account or lookup.config_map_exact
        return Identity(
            mode=Mode.CONTAINER_CREDENTIALS,
            source=Source.CONTAINER_CREDENTIALS,
            role_arn="",
            audience=settings.container_credentials.audience,
            use_regional_sts=common.use_regional_sts if common else False,
            token_expiration=common.token_expiration if common else DEFAULT_TOKEN_EXPIRATION,
        )
    for entry, source in (
        (lookup.service_account, Source.ANNOTATION),
        (lookup.config_map, Source.CONFIG_MAP),
    ):
        if entry is not None and entry.role_arn:
            return Identity(
                mode=Mode.WEB_IDENTITY,
                source=source,
                role_arn=entry.role_arn,
                audience=entry.audience,
                use_regional_sts=entry.use_regional_sts,
                token_expiration=entry.token_expiration,
            )
    return None
