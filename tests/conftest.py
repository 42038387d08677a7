"""Fixtures shared by the fast suite, and the markers it sets.

Tools: `helm`, `promtool` and `vegeta` are binaries that e2e/tools/build.sh builds from pinned
sources and caches. Each fixture looks for its binary in $PIW_<NAME> (the binary, or for helm
also its directory), $PIW_E2E_TOOLS_DIR, PATH, then the directory build.sh prints last; without
any of them (build.sh exits 3 for "no Go") the test is skipped. A test that asks for one of
these fixtures is marked `tools` here, so `pytest -m "not tools"` runs without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import pytest

from bench import vegeta as vegeta_tool
from tests.netns import EnterNetworkNamespace, NamespaceUnavailable, own_network_namespace

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "e2e" / "tools" / "build.sh"
# e2e/tools/build.sh's exit status for "no Go and no prebuilt binaries".
EXIT_TOOLS_UNAVAILABLE = 3

TOOL_FIXTURES = frozenset({"helm", "promtool", "vegeta"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TOOL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tools)


def _built_tools_dir() -> Path | None:
    """The directory build.sh prints last; None when it cannot build (no Go)."""
    if not BUILD_SCRIPT.is_file():
        return None
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=1700
    )
    if proc.returncode == EXIT_TOOLS_UNAVAILABLE:
        return None  # no Go and no prebuilt binaries: the script's documented "skip"
    if proc.returncode != 0:
        pytest.fail(f"e2e/tools/build.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        pytest.fail("e2e/tools/build.sh printed nothing; expected the tools directory last")
    return Path(lines[-1])


@pytest.fixture(scope="session")
def helm() -> str:
    env = os.environ.get("PIW_HELM")
    if env:
        path = Path(env)
        if path.is_dir():
            path = path / "helm"
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"PIW_HELM={env!r} is not an executable helm")
        return str(path)
    tools_dir = os.environ.get("PIW_E2E_TOOLS_DIR")
    if tools_dir and (Path(tools_dir) / "helm").is_file():
        return str(Path(tools_dir) / "helm")
    found = shutil.which("helm")
    if found:
        return found
    built = _built_tools_dir()
    if built is None:
        pytest.skip("no helm: set PIW_HELM, put helm on PATH, or provide e2e/tools/build.sh")
    if not (built / "helm").is_file():
        pytest.fail(f"e2e/tools/build.sh printed {str(built)!r}, which holds no helm binary")
    return str(built / "helm")


@pytest.fixture(scope="session")
def promtool(helm: str) -> str:
    """Built next to helm by build.sh (from Go modules)."""
    env = os.environ.get("PIW_PROMTOOL")
    if env:
        return env
    for directory in (os.environ.get("PIW_E2E_TOOLS_DIR"), str(Path(helm).parent)):
        if directory and (Path(directory) / "promtool").is_file():
            return str(Path(directory) / "promtool")
    found = shutil.which("promtool")
    if not found:
        pytest.skip("no promtool: set PIW_PROMTOOL or build it with e2e/tools/build.sh (Go)")
    return found


@pytest.fixture(scope="session")
def vegeta() -> Path:
    """bench/vegeta.py's own lookup ($PIW_VEGETA, the tools dir, build.sh, PATH)."""
    try:
        return vegeta_tool.vegeta_binary()
    except vegeta_tool.ToolsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture
def network_namespace() -> Iterator[EnterNetworkNamespace]:
    """`network_namespace({"net.ipv4.some_setting": "1"})` moves the rest of the test, and every
    server and client thread it starts, into a network namespace of its own with those settings
    (tests/netns.py); the test is skipped, naming the reason, where none can be created.
    Ask for this fixture before the ones that start servers, so they stop inside it."""
    with ExitStack() as stack:

        def enter(sysctls: Mapping[str, str]) -> None:
            try:
                stack.enter_context(own_network_namespace(sysctls))
            except NamespaceUnavailable as err:
                pytest.skip(f"needs a network namespace of its own: {err}")

        yield enter
