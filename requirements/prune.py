"""The image's builder stage, last step: remove what `serve` never loads, then check the rest.

    /opt/venv/bin/python3 requirements/prune.py requirements/not-shipped.txt

Uninstalls the distributions named in the file and kubernetes' asyncio client (kubernetes/aio,
about 41 MB that nothing imports), then runs `pip check`: the only complaints allowed are
kubernetes' requirements on exactly those distributions; anything else fails the build. Run
with the venv's own interpreter, whose pip is still installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# "kubernetes 37.0.1 requires aiohttp, which is not installed."
MISSING = re.compile(r"^kubernetes \S+ requires ([A-Za-z0-9_.-]+)\b.*, which is not installed\.$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def unexpected(check_output: str, removed: set[str]) -> list[str]:
    """pip check's lines that are not kubernetes missing one of the removed distributions."""
    bad = []
    for line in check_output.splitlines():
        if not line.strip():
            continue
        found = MISSING.match(line.strip())
        if found is None or canonical(found.group(1)) not in removed:
            bad.append(line)
    return bad


def main(argv: list[str]) -> int:
    removed = [canonical(n) for n in names(Path(argv[1]))]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "uninstall", "--yes", "--quiet", *removed], check=True)
    aio = Path(sysconfig.get_paths()["purelib"]) / "kubernetes" / "aio"
    shutil.rmtree(aio)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    bad = unexpected(check.stdout + check.stderr, set(removed))
    if bad:
        print("prune: pip check:", *bad, sep="\n  ", file=sys.stderr)
        return 1
    listed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True)
    kept = [line for line in listed.stdout.splitlines() if "==" in line]
    print(f"prune: removed {len(removed)} distributions and kubernetes/aio; {len(kept)} remain")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
