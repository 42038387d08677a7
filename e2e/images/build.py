"""The e2e images, built locally and cached: nothing is pulled from a registry.

    images = build_images()
    images.pause.ref      # "localhost/piw-e2e/pause:3.10"
    images.pause.archive  # docker-archive for `ctr -n k8s.io images import`

Each image is built once per key (a hash of what it is made from) and kept as an archive
in the cache; a later call only checks that podman's storage holds that image (loading the
archive when it does not), which takes a second or two.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.images import debian, podman, sdks
from e2e.images.cache import cache_root, hash_key, locked, tree_files
from e2e.images.host import ensure_programs

__all__ = [
    "BASE_REPO",
    "BOTOCORE_VERSION",
    "DEMO_REF",
    "PAUSE_REF",
    "SDKS_REF",
    "WEBHOOK_REPO",
    "Image",
    "Images",
    "build_images",
    "pause_image",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PAUSE_DIR = HERE / "pause"
DEMO_DIR = HERE / "demo"

PAUSE_REF = "localhost/piw-e2e/pause:3.10"
BASE_REPO = "localhost/piw-e2e/debian-python"
WEBHOOK_REPO = "localhost/pod-identity-webhook"
DEMO_REF = "localhost/piw-e2e/irsa-demo:1"
SDKS_REF = sdks.SDKS_REF
# Recent, and new enough (>= 1.31.x) for service-specific endpoints: the web-identity
# provider's STS client honours AWS_ENDPOINT_URL_STS.
BOTOCORE_VERSION = "1.44.8"

# Cache entries kept per image name (the newest by last use).
KEEP_PER_NAME = 2

# Bump a recipe when its build steps change in a way the hashed inputs do not show.
PAUSE_RECIPE = "1"
BASE_RECIPE = "1"
WEBHOOK_RECIPE = "1"
DEMO_RECIPE = "1"
SDKS_RECIPE = "1"

# What `podman import` gives the base image: an imported rootfs has no config of its own.
BASE_CONFIG = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/usr/bin/python3"]',
)


@dataclass(frozen=True)
class Image:
    """A built image: its fully qualified name and an archive containerd can import."""

    ref: str
    archive: Path
    id: str


@dataclass(frozen=True)
class Images:
    pause: Image
    base: Image
    webhook: Image
    demo: Image
    sdks: Image  # Go, JavaScript and Java SDK programs (e2e/sdk, e2e/images/sdks.py)


def _log(message: str) -> None:
    print(f"e2e-images: {message}", file=sys.stderr, flush=True)


def _cached(name: str, ref: str, key: str, build: Callable[[Path], None]) -> Image:
    """The image `ref` for `key`: from the cache, else made by `build(workdir)` and saved.

    `build` leaves `ref` in podman's storage; its archive, ref and ID are then kept under
    <cache>/<name>-<key>/, and older entries of the same name are pruned.
    """
    root = cache_root()
    with locked(root / f".{name}.lock"):
        entry = root / f"{name}-{key}"
        archive, id_file = entry / "image.tar", entry / "image-id"
        if archive.exists() and id_file.exists():
            want = id_file.read_text().strip()
            present = podman.image_id(ref)
            if present != want:
                _log(f"loading {ref} from {archive}")
                podman.podman("load", "-q", "-i", archive)
                if podman.image_id(ref) != want:
                    raise podman.PodmanError(f"{archive} did not load as {ref} ({want})")
                if present is not None:
                    _remove_image(present)  # another cache's build held the tag
            id_file.touch()  # recently used: kept by _prune
            _prune(root, name)
            return Image(ref=ref, archive=archive, id=want)

        previous = podman.image_id(ref)
        work = root / f".{entry.name}.work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _log(f"building {ref} (key {key})")
        started = time.monotonic()
        build(work)
        built = podman.image_id(ref)
        if built is None:
            raise podman.PodmanError(f"building {name} did not leave {ref} in podman's storage")
        entry.mkdir(parents=True, exist_ok=True)
        podman.save(ref, archive)
        (entry / "ref").write_text(ref + "\n")
        # Last: the ID file marks the entry complete.
        id_file.write_text(built + "\n")
        shutil.rmtree(work, ignore_errors=True)
        _log(f"built {ref} in {time.monotonic() - started:.0f}s")
        if previous is not None and previous != built:
            _remove_image(previous)  # the tag moved; the old image would only take space
        _prune(root, name)
        return Image(ref=ref, archive=archive, id=built)


def _remove_image(ref_or_id: str) -> None:
    try:
        podman.podman("rmi", ref_or_id)
    except podman.PodmanError:
        pass  # still tagged elsewhere or used by a container: leave it


def _prune(root: Path, name: str) -> None:
    """Keep the KEEP_PER_NAME most recently used entries of `name` (a webhook archive is
    ~340 MB and every source change makes one); drop the rest and their images."""
    for stale in root.glob(f".{name}-*.work"):
        shutil.rmtree(stale, ignore_errors=True)  # a build that died; we hold the lock
    entries = sorted(
        (e for e in root.glob(f"{name}-*") if (e / "image-id").exists()),
        key=lambda e: (e / "image-id").stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP_PER_NAME:]:
        ref_file = old / "ref"
        if ref_file.exists():
            ref = ref_file.read_text().strip()
            if podman.image_id(ref) == (old / "image-id").read_text().strip():
                _remove_image(ref)
        shutil.rmtree(old, ignore_errors=True)


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


def _base() -> Image:
    mirror = debian.debian_mirror()
    key = hash_key(
        [BASE_RECIPE, debian.SUITE, mirror, platform.machine(), *debian.PACKAGES, *BASE_CONFIG],
        [("debian.py", Path(debian.__file__))],
    )
    ref = f"{BASE_REPO}:{key}"

    def build(work: Path) -> None:
        tarball = debian.make_rootfs_tar(work, mirror)
        changes = [arg for change in BASE_CONFIG for arg in ("--change", change)]
        podman.podman("import", *changes, tarball, ref)

    return _cached("base", ref, key, build)


def _webhook_version() -> str:
    version = importlib.import_module("webhook").__version__
    assert isinstance(version, str)
    return version


def _webhook(base: Image) -> Image:
    """The repo's Dockerfile, built on the local Debian base."""
    version = _webhook_version()
    ref = f"{WEBHOOK_REPO}:{version}"
    # What the build context holds after .dockerignore: the package and its metadata.
    inputs = [REPO / name for name in ("Dockerfile", ".dockerignore", "pyproject.toml")]
    inputs += [
        REPO / "requirements" / name
        for name in ("runtime.txt", "build.txt", "not-shipped.txt", "prune.py", "zip_package.py")
    ]
    inputs += [p for p in (REPO / "README.md", REPO / "LICENSE") if p.exists()]
    inputs += tree_files(REPO / "webhook")
    key = hash_key(
        [WEBHOOK_RECIPE, base.id, version],
        [(str(p.relative_to(REPO)), p) for p in inputs],
    )

    def build(work: Path) -> None:
        podman.run_build(
            REPO,
            ref,
            containerfile=REPO / "Dockerfile",
            build_args=[f"BASE_IMAGE={base.ref}", f"VERSION={version}"],
        )

    return _cached("webhook", ref, key, build)


def _demo(base: Image) -> Image:
    containerfile = DEMO_DIR / "Containerfile"
    key = hash_key(
        [DEMO_RECIPE, base.id, BOTOCORE_VERSION, _gcc_version()],
        [("Containerfile", containerfile), ("pause.c", PAUSE_DIR / "pause.c")],
    )

    def build(work: Path) -> None:
        _compile_pause(work)
        podman.run_build(
            work,
            DEMO_REF,
            containerfile=containerfile,
            build_args=[f"BASE_IMAGE={base.ref}", f"BOTOCORE_VERSION={BOTOCORE_VERSION}"],
        )

    return _cached("demo", DEMO_REF, key, build)


def _sdks(base: Image) -> Image:
    """The AWS SDKs for Go v2, JavaScript v3 and Java 2.x with their e2e programs."""
    key = hash_key(
        [SDKS_RECIPE, base.id, _gcc_version(), *sdks.toolchain_versions()],
        [
            ("Containerfile", sdks.CONTAINERFILE),
            ("sdks.py", Path(sdks.__file__)),
            ("pause.c", PAUSE_DIR / "pause.c"),
            *[(str(p.relative_to(sdks.SDK_DIR)), p) for p in sdks.source_files()],
        ],
    )

    def build(work: Path) -> None:
        _compile_pause(work)
        containerfile = sdks.prepare_context(work)
        podman.run_build(
            work, SDKS_REF, containerfile=containerfile, build_args=[f"BASE_IMAGE={base.ref}"]
        )

    return _cached("sdks", SDKS_REF, key, build)


def pause_image() -> Image:
    """Only the pod sandbox image (what a node needs before any pod can start)."""
    return _pause()


def build_images() -> Images:
    """Build what is missing, make sure podman holds every image, and return them all."""
    pause = _pause()
    base = _base()
    return Images(
        pause=pause, base=base, webhook=_webhook(base), demo=_demo(base), sdks=_sdks(base)
    )
