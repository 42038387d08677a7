"""`replay --against` the upstream Go webhook (v0.6.17, the real binary) on the corpus: each
case's review goes to our pipeline and to upstream; every difference must be classified as the
table below expects — identical, or differing as the named README difference — and nothing may
be undocumented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import browser
from e2e.controlplane import ControlPlane
from e2e.corpus import CorpusCase, load_cases
from e2e.webhooks import REPO, WebhookProcess, ours, upstream

CASES = [c for c in load_cases() if not c.ours_only]
GROUPS = sorted({c.group for c in CASES})

# Cases whose pods differ, and the documented differences that must name the difference.
DOCUMENTED: dict[str, set[str]] = {
    "034-windows-spec-os": {"windows-spec-os"},
    "055-cm-glob": {"config-map-glob"},
    "058-cm-empty-audience": {"config-map-defaults"},
    "059-cm-no-audience": {"config-map-defaults"},
    "072-bind-mount-options": {"keeps-unknown-fields"},
    "073-mount-path-taken": {"mount-path-taken"},
    "074-device-at-token-path": {"mount-path-taken"},
    "075-pod-expiration-huge": {"expiration-above-2^32"},
    "076-sa-expiration-huge": {"expiration-above-2^32"},
    "077-sa-empty-audience": {"empty-audience"},
    "078-cm-expiration-huge": {"expiration-above-2^32", "config-map-defaults"},  # no Audience
}
# Container-credentials tokens at the default expiration get jitter: ours from the request UID,
# upstream's random (the other cc cases set an expiration, so have none).
JITTERED = {"066-cc-jitter", "067-cc-has-env"}


def expected(case: CorpusCase) -> tuple[str, set[str]]:
    if case.name in DOCUMENTED:
        return "documented", DOCUMENTED[case.name]
    if case.name in JITTERED:
        return "documented", {"uid-jitter"}
    return "identical", set()


def _objects_and_flags(
    cp: ControlPlane, cases: list[CorpusCase], workdir: Path
) -> tuple[Path, list[str]]:
    """The group's ServiceAccounts and ConfigMap, in the cluster (for upstream) and in one
    --objects file (for ours); the group's flags with its identities file."""
    items: list[dict[str, Any]] = []
    entries: dict[str, Any] = {}
    identities: list[dict[str, str]] = []
    for case in cases:
        cp.apply(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": case.namespace}},
        )
        for sa in case.service_accounts:
            cp.apply(f"/api/v1/namespaces/{case.namespace}/serviceaccounts", sa)
            items.append(sa)
        entries.update(case.config_map_entries)
        identities.extend(case.identities)
    cp.apply(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "eks"}}
    )
    cp.request("DELETE", "/api/v1/namespaces/eks/configmaps/pod-identity-webhook")
    if entries:
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook", "namespace": "eks"},
            "data": {"config": json.dumps(entries)},
        }
        cp.apply("/api/v1/namespaces/eks/configmaps", config_map)
        items.append(config_map)
    objects = workdir / "objects.yaml"
    objects.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    identities_file = workdir / "identities.json"
    identities_file.write_text(json.dumps({"identities": identities}))
    flags = [
        f"--watch-container-credentials-config={identities_file}"
        if f.startswith("--watch-container-credentials-config=")
        else f
        for f in cases[0].flags
    ]
    return objects, flags


@dataclass(frozen=True)
class GroupRun:
    proc: subprocess.CompletedProcess[str]
    report: dict[str, Any]  # -o json
    page: Path  # --report


@pytest.fixture(scope="module")
def replay_group(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], GroupRun]:
    """Runs `replay --against <upstream>` on one corpus group, once per module."""
    runs: dict[str, GroupRun] = {}

    def run(group: str) -> GroupRun:
        if group not in runs:
            runs[group] = _replay_group(control_plane, group, tmp_path_factory.mktemp(group))
        return runs[group]

    return run


def _replay_group(
    cp: ControlPlane, group: str, workdir: Path, other: Callable[..., WebhookProcess] = upstream
) -> GroupRun:
    cases = [c for c in CASES if c.group == group]
    objects, flags = _objects_and_flags(cp, cases, workdir)
    theirs = other(cp, workdir, flags, name=f"{other.__name__}-replay-{group}")
    if other is ours:
        theirs.ready_path = "/readyz"  # ours says when its caches have synced
    theirs.start()
    ca = workdir / "ca.pem"
    ca.write_bytes(cp.ca_pem)
    page = workdir / "report.html"
    try:
        argv = [
            sys.executable,
            "-m",
            "webhook",
            "replay",
            f"--objects={objects}",
            *flags,
            f"--against={theirs.url}",
            f"--against-ca={ca}",
            f"--report={page}",
            "-o",
            "json",
            *(str(c.directory / "review.json") for c in cases),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    finally:
        theirs.stop()
    assert proc.returncode in (0, 1), proc.stderr
    return GroupRun(proc, json.loads(proc.stdout), page)


@pytest.mark.parametrize("group", GROUPS)
def test_replay_against_upstream_classifies_every_corpus_case(
    group: str, replay_group: Callable[[str], GroupRun]
) -> None:
    cases = [c for c in CASES if c.group == group]
    run = replay_group(group)
    proc, report = run.proc, run.report
    got = {  # every case has a namespace of its own
        c["namespace"]: (
            c["against"]["verdict"],
            {d["name"] for d in c["against"]["documented"]},
            c["against"]["detail"],
        )
        for c in report["cases"]
    }
    wrong = {
        case.name: got[case.namespace]
        for case in cases
        if got[case.namespace][:2] != expected(case)
    }
    assert not wrong, (
        "\n".join(
            f"{name}: {v} (expected {expected(next(c for c in cases if c.name == name))})"
            for name, v in wrong.items()
        )
        + "\n"
        + proc.stderr
    )
    assert proc.returncode == 0, proc.stderr
    assert report["against"]["verdicts"]["differs"] == 0
    assert "v1beta1 reviews from now on" in proc.stderr  # upstream answers v1 without apiVersion


def test_the_report_renders_in_headless_chromium_with_the_counts_and_the_diffs(
    replay_group: Callable[[str], GroupRun], tmp_path: Path
) -> None:
    run = replay_group("defaults")
    if browser.chromium() is None:
        if os.environ.get("PIW_E2E_REQUIRED") == "1":
            pytest.fail("PIW_E2E_REQUIRED=1 but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    html = run.page.read_text()
    assert not re.search(r"""\bsrc=|\bhref="(?!#)|@import|url\(""", html), (
        "the page must be self-contained"
    )
    dom = browser.dump_dom(run.page, tmp_path / "profile")
    total = re.search(r'<tr class="total">(.*?)</tr>', dom)
    assert total is not None, dom[:2000]
    shown = dict(re.findall(r'data-status="([^"]+)">(\d+)<', total.group(1)))
    assert {k: int(v) for k, v in shown.items()} == run.report["summary"]
    verdicts = dict(re.findall(r'data-verdict="([^"]+)">(\d+)<', dom))
    assert {k: int(v) for k, v in verdicts.items()} == run.report["against"]["verdicts"]
    assert dom.count('<section class="case"') == len(run.report["cases"])
    image = browser.screenshot(run.page, tmp_path / "report.png", tmp_path / "profile")
    colours = image.colours()
    # Diff lines are drawn: the added lines' green and the documented verdicts' blue show.
    assert colours[(0xE6, 0xFF, 0xEC)] > 1000, colours.most_common(12)
    assert colours[(0xDB, 0xE8, 0xFB)] > 100, colours.most_common(12)
    print(f"screenshot: {tmp_path / 'report.png'}")


@pytest.mark.parametrize("group", ["defaults", "configmap"])
def test_replay_against_our_own_server_is_identical_on_every_case(
    group: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Another version of ours (here: this one, as a real server) answers v1 as we do."""
    run = _replay_group(control_plane, group, tmp_path, other=ours)
    assert run.proc.returncode == 0, run.proc.stderr
    verdicts = run.report["against"]["verdicts"]
    assert verdicts["identical"] == len(run.report["cases"]) > 0, run.proc.stderr
    assert "v1beta1" not in run.proc.stderr
