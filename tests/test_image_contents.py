"""What the image ships (issue 19 §2): what `serve` loads, nothing from the toolkit extra or
kubernetes' asyncio client, and a build step that fails when `pip check` finds anything else."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_SHIPPED = REPO / "requirements" / "not-shipped.txt"


@pytest.fixture(scope="module")
def prune() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune", REPO / "requirements" / "prune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Everything `serve` imports on its way to serving, in-cluster and with --objects.
_SERVE_IMPORTS = """
import sys
import webhook.cli, webhook.cli.serve, webhook.sources.kube, webhook.sources.imds
import webhook.server.runner, webhook.server.app, webhook.server.connection, webhook.server.record, uvloop
from webhook.cli import build_parser, load
from kubernetes import client, config, watch
build_parser("serve", load("serve"))
print("\\n".join(sorted({name.split(".")[0] for name in sys.modules})))
print("kubernetes.aio" if "kubernetes.aio" in sys.modules else "")
"""

TOOLKIT_MODULES = {"cryptography", "jwt", "jsonpatch", "jsonpointer", "argcomplete", "celpy"}
ASYNC_CLIENT_MODULES = {
    "aiohttp",
    "aiohttp_retry",
    "yarl",
    "multidict",
    "frozenlist",
    "kubernetes.aio",
}


def test_serve_loads_nothing_from_the_toolkit_extra_or_the_asyncio_client() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_IMPORTS], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(out.split())
    assert {"kubernetes", "uvicorn", "fastapi", "orjson", "yaml"} <= loaded  # the walk is real
    assert not loaded & TOOLKIT_MODULES
    assert not loaded & ASYNC_CLIENT_MODULES


def test_the_toolkit_libraries_are_an_extra_not_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    toolkit = " ".join(project["optional-dependencies"]["toolkit"])
    for name in ("cryptography", "pyjwt", "jsonpatch", "argcomplete", "cel-python"):
        assert name in toolkit and name not in runtime
    lock = (REPO / "requirements" / "runtime.txt").read_text()
    assert "\ncryptography==" not in lock and "\ncel-python==" not in lock


def test_the_not_shipped_list_names_only_locked_runtime_distributions(prune: ModuleType) -> None:
    lock = (REPO / "requirements" / "runtime.txt").read_text().lower()
    for name in prune.names(NOT_SHIPPED):
        assert f"\n{name}==" in lock, f"{name} is not in requirements/runtime.txt"


def test_pip_check_after_the_prune_allows_only_the_removed_distributions(
    prune: ModuleType,
) -> None:
    removed = {"aiohttp", "aiohttp-retry"}
    expected = (
        "kubernetes 37.0.1 requires aiohttp, which is not installed.\n"
        "kubernetes 37.0.1 requires aiohttp_retry, which is not installed.\n"
    )
    assert prune.unexpected(expected, removed) == []
    other = "kubernetes 37.0.1 requires urllib3, which is not installed."
    assert prune.unexpected(expected + other, removed) == [other]
    wrong_version = "kubernetes 37.0.1 has requirement aiohttp<4, but you have aiohttp 4.0.0."
    assert prune.unexpected(wrong_version, removed) == [wrong_version]
    by_another = "fastapi 0.165.0 requires aiohttp, which is not installed."
    assert prune.unexpected(by_another, removed) == [by_another]


def test_a_toolkit_command_without_the_toolkit_extra_says_what_to_install() -> None:
    # A fresh interpreter in which cryptography cannot be imported, as in the image.
    script = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from webhook.cli import main\n"
        "sys.exit(main(['certs', 'generate', '--service', 's', '-n', 'n']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "pod-identity-webhook certs: error: needs cryptography, which is not installed"
    )
    assert "pip install 'pod-identity-webhook[toolkit]'" in done.stderr
    assert "Traceback" not in done.stderr
