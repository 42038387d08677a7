"""`make release` for real: scripts/release.sh writes dist/ and every artifact is checked.

The image is built on the local Debian base (no registry is reachable here) with podman, as
e2e/images does; helm is the pinned one from e2e/tools. One release run is shared by the
module's tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

import webhook
from e2e.controlplane import ToolsUnavailable, tools_dir
from e2e.images import build_images
from e2e.images.host import HostToolError
from e2e.images.lock import NOT_SHIPPED, RUNTIME_LOCK, locked_pins, not_shipped
from e2e.images.podman import env as podman_env

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pod-identity-webhook" / "Chart.yaml"
VERSION = webhook.__version__
# A cold image build on 2 cores, next to the other suites.
pytestmark = pytest.mark.timeout(1200)


@dataclass(frozen=True)
class Release:
    dist: Path
    log: str
    revision: str
    created_epoch: int

    def file(self, name: str) -> Path:
        path = self.dist / name
        assert path.is_file(), f"{name} missing from {sorted(p.name for p in self.dist.iterdir())}"
        return path


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _committed(path: Path, revision: str = "HEAD") -> str:
    """`path` as a commit has it: the release is built from the commit, not the work tree."""
    return _git("show", f"{revision}:{path.relative_to(REPO)}")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    required = os.environ.get("PIW_E2E_REQUIRED") == "1"
    try:
        base = build_images().base
        helm = tools_dir() / "helm"
    except (HostToolError, ToolsUnavailable) as e:
        if required:
            pytest.fail(f"PIW_E2E_REQUIRED=1 but a release cannot be built here: {e}")
        pytest.skip(f"a release cannot be built here: {e}")
    dist = tmp_path_factory.mktemp("dist")
    env = {**podman_env(), "DIST": str(dist), "BASE_IMAGE": base.ref, "HELM": str(helm)}
    env.pop("SOURCE_DATE_EPOCH", None)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "release.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert proc.returncode == 0, f"release.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(proc.stderr[proc.stderr.rfind("release: wrote:") :])
    # The commit the script says it built (HEAD may have moved on since: a shared tree).
    match = re.search(r"^release: version \S+, revision ([0-9a-f]{40}),", proc.stderr, re.M)
    assert match, proc.stderr[:2000]
    revision = match.group(1)
    # The archive is the artifact; the tagged image would keep a ~300 MB venv layer per commit.
    ref = f"localhost/pod-identity-webhook:{VERSION}-{revision[:12]}"
    subprocess.run(["podman", "rmi", ref], env=podman_env(), capture_output=True, check=False)
    return Release(
        dist=dist,
        log=proc.stderr,
        revision=revision,
        created_epoch=int(_git("log", "-1", "--format=%ct", revision)),
    )


def _chart_version(revision: str) -> str:
    version = yaml.safe_load(_committed(CHART, revision))["version"]
    assert isinstance(version, str)
    return version


def expected_artifacts(release: Release) -> set[str]:
    return {
        f"pod_identity_webhook-{VERSION}-py3-none-any.whl",
        f"pod_identity_webhook-{VERSION}.tar.gz",
        f"pod-identity-webhook-{VERSION}.oci.tar",
        f"pod-identity-webhook-{VERSION}.cdx.json",
        f"pod-identity-webhook-{_chart_version(release.revision)}.tgz",
        "SHA256SUMS",
    }


def test_release_writes_every_artifact_and_nothing_else(release: Release) -> None:
    assert {p.name for p in release.dist.iterdir()} == expected_artifacts(release)
    for name in expected_artifacts(release):
        assert release.file(name).stat().st_size > 0, name
        assert name in release.log, f"the listing at the end does not name {name}"


def test_sha256sums_cover_every_other_artifact_and_verify(release: Release) -> None:
    listed = [
        line.split(maxsplit=1)[1] for line in release.file("SHA256SUMS").read_text().splitlines()
    ]
    assert sorted(listed) == sorted(expected_artifacts(release) - {"SHA256SUMS"})
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=release.dist,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(listed)


def test_sbom_lists_exactly_what_the_image_ships_at_its_version(
    release: Release, tmp_path: Path
) -> None:
    bom = json.loads(release.file(f"pod-identity-webhook-{VERSION}.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("pod-identity-webhook", VERSION)
    components = {c["name"]: c for c in bom["components"]}
    lock = tmp_path / "runtime.txt"
    lock.write_text(_committed(RUNTIME_LOCK, release.revision) + "\n")
    dropped_file = tmp_path / "not-shipped.txt"
    dropped_file.write_text(_committed(NOT_SHIPPED, release.revision) + "\n")
    dropped = not_shipped(dropped_file)
    pins = {
        name: v for name, v in locked_pins(lock, this_platform=False).items() if name not in dropped
    }
    assert {name: c["version"] for name, c in components.items()} == pins
    assert "aiohttp" in dropped and not dropped & components.keys()
    refs = {c["bom-ref"] for c in components.values()} | {root.get("bom-ref")}
    for dependency in bom.get("dependencies", []):
        assert dependency["ref"] in refs and set(dependency.get("dependsOn", [])) <= refs
    for name, version in pins.items():
        assert components[name]["purl"] == f"pkg:pypi/{name}@{version}"
        hashes = [h for ref in components[name]["externalReferences"] for h in ref["hashes"]]
        assert hashes and all(h["alg"] == "SHA-256" for h in hashes), name
    # The lock's own hashes, not recomputed ones: a pin's hash list says what pip accepts.
    assert {"uvloop", "httptools", "kubernetes", "fastapi"} <= components.keys()
    assert not {"watchfiles", "websockets", "python-dotenv", "pytest"} & components.keys()


def test_chart_archive_holds_the_committed_chart_version(release: Release) -> None:
    version = _chart_version(release.revision)
    with tarfile.open(release.file(f"pod-identity-webhook-{version}.tgz")) as tgz:
        member = tgz.extractfile("pod-identity-webhook/Chart.yaml")
        assert member is not None
        chart = yaml.safe_load(member.read())
    assert chart["name"] == "pod-identity-webhook"
    assert chart["version"] == version
    assert chart["appVersion"] == VERSION


def test_wheel_and_sdist_carry_the_version_and_the_license(release: Release) -> None:
    with zipfile.ZipFile(release.file(f"pod_identity_webhook-{VERSION}-py3-none-any.whl")) as whl:
        info = f"pod_identity_webhook-{VERSION}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        assert f"\nVersion: {VERSION}\n" in metadata
        assert "\nLicense-Expression: Apache-2.0\n" in metadata
        assert whl.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    with tarfile.open(release.file(f"pod_identity_webhook-{VERSION}.tar.gz")) as sdist:
        names = set(sdist.getnames())
    top = f"pod_identity_webhook-{VERSION}"
    assert {f"{top}/LICENSE", f"{top}/pyproject.toml", f"{top}/webhook/__init__.py"} <= names


def _oci_blob(archive: tarfile.TarFile, digest: str) -> dict[str, object]:
    algorithm, _, hex_digest = digest.partition(":")
    member = archive.extractfile(f"blobs/{algorithm}/{hex_digest}")
    assert member is not None, digest
    blob: dict[str, object] = json.loads(member.read())
    return blob


def test_image_archive_is_an_oci_layout_labelled_with_the_commit(release: Release) -> None:
    with tarfile.open(release.file(f"pod-identity-webhook-{VERSION}.oci.tar")) as archive:
        layout = archive.extractfile("oci-layout")
        assert layout is not None
        assert json.loads(layout.read())["imageLayoutVersion"] == "1.0.0"
        index_file = archive.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
        (descriptor,) = index["manifests"]
        ref_name = descriptor["annotations"]["org.opencontainers.image.ref.name"]
        assert ref_name == f"localhost/pod-identity-webhook:{VERSION}-{release.revision[:12]}"
        manifest = _oci_blob(archive, descriptor["digest"])
        config_descriptor = manifest["config"]
        assert isinstance(config_descriptor, dict)
        config = _oci_blob(archive, config_descriptor["digest"])
    image_config = config["config"]
    assert isinstance(image_config, dict)
    labels = image_config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == release.revision
    created = datetime.fromtimestamp(release.created_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert labels["org.opencontainers.image.created"] == created
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert image_config["User"] == "65532:65532"
    assert image_config["Entrypoint"] == ["pod-identity-webhook"]
