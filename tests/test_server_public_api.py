"""The serving layer uses uvicorn, Starlette and FastAPI through their public API only.

Issue 16: a subclass of uvicorn's private httptools protocol once answered /mutate, resting on
~25 private names that changed under it between minor versions. This check reads every module
of webhook/ and fails on anything of those libraries that is not theirs to promise:

- an import of a module or name whose dotted path has a `_`-prefixed part
  (`uvicorn._types`, `from starlette.routing import _x`), or of an internal module
  (`uvicorn.protocols`, `uvicorn.lifespan`, `uvicorn.loops`, `uvicorn.supervisors`);
- `uvicorn.server.ServerState`, the per-server bookkeeping the old protocol reached into;
- an attribute with a `_`-prefixed name read off anything imported from them
  (`uvicorn.config._x`, `Server._serve`);
- the internal names the old protocol used, wherever they appear (attribute or name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "webhook"
LIBRARIES = ("uvicorn", "starlette", "fastapi")
INTERNAL_MODULES = ("uvicorn.protocols", "uvicorn.lifespan", "uvicorn.loops", "uvicorn.supervisors")
INTERNAL_NAMES = frozenset(
    {
        # uvicorn's connection machinery, none of it documented
        "ServerState",
        "RequestResponseCycle",
        "FlowControl",
        "STATUS_LINE",
        "send_400_response",
        "on_response_complete",
        "timeout_keep_alive_handler",
        "server_state",
        "response_complete",
        "message_event",
        "waiting_for_100_continue",
        "default_headers",
        "pipeline",
    }
)


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _library(module: str) -> bool:
    return module.split(".", 1)[0] in LIBRARIES


def findings(source: str, filename: str) -> Iterator[str]:
    tree = ast.parse(source, filename)
    imported: set[str] = set()  # local names bound to something from the libraries
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _library(alias.name):
                    continue
                imported.add((alias.asname or alias.name).split(".", 1)[0])
                if _is_private(alias.name) or alias.name.startswith(INTERNAL_MODULES):
                    yield f"{filename}:{node.lineno}: import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and _library(node.module):
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                dotted = f"{node.module}.{alias.name}"
                if (
                    _is_private(dotted)
                    or node.module.startswith(INTERNAL_MODULES)
                    or alias.name in INTERNAL_NAMES
                ):
                    yield f"{filename}:{node.lineno}: from {node.module} import {alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in INTERNAL_NAMES:
                yield f"{filename}:{node.lineno}: .{node.attr} (uvicorn internals)"
            root: ast.expr = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if (
                isinstance(root, ast.Name)
                and root.id in imported
                and _is_private(node.attr)
                and not node.attr.startswith("__")
            ):
                yield f"{filename}:{node.lineno}: {ast.unparse(node)}"
        elif isinstance(node, ast.Name) and node.id in INTERNAL_NAMES:
            yield f"{filename}:{node.lineno}: {node.id} (uvicorn internals)"
        elif isinstance(node, ast.FunctionDef) and node.name in INTERNAL_NAMES:
            yield f"{filename}:{node.lineno}: def {node.name} (overrides uvicorn internals)"


def test_webhook_uses_no_private_name_of_uvicorn_starlette_or_fastapi() -> None:
    found = [
        finding
        for path in sorted(PACKAGE.rglob("*.py"))
        for finding in findings(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert found == [], "private names of the serving libraries:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from uvicorn.protocols.http.h11_impl import H11Protocol",
        "from uvicorn.server import ServerState",
        "import uvicorn.protocols.utils",
        "from uvicorn._types import ASGIApplication",
        "import starlette._utils as u",
        "import uvicorn\nuvicorn.config._private_thing",
        "from uvicorn import Server\nServer._serve",
        "def _f(p):\n    p.cycle.response_complete = True",
        "def f(s):\n    return s.server_state.connections",
        "class P:\n    def send_400_response(self): ...",
    ],
)
def test_the_check_catches_each_kind_of_private_use(source: str) -> None:
    assert list(findings(source, "example.py")) != []


@pytest.mark.parametrize(
    "source",
    [
        "import uvicorn\nuvicorn.Config(app, http='httptools')",
        "from uvicorn import Server\nServer(config).startup",
        "from starlette.types import ASGIApp, Receive, Scope, Send",
        "from fastapi import FastAPI\nFastAPI().add_route",
        "class X:\n    def __init__(self):\n        self._mine = 1",
    ],
)
def test_the_check_allows_public_use_and_our_own_private_names(source: str) -> None:
    assert list(findings(source, "example.py")) == []
