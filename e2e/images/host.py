"""Host programs the image builds need, installed from Debian's packages when missing.

CI starts from a fresh clone, possibly on a fresh machine, so nothing may be assumed
installed; `apt-get install` is idempotent and only runs when a program is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["HostToolError", "ensure_programs"]


class HostToolError(RuntimeError):
    """A program the build needs is missing and could not be installed."""


def _present(program: str) -> bool:
    if "/" in program:
        return Path(program).exists()
    # debootstrap lives in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(program, path=path) is not None


def ensure_programs(programs: dict[str, str]) -> None:
    """Install the Debian package of each missing program ({program or path: package})."""
    missing = sorted({pkg for program, pkg in programs.items() if not _present(program)})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HostToolError(f"missing {', '.join(missing)} and no apt-get to install them")
    cmd = ["apt-get", "install", "-y", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # A fresh machine may never have fetched its package lists.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostToolError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    still = [p for p in programs if not _present(p)]
    if still:
        raise HostToolError(f"installed {', '.join(missing)} but still missing: {still}")
