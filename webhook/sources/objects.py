"""`--objects`: ServiceAccounts and the pod-identity-webhook ConfigMap from YAML/JSON files.

Accepts what `kubectl get sa,cm -A -o yaml` prints (a `kind: List`), multi-document YAML and
JSON. This is the embedded source for running and replaying without a cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webhook.core.configmap import EMPTY_INDEX, ConfigMapIndex, parse_config
from webhook.core.settings import CONFIG_MAP_NAME
from webhook.sources.store import IdentityStore

try:  # libyaml's loader is ~10x faster on large `kubectl get -A` dumps
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

log = logging.getLogger("webhook.objects")


class ObjectsError(ValueError):
    """A file cannot be read or parsed; the message names the file."""


READ_KINDS = ("ServiceAccount", "ConfigMap")


@dataclass(slots=True)
class Objects:
    service_accounts: list[tuple[str, str, Mapping[str, str] | None]] = field(default_factory=list)
    config_map_document: str | None = None  # data.config of the pod-identity-webhook ConfigMap
    # Objects of another kind, which are not read: (kind, "FILE: object N (ns/name)").
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _documents(path: Path) -> Iterator[Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ObjectsError(f"{path}: {err.strerror or err}") from None
    if text.lstrip().startswith(("{", "[")):
        # JSON as JSON: the YAML loader refuses \u escapes of surrogate pairs (emoji as
        # `json.dump` and `jq -a` write them). Not JSON after all: YAML flow style.
        try:
            yield json.loads(text)
            return
        except ValueError:
            pass
    try:
        yield from yaml.load_all(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ObjectsError(f"{path}: not valid YAML or JSON: {err}") from None


def _flatten(document: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(document, dict):
        return
    if document.get("kind") == "List" or (
        isinstance(document.get("items"), list) and str(document.get("kind", "")).endswith("List")
    ):
        for item in document.get("items") or ():
            yield from _flatten(item)
    else:
        yield document


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given, and the YAML/JSON files found under directories."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
            )
        else:
            files.append(path)
    return files


def load_objects(paths: Sequence[str], config_map_namespace: str | None) -> Objects:
    """Read every file; `config_map_namespace` None means ConfigMap mode is off."""
    objects = Objects()
    for file in expand_paths(paths):
        for number, obj in enumerate((o for doc in _documents(file) for o in _flatten(doc)), 1):
            kind = obj.get("kind")
            meta = obj.get("metadata") or {}
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                continue
            namespace = meta.get("namespace") or "default"
            if kind not in READ_KINDS:
                objects.skipped.append(
                    (str(kind), f"{file}: object {number} ({namespace}/{meta['name']})")
                )
                continue
            if kind == "ServiceAccount":
                annotations = meta.get("annotations")
                if annotations is not None and not isinstance(annotations, dict):
                    raise ObjectsError(
                        f"{file}: ServiceAccount {namespace}/{meta['name']}: "
                        "metadata.annotations must be a map"
                    )
                objects.service_accounts.append(
                    (
                        namespace,
                        meta["name"],
                        {str(k): str(v) for k, v in (annotations or {}).items()},
                    )
                )
            elif (
                kind == "ConfigMap"
                and config_map_namespace is not None
                and meta["name"] == CONFIG_MAP_NAME
                and namespace == config_map_namespace
            ):
                data = obj.get("data") or {}
                config = data.get("config") if isinstance(data, dict) else None
                if config is not None and not isinstance(config, str):
                    # The API server stores only strings in data: an unquoted YAML mapping
                    # here could never be applied, so the file is rejected, not half-read.
                    raise ObjectsError(
                        f"{file}: ConfigMap {namespace}/{CONFIG_MAP_NAME}: data.config must "
                        f"be a string of JSON, got {type(config).__name__} (quote it, or use |)"
                    )
                objects.config_map_document = config
    return objects


class ObjectsSource:
    """Loads --objects into the store, and again whenever a file changes."""

    def __init__(
        self, paths: Sequence[str], store: IdentityStore, config_map_namespace: str | None
    ) -> None:
        self.paths = list(paths)
        self.store = store
        self.config_map_namespace = config_map_namespace
        store.add_refill("--objects", self.load)

    def watched_files(self) -> list[str]:
        return [str(p) for p in expand_paths(self.paths)]

    def load(self) -> None:
        """Raises ObjectsError (or ConfigMapError) and leaves the store untouched on failure."""
        objects = load_objects(self.paths, self.config_map_namespace)
        index: ConfigMapIndex = EMPTY_INDEX
        if objects.config_map_document is not None:
            index = parse_config(objects.config_map_document, self.store.settings)
            for warning in index.warnings:
                log.warning(warning)
        self.store.replace_service_accounts(objects.service_accounts)
        self.store.set_config_map(index)
        log.info(
            "loaded objects: %d service accounts (%d with an identity), %d ConfigMap entries",
            self.store.service_account_count,
            self.store.identity_count,
            len(index),
        )
