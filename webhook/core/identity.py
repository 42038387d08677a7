"""Which AWS identity a pod gets: pure resolution over what the sources know.

The shell gathers a `Lookup` (ServiceAccount annotations, ConfigMap entries, container
credentials identities) and `resolve_identity` decides, in upstream's order:
container credentials, then the ServiceAccount's role annotation, then the ConfigMap.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from webhook.core.gocompat import parse_bool, parse_int64
from webhook.core.settings import (
    DEFAULT_TOKEN_EXPIRATION,
    MutationSettings,
    clamp_expiration,
    expiration_warning,
)

if TYPE_CHECKING:
    from webhook.core.mutation import Resolution

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
    token_expiration: int  # within the API server's range already
    # Why a value had to be changed, for the admission warning (None: nothing to say).
    expiration_warning: str | None = None
    audience_warning: str | None = None


def parse_expiration(raw: str | None) -> int | None:
    """An annotation's expiration as `strconv.ParseInt` reads it; None when absent or invalid."""
    if raw is None:
        return None
    try:
        return parse_int64(raw)
    except ValueError:
        return None


def empty_audience_warning(origin: str, default: str) -> str:
    # An empty audience makes the API server issue a token for its own audience, which STS
    # refuses ("Incorrect token audience"); upstream omits the field and gets exactly that.
    return (
        f"{origin} is empty; the token gets the default audience {default!r} "
        "(--token-audience), as if it were not set"
    )


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
    requested = parse_expiration(annotations.get(settings.token_expiration_key))
    expiration = settings.token_expiration if requested is None else clamp_expiration(requested)
    audience = annotations.get(settings.audience_key) or settings.token_audience
    return IdentityEntry(
        role_arn=role_arn,
        audience=audience,
        use_regional_sts=regional,
        token_expiration=expiration,
        expiration_warning=(
            None
            if requested is None
            else expiration_warning(f"its annotation {settings.token_expiration_key}", requested)
        ),
        audience_warning=(
            empty_audience_warning(
                f"its annotation {settings.audience_key}", settings.token_audience
            )
            if annotations.get(settings.audience_key) == ""
            else None
        ),
    )


@dataclass(frozen=True, slots=True)
class Lookup:
    """Everything the sources know about one (namespace, serviceAccount) pair."""

    service_account: IdentityEntry | None = None  # None: the ServiceAccount is not known
    config_map: IdentityEntry | None = None  # best ConfigMap match: exact, glob, then `*`
    config_map_exact: IdentityEntry | None = None  # exact-namespace ConfigMap key only
    container_credentials: bool = False
    # What a review derives from this lookup alone (mutation.resolve), when whoever built the
    # lookup computed it (the store, once per ServiceAccount entry). Set at construction and
    # never changed; not part of the value.
    resolution: Resolution | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Identity:
    mode: Mode
    source: Source
    role_arn: str
    audience: str
    use_regional_sts: bool
    token_expiration: int  # before the pod's own token-expiration annotation
    warnings: tuple[str, ...] = ()  # about the ServiceAccount's or ConfigMap's settings


def _warnings(*candidates: str | None) -> tuple[str, ...]:
    return tuple(w for w in candidates if w)


def resolve_identity(lookup: Lookup, settings: MutationSettings) -> Identity | None:
    """Which identity `lookup` gives under `settings`."""
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
            warnings=_warnings(common.expiration_warning) if common else (),
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
                warnings=_warnings(entry.audience_warning, entry.expiration_warning),
            )
    return None
