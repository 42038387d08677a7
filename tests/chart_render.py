"""The Helm chart as `helm template` renders it: names, rendering and queries on the objects.

Shared by the chart tests (test_chart*.py, test_replay_manifests.py); the `helm` fixture that
finds the binary is in tests/conftest.py.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pod-identity-webhook"
CI_DIR = CHART / "ci"
RELEASE = "piw"
NAMESPACE = "piw-system"
FULLNAME = "piw-pod-identity-webhook"
TLS_SECRET = f"{FULLNAME}-tls"
SKIP_LABEL = "eks.amazonaws.com/skip-pod-identity-webhook"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}

Obj = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def ci_file(name: str) -> Path:
    return CI_DIR / f"{name}-values.yaml"


CI_NAMES = sorted(p.name.removesuffix("-values.yaml") for p in CI_DIR.glob("*-values.yaml"))
IN_CLUSTER_CI = [n for n in CI_NAMES if n != "url-mode"]


def run_helm(helm: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": "/tmp/piw-helm-cache"}
    return subprocess.run(
        [helm, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@functools.cache
def _template(
    helm: str, chart: str, values: tuple[str, ...], sets: tuple[str, ...], kube_version: str
) -> str:
    # The release's objects; the `helm test` hook's are checked in tests/test_chart_hooks.py.
    args = ["template", RELEASE, chart, "--namespace", NAMESPACE, "--skip-tests"]
    if kube_version:
        args += ["--kube-version", kube_version]
    for v in values:
        args += ["-f", v]
    for s in sets:
        # "json:path=<json>" goes through --set-json, everything else through --set.
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    proc = run_helm(helm, *args)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return proc.stdout


class RenderError(Exception):
    pass


def render(
    helm: str, *sets: str, ci: str | None = None, chart: Path = CHART, kube_version: str = ""
) -> list[Obj]:
    """Objects of `helm template` with these --set values; kube_version as `--kube-version`."""
    values = (str(ci_file(ci)),) if ci else ()
    text = _template(helm, str(chart), values, tuple(sets), kube_version)
    return [d for d in yaml.safe_load_all(text) if d]


def render_fails(helm: str, *sets: str, ci: str | None = None) -> str:
    with pytest.raises(RenderError) as err:
        render(helm, *sets, ci=ci)
    return str(err.value)


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def args_of(objs: list[Obj]) -> list[str]:
    return [str(a) for a in container(objs)["args"]]


def flags_of(objs: list[Obj]) -> dict[str, str]:
    """The flags after `serve` as a dict; a bare `--flag` (only from extraArgs) maps to ""."""
    out: dict[str, str] = {}
    for arg in args_of(objs)[1:]:
        assert arg.startswith("-"), f"not a flag: {arg!r}"
        name, _, value = arg.lstrip("-").partition("=")
        out[name] = value
    return out


def webhook_entry(objs: list[Obj]) -> Obj:
    entries: list[Obj] = one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert len(entries) == 1
    return entries[0]


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(objs: list[Obj]) -> dict[str, str]:
    labels: dict[str, str] = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def decode(b64: str) -> bytes:
    return base64.b64decode(b64, validate=True)
