"""podman, configured for this kind of machine: no systemd, cgroup v1, no registry access.

podman is daemonless, builds Dockerfiles (buildah inside), runs containers for the image
checks and saves images as archives containerd imports. Its settings come from the
repo's containers.conf through CONTAINERS_CONF, so no file under /etc is edited.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from e2e.images.host import ensure_programs

__all__ = [
    "CONTAINERS_CONF",
    "PodmanError",
    "env",
    "image_id",
    "inspect",
    "podman",
    "run_build",
    "save",
]

CONTAINERS_CONF = Path(__file__).resolve().parent / "containers.conf"
# Where builds see the host's CA bundle (the Dockerfiles' PIP_CERT build argument).
BUILD_CA_PATH = "/run/piw-build-ca.crt"


class PodmanError(RuntimeError):
    """A podman command failed."""


def env() -> dict[str, str]:
    """The environment every podman call runs with (also for callers' own podman runs)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str | Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`, raising PodmanError with its output when it fails."""
    ensure_programs({"podman": "podman", "runc": "runc"})
    cmd = ["podman", *(str(a) for a in args)]
    proc = subprocess.run(
        cmd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise PodmanError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def image_id(ref: str) -> str | None:
    """The image ID `ref` names in podman's storage, or None when it names none."""
    try:
        out = podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    except PodmanError:
        return None
    return out or None


def inspect(ref: str) -> dict[str, object]:
    """`podman image inspect REF`: the image's config and metadata."""
    data = json.loads(podman("image", "inspect", ref).stdout)
    assert isinstance(data, list) and len(data) == 1, data
    result: dict[str, object] = data[0]
    return result


def save(ref: str, archive: Path) -> None:
    """Write `ref` as a docker-archive that keeps its name (`ctr images import` reads it)."""
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    podman("save", "--format", "docker-archive", "-o", partial, ref)
    partial.rename(archive)


def host_ca_bundle() -> Path | None:
    """The CA bundle pip trusts on this host (a TLS-intercepting proxy's CA may be in it)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return system if system.is_file() else None


def run_build(
    context: Path, tag: str, *, containerfile: Path | None = None, build_args: Sequence[str] = ()
) -> str:
    """Build `context` (its Containerfile/Dockerfile or `containerfile`) as `tag`; its image ID.

    The base must already be local (--pull=never: no registry is reachable), and the build
    shares the host's network and CA bundle so pip reaches PyPI exactly as on the host.
    """
    args: list[str | Path] = [
        "build",
        "--pull=never",
        "--network=host",
        "--layers=false",
        "-t",
        tag,
    ]
    ca = host_ca_bundle()
    if ca is not None:
        args += ["-v", f"{ca}:{BUILD_CA_PATH}:ro", "--build-arg", f"PIP_CERT={BUILD_CA_PATH}"]
    if containerfile is not None:
        args += ["-f", containerfile]
    for arg in build_args:
        args += ["--build-arg", arg]
    podman(*args, context, timeout=3600)
    found = image_id(tag)
    if found is None:
        raise PodmanError(f"podman build succeeded but {tag} is not in storage")
    return found
