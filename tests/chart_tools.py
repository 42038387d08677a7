"""Pinned helm and kubectl for the chart-mode and deploy/ tests, and a plain `helm template`.

The binaries come from $PIW_E2E_TOOLS_DIR, else from the directory `bash e2e/tools/build.sh`
prints last (the pinned builds: kubectl's kustomize is the one `kubectl apply -k` runs).
Without them (build.sh exiting 3: no Go) the tests that need them are skipped.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pod-identity-webhook"
EXIT_TOOLS_UNAVAILABLE = 3
HOOK = "helm.sh/hook"

Obj = dict[str, Any]


@functools.cache
def _tools_dir() -> Path | None:
    env = os.environ.get("PIW_E2E_TOOLS_DIR")
    if env:
        return Path(env)
    proc = subprocess.run(
        ["bash", str(REPO / "e2e" / "tools" / "build.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    if proc.returncode == EXIT_TOOLS_UNAVAILABLE:
        return None
    if proc.returncode != 0:
        pytest.fail(f"e2e/tools/build.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def tool(name: str) -> str:
    """The pinned binary `name`, or skip the test when no tools can be built here."""
    tools = _tools_dir()
    if tools is None:
        pytest.skip("no Go toolchain to build the pinned e2e tools (e2e/tools/build.sh exit 3)")
    path = tools / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is not an executable {name}")
    return str(path)


def run(binary: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": "/tmp/piw-helm-cache"}
    return subprocess.run(
        [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


class RenderError(Exception):
    pass


def template_text(
    helm: str,
    *sets: str,
    values: tuple[Path, ...] = (),
    release: str = "piw",
    namespace: str = "piw-system",
) -> str:
    """`helm template` as a GitOps tool runs it: no cluster, hooks as the chart decides."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["-f", str(path)]
    for s in sets:
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    proc = run(helm, *args)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return proc.stdout


def load_all(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def template(helm: str, *sets: str, **kwargs: Any) -> list[Obj]:
    return load_all(template_text(helm, *sets, **kwargs))


def hooks(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if HOOK in (o["metadata"].get("annotations") or {})]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def deployment_flags(objs: list[Obj]) -> dict[str, str]:
    (ctr,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    flags = {}
    for arg in ctr["args"][1:]:
        name, _, value = str(arg).lstrip("-").partition("=")
        flags[name] = value
    return flags
