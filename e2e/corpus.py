"""The conformance corpus (tests/corpus/cases) as the e2e suite uses it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CASES = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "cases"
GROUP_FLAGS_FILE = "args"


@dataclass(frozen=True)
class CorpusCase:
    directory: Path
    name: str
    group: str
    namespace: str
    service_account: str
    improvement: str | None
    ours_only: bool
    flags: tuple[str, ...]
    objects: tuple[dict[str, Any], ...]
    pod: dict[str, Any]
    identities: tuple[dict[str, str], ...]

    @property
    def config_map_entries(self) -> dict[str, Any]:
        for obj in self.objects:
            if obj.get("kind") == "ConfigMap":
                entries: dict[str, Any] = json.loads(obj["data"]["config"])
                return entries
        return {}

    @property
    def service_accounts(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == "ServiceAccount"]

    def fresh_pod(self) -> dict[str, Any]:
        return copy.deepcopy(self.pod)


def load_cases() -> list[CorpusCase]:
    cases = []
    for directory in sorted(p for p in CASES.iterdir() if p.is_dir()):
        meta = json.loads((directory / "case.json").read_text())
        objects = yaml.safe_load((directory / "objects.yaml").read_text())["items"]
        review = json.loads((directory / "review.json").read_text())
        identities_file = directory / "identities.json"
        identities = (
            json.loads(identities_file.read_text())["identities"]
            if identities_file.exists()
            else []
        )
        cases.append(
            CorpusCase(
                directory=directory,
                name=directory.name,
                group=meta["group"],
                namespace=meta["namespace"],
                service_account=meta["serviceAccountName"],
                improvement=meta["improvement"],
                ours_only=meta["oursOnly"],
                flags=tuple(
                    a for a in (directory / GROUP_FLAGS_FILE).read_text().splitlines() if a
                ),
                objects=tuple(objects),
                pod=review["request"]["object"],
                identities=tuple(identities),
            )
        )
    return cases
