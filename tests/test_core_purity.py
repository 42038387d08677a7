"""webhook/core keeps no state: no memo caches, no writes to frozen values after construction.
(import-linter keeps I/O out of it; this keeps hidden state out.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "webhook" / "core"
CACHES = {"lru_cache", "cache", "cached_property"}


def _hidden_state(source: str) -> list[str]:
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = (
                    target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                )
                if name in CACHES:
                    found.append(f"line {node.lineno}: @{name} on {node.name}")
        if isinstance(node, ast.FunctionDef) and node.name != "__post_init__":
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "__setattr__"
                ):
                    found.append(f"line {call.lineno}: __setattr__ in {node.name}")
        if isinstance(node, ast.Global | ast.Nonlocal):
            found.append(f"line {node.lineno}: {type(node).__name__.lower()} {node.names}")
    return found


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_keeps_no_hidden_state(module: Path) -> None:
    assert _hidden_state(module.read_text()) == []


def test_the_check_finds_what_the_core_used_to_hide() -> None:
    before = """
import functools
@functools.lru_cache(maxsize=64)
def token_file(path): return path
def resolve_identity(lookup, settings):
    object.__setattr__(lookup, "resolved", (settings, 1))
"""
    assert _hidden_state(before) == [
        "line 4: @lru_cache on token_file",
        "line 6: __setattr__ in resolve_identity",
    ]
