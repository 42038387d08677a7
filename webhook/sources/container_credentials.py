"""`--watch-container-credentials-config`: which (namespace, serviceAccount) pairs use EKS Pod
Identity. JSON `{"identities": [{"namespace": "..", "serviceAccount": ".."}]}`; an empty file
clears the list; a broken file is reported and the previous list stays in force."""

from __future__ import annotations

import json

from webhook.core.gocompat import json_field


class ContainerCredentialsError(ValueError):
    pass


def parse_identities(content: bytes) -> frozenset[tuple[str, str]]:
    if not content.strip():
        return frozenset()
    try:
        document = json.loads(content)
    except ValueError as err:
        raise ContainerCredentialsError(f"not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise ContainerCredentialsError('expected an object {"identities": [...]}')
    identities = json_field(document, "identities") or []
    if not isinstance(identities, list):
        raise ContainerCredentialsError('"identities" must be a list')
    pairs: set[tuple[str, str]] = set()
    for index, item in enumerate(identities):
        if not isinstance(item, dict):
            raise ContainerCredentialsError(f"identities[{index}] must be an object")
        namespace = json_field(item, "namespace") or ""
        account = json_field(item, "serviceAccount") or ""
        if not isinstance(namespace, str) or not isinstance(account, str):
            raise ContainerCredentialsError(
                f"identities[{index}]: namespace and serviceAccount must be strings"
            )
        pairs.add((namespace, account))
    return frozenset(pairs)
