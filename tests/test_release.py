"""The release workflow's promises, read from .github/workflows/release.yml (it only runs on
GitHub; actionlint in `make lint` checks its syntax and expressions, this checks intent)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    result: list[dict[str, Any]] = job["steps"]
    return result


def step_using(workflow: dict[Any, Any], action: str) -> dict[str, Any]:
    (found,) = [s for s in steps(workflow) if s.get("uses", "").startswith(action + "@")]
    return found


def test_runs_on_version_tags_only(workflow: dict[Any, Any]) -> None:
    # PyYAML reads the bare key `on` as True.
    assert workflow[True] == {"push": {"tags": ["v*"]}}


def test_permissions_are_granted_to_the_job_only(workflow: dict[Any, Any]) -> None:
    assert workflow["permissions"] == {}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write", "packages": "write", "id-token": "write"}


def test_every_action_is_pinned_to_a_commit(workflow: dict[Any, Any]) -> None:
    """A tag can be moved to other code; a commit SHA cannot."""
    uses = [s["uses"] for s in steps(workflow) if "uses" in s]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
    text = WORKFLOW.read_text()
    for ref in uses:  # and says which release it is
        assert re.search(re.escape(ref) + r" # v\d+\.\d+\.\d+", text), ref


def test_image_is_multi_arch_pushed_and_labelled(workflow: dict[Any, Any]) -> None:
    build = step_using(workflow, "docker/build-push-action")["with"]
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert build["push"] is True
    args = dict(line.split("=", 1) for line in build["build-args"].strip().splitlines())
    assert args["REVISION"] == "${{ github.sha }}"
    assert {"VERSION", "CREATED"} <= args.keys()
    assert build["tags"].startswith("${{ steps.meta.outputs.image }}")


def test_image_and_chart_are_signed_keylessly_and_the_sbom_attested(
    workflow: dict[Any, Any],
) -> None:
    scripts = "\n".join(s.get("run", "") for s in steps(workflow))
    assert 'cosign sign --yes "$IMAGE"' in scripts
    assert 'cosign attest --yes --type cyclonedx --predicate "$SBOM" "$IMAGE"' in scripts
    assert 'helm push "$CHART" "$CHARTS"' in scripts
    assert re.search(r"cosign sign --yes \S*pod-identity-webhook@\$digest", scripts)
    # Keyless: no key material anywhere.
    assert "--key" not in scripts and "COSIGN_PRIVATE_KEY" not in WORKFLOW.read_text()
    (sign,) = [s for s in steps(workflow) if "cosign attest" in s.get("run", "")]
    assert sign["env"]["IMAGE"].endswith("@${{ steps.image.outputs.digest }}"), (
        "sign the pushed digest, not a tag that can move"
    )


def test_dist_comes_from_make_release_and_the_lock_is_checked(workflow: dict[Any, Any]) -> None:
    runs = [s.get("run", "") for s in steps(workflow)]
    checks = next(i for i, r in enumerate(runs) if "make lock-check" in r)
    release = next(i for i, r in enumerate(runs) if "make release RELEASE_ARGS=--no-image" in r)
    publish = next(i for i, r in enumerate(runs) if "gh release create" in r)
    assert checks < release < publish
    assert "dist/*" in runs[publish]


def test_helm_is_the_version_the_e2e_tools_pin(workflow: dict[Any, Any]) -> None:
    pins = dict(
        line.split("=", 1)
        for line in (REPO / "e2e" / "tools" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert step_using(workflow, "Azure/setup-helm")["with"]["version"] == pins["HELM_VERSION"]
