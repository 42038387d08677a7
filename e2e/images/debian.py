"""A minimal Debian root filesystem with Python, made by debootstrap from this machine's mirror.

It stands in for Docker Hub's python:3.12-slim, which is not reachable here: the same
Dockerfile builds on it (python3 at /usr/bin, `python3 -m venv` available).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from e2e.images.host import ensure_programs

__all__ = ["PACKAGES", "SUITE", "debian_mirror", "make_rootfs_tar"]

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
SOURCES = Path("/etc/apt")

# Left out of the image: package lists and caches, documentation, logs, and files that a
# container runtime provides itself (resolv.conf, hostname).
PRUNE = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def _entries(sources: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) for each `deb` source in the one-line and deb822 formats."""
    found: list[tuple[str, list[str]]] = []
    one_line = [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            # "deb [options] URI SUITE COMPONENTS..."
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    for path in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for raw in stanza.splitlines():
                if raw.startswith("#") or ":" not in raw:
                    continue
                name, _, value = raw.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    found.append((uri, fields.get("suites", "").split()))
    return found


def debian_mirror(sources: Path = SOURCES) -> str:
    """The Debian mirror this machine's apt uses for SUITE ($PIW_DEBIAN_MIRROR overrides)."""
    override = os.environ.get("PIW_DEBIAN_MIRROR")
    if override:
        return override
    for uri, suites in _entries(sources):
        if SUITE in suites:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def make_rootfs_tar(work: Path, mirror: str) -> Path:
    """debootstrap SUITE (minbase + PACKAGES) under `work` and pack it as work/rootfs.tar."""
    ensure_programs({"debootstrap": "debootstrap", "tar": "tar"})
    rootfs = work / "rootfs"
    debootstrap = shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin")
    assert debootstrap is not None
    proc = subprocess.run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            rootfs,
            mirror,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        detail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
        raise RuntimeError(f"debootstrap {SUITE} from {mirror} failed:\n{detail}")
    for rel in PRUNE:
        target = rootfs / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    for rel in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / rel).unlink(missing_ok=True)
    tarball = work / "rootfs.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", tarball, "."], check=True
    )
    shutil.rmtree(rootfs)
    return tarball
