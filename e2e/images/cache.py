"""Where built images are kept between runs, and who may build them.

Archives live outside the repo, next to the Go tools, in
`${PIW_E2E_CACHE:-~/.cache/pod-identity-webhook/e2e-tools}/images/<name>-<key>/`, where
<key> hashes everything the image is made from; a finished entry is never rebuilt. One
file lock serialises builders across processes (two pytest sessions, a CLI run).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cache_root", "file_digest", "hash_key", "locked", "tree_files"]


def cache_root() -> Path:
    base = os.environ.get("PIW_E2E_CACHE") or str(
        Path.home() / ".cache" / "pod-identity-webhook" / "e2e-tools"
    )
    return Path(base) / "images"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_files(root: Path, skip_dirs: Iterable[str] = ("__pycache__",)) -> list[Path]:
    """Every regular file under `root`, sorted, skipping the named directories."""
    skip = set(skip_dirs)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        found += [Path(dirpath) / f for f in filenames if not f.endswith((".pyc", ".pyo"))]
    return sorted(found)


def hash_key(parts: Iterable[str], files: Iterable[tuple[str, Path]] = ()) -> str:
    """A short, stable key over literal parts and (label, file) contents."""
    h = hashlib.sha256()
    for part in parts:
        h.update(b"part\0" + part.encode() + b"\0")
    for label, path in files:
        h.update(b"file\0" + label.encode() + b"\0" + file_digest(path).encode() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (blocking) for the body."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
