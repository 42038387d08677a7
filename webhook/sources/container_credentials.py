"""`--watch-container-credentials-config`: which (namespace, serviceAccount) pairs use EKS Pod
Identity. JSON `{"identities": [{"namespace": "..", "serviceAccount": ".."}]}`.

Decoded as upstream's Go structs decode it: an empty (or blank) file, `null`, `{}` and a
`null` list mean no identities; a `null` item or field is the empty string; anything of the
wrong type, or that is not JSON, is an error, and the caller keeps the previous list and
retries. The one difference: a file of only whitespace is empty here, a decode error there.
"""

from __future__ import annotations

import json
from typing import Any

from webhook.core.gocompat import json_field


class ContainerCredentialsError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


def _string(item: dict[str, Any], name: str, index: int) -> str:
    value = json_field(item, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ContainerCredentialsError(f"identities[{index}].{name} must be a string")
    return value


def parse_identities(content: bytes) -> frozenset[tuple[str, str]]:
    # Go reads the bytes as UTF-8, replacing invalid sequences, and knows no other encoding.
    text = content.decode("utf-8", errors="replace")
    if not text.strip():
        return frozenset()
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        raise ContainerCredentialsError(f"not valid JSON: {err}") from None
    if document is None:
        return frozenset()
    if not isinstance(document, dict):
        raise ContainerCredentialsError('expected an object {"identities": [...]}')
    identities = json_field(document, "identities")
    if identities is None:
        return frozenset()
    if not isinstance(identities, list):
        raise ContainerCredentialsError('"identities" must be a list')
    pairs: set[tuple[str, str]] = set()
    for index, item in enumerate(identities):
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise ContainerCredentialsError(f"identities[{index}] must be an object")
        pairs.add((_string(item, "namespace", index), _string(item, "serviceAccount", index)))
    return frozenset(pairs)
