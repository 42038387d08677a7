"""The SDK image: AWS SDKs for Go v2, JavaScript v3 and Java 2.x, built from pinned files.

Everything that comes from a package registry is resolved on the host, where the project's
other tools already reach them, from files committed under e2e/sdk:

- Go: `go build` of e2e/sdk/go (go.mod/go.sum, the module proxy; static, CGO off);
- JavaScript: `npm ci` of e2e/sdk/js (package-lock.json with integrity hashes, npmjs);
- Java: `mvn dependency:copy-dependencies` of e2e/sdk/java/pom.xml (exact versions, Maven
  Central), then `javac --release 17` of its sources against those jars.

The Containerfile then adds Debian's nodejs and headless JRE to the base image and copies the
results in. The caches those clients keep (Go's module cache, ~/.npm, ~/.m2) stay outside the
repo, and the image itself is cached like the others (build.py's `_cached`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from e2e.images.cache import tree_files
from e2e.images.host import HostToolError, ensure_programs

__all__ = [
    "CONTAINERFILE",
    "SDKS_REF",
    "SDK_DIR",
    "SDK_PROGRAMS",
    "prepare_context",
    "source_files",
    "toolchain_versions",
]

HERE = Path(__file__).resolve().parent
SDK_DIR = HERE.parent / "sdk"
CONTAINERFILE = HERE / "sdks" / "Containerfile"
SDKS_REF = "localhost/piw-e2e/sdks:1"

# Where the programs live in the image (the Containerfile's COPY lines), as exec argv.
# No perf-data file (the root filesystem is read-only) and the quick JIT tier (one call).
_JAVA = ["java", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1"]
SDK_PROGRAMS: dict[str, list[str]] = {
    "go": ["/usr/local/bin/sdk-go"],
    "javascript": ["node", "/opt/sdk/js/main.js"],
    "java": [*_JAVA, "-cp", "/opt/sdk/java/classes:/opt/sdk/java/lib/*", "piw.Caller"],
    # The classic failure: the default chain without the `sts` jar (see docs/troubleshooting.md).
    "java-without-sts": [
        *_JAVA,
        "-cp",
        "/opt/sdk/java/classes:/opt/sdk/java/lib-without-sts/*",
        "piw.Resolve",
    ],
}

# Host programs and the Debian packages that provide them (installed when missing).
_HOST_PACKAGES = {"npm": "npm", "mvn": "maven", "javac": "openjdk-17-jdk-headless"}


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(str(c) for c in cmd)} exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


def _go() -> str:
    go = shutil.which("go", path=os.environ.get("PATH", "") + ":/usr/local/go/bin")
    if go is None:
        raise HostToolError("the SDK image needs Go (the e2e tools need it too; see e2e/tools)")
    return go


def source_files() -> list[Path]:
    """The committed files the image is made from (not what a local npm or mvn run left)."""
    return tree_files(SDK_DIR, skip_dirs=("__pycache__", "node_modules", "target"))


def toolchain_versions() -> list[str]:
    """What the build's outputs depend on besides the committed files (keys the cache)."""
    ensure_programs(_HOST_PACKAGES)
    go = _run([_go(), "version"], cwd=SDK_DIR).strip()
    javac = _run(["javac", "-version"], cwd=SDK_DIR).strip()
    return [go, javac]


def prepare_context(work: Path) -> Path:
    """Fill `work` with what the Containerfile copies (sdk-go, js/, java/) but the pause
    binary, and return the Containerfile."""
    ensure_programs(_HOST_PACKAGES)
    # Go: static, reproducible; go.mod/go.sum must already say everything (-mod=readonly).
    _run(
        [
            _go(),
            "build",
            "-mod=readonly",
            "-trimpath",
            "-ldflags=-s -w",
            "-o",
            work / "sdk-go",
            ".",
        ],
        cwd=SDK_DIR / "go",
        env={"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"},
    )
    # JavaScript: exactly the lock (npm ci fails when package.json and the lock disagree).
    js = work / "js"
    js.mkdir()
    for name in ("package.json", "package-lock.json", "main.js"):
        shutil.copy2(SDK_DIR / "js" / name, js / name)
    _run(
        ["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=js,
        env={"NODE_ENV": "production", "npm_config_update_notifier": "false"},
    )
    # Java: the pom's runtime dependencies as jars, the sources compiled against them.
    java = work / "java"
    _run(
        [
            "mvn", "-B", "-q", "-f", SDK_DIR / "java" / "pom.xml",
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={java / 'lib'}",
        ],
        cwd=SDK_DIR / "java",
    )  # fmt: skip
    sources = sorted((SDK_DIR / "java" / "src").rglob("*.java"))
    _run(
        ["javac", "--release", "17", "-Xlint:all", "-Werror", "-cp", f"{java / 'lib'}/*",
         "-d", java / "classes", *sources],
        cwd=SDK_DIR / "java",
    )  # fmt: skip
    return CONTAINERFILE
