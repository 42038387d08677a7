"""The e2e images, built locally and cached: nothing is pulled from a registry.

    images = build_images()
    images.pause.ref      # "localhost/piw-e2e/pause:3.10"
    images.pause.archive  # docker-archive for `ctr -n k8s.io images import`

Each image is built once per key (a hash of what it is made from) and kept as an archive
in the cache; a later call only checks that podman's storage holds that image (loading the
archive when it does not), which takes a second or two.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.images import podman
from e2e.images.cache import cache_root, hash_key, locked
from e2e.images.host import ensure_programs

__all__ = ["PAUSE_REF", "Image", "Images", "build_images", "pause_image"]

HERE = Path(__file__).resolve().parent
PAUSE_DIR = HERE / "pause"

PAUSE_REF = "localhost/piw-e2e/pause:3.10"

# Bump a recipe when its build steps change in a way the hashed inputs do not show.
PAUSE_RECIPE = "1"


@dataclass(frozen=True)
class Image:
    """A built image: its fully qualified name and an archive containerd can import."""

    ref: str
    archive: Path
    id: str


@dataclass(frozen=True)
class Images:
    pause: Image


def _log(message: str) -> None:
    print(f"e2e-images: {message}", file=sys.stderr, flush=True)


def _cached(name: str, ref: str, key: str, build: Callable[[Path], None]) -> Image:
    """The image `ref` for `key`: from the cache, else made by `build(workdir)` and saved.

    `build` leaves `ref` in podman's storage; its archive and ID are then kept under
    <cache>/<name>-<key>/. Callers hold the cache lock.
    """
    entry = cache_root() / f"{name}-{key}"
    archive = entry / "image.tar"
    id_file = entry / "image-id"
    if archive.exists() and id_file.exists():
        want = id_file.read_text().strip()
        if podman.image_id(ref) != want:
            _log(f"loading {ref} from {archive}")
            podman.podman("load", "-q", "-i", archive)
            if podman.image_id(ref) != want:
                raise podman.PodmanError(f"{archive} did not load as {ref} ({want})")
        return Image(ref=ref, archive=archive, id=want)

    work = entry.with_name(f".{entry.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _log(f"building {ref} (key {key})")
    build(work)
    built = podman.image_id(ref)
    if built is None:
        raise podman.PodmanError(f"building {name} did not leave {ref} in podman's storage")
    entry.mkdir(parents=True, exist_ok=True)
    podman.save(ref, archive)
    # Last: the ID file marks the entry complete.
    id_file.write_text(built + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return Image(ref=ref, archive=archive, id=built)


def _gcc_version() -> str:
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def _compile_pause(dest: Path) -> Path:
    """The static pause binary, at dest/pause (also the demo image's PID 1)."""
    ensure_programs({"gcc": "gcc", f"/usr/lib/{platform.machine()}-linux-gnu/libc.a": "libc6-dev"})
    binary = dest / "pause"
    subprocess.run(
        [
            "gcc",
            "-static",
            "-O2",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            binary,
            PAUSE_DIR / "pause.c",
        ],
        check=True,
    )
    return binary


def _pause() -> Image:
    ensure_programs({"gcc": "gcc"})
    sources = [(p.name, p) for p in sorted(PAUSE_DIR.iterdir()) if p.is_file()]
    key = hash_key([PAUSE_RECIPE, _gcc_version()], sources)

    def build(work: Path) -> None:
        _compile_pause(work)
        podman.run_build(work, PAUSE_REF, containerfile=PAUSE_DIR / "Containerfile")

    return _cached("pause", PAUSE_REF, key, build)


def pause_image() -> Image:
    """Only the pod sandbox image (what a node needs before any pod can start)."""
    with locked(cache_root()):
        return _pause()


def build_images() -> Images:
    """Build what is missing, make sure podman holds every image, and return them all."""
    with locked(cache_root()):
        return Images(pause=_pause())
