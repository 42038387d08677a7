"""pytest plugin for e2e tests: a session-wide real control plane.

Fixtures: `control_plane` (ControlPlane), `kube_client` (kubernetes.client.ApiClient
as admin). Without Go or prebuilt binaries (build.sh exit 3) they skip, unless
PIW_E2E_REQUIRED=1 (as `make e2e` sets), where that is a failure.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from e2e.controlplane import ControlPlane, ToolsUnavailable, tools_dir

# The node suites move the process into a network namespace: `pytest e2e/node` runs them.
collect_ignore = ["node"]


@pytest.fixture(autouse=True)
def _unclosed_resources_fail_their_own_test() -> Iterator[None]:
    """Warnings are errors here as everywhere (pyproject's filterwarnings). A client, socket
    or file a test leaves unclosed warns when it is finalized: at once when the last
    reference goes, but only at the next garbage collection when it sits in a reference
    cycle, which is in whichever test runs then. Collecting after each test's own fixtures
    are gone charges that ResourceWarning to the test that leaked it (pytest reports what
    finalizers raise in the same teardown). About 35 ms a test."""
    yield
    gc.collect()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build (or find) the binaries before any test runs: a first build takes far longer
    # than the per-test timeout, which would otherwise count it against one test.
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            tools_dir()
        except ToolsUnavailable:
            pass  # the fixture reports it as a skip


# An alpha field newer than the upstream oracle's k8s.io/api (v0.36): the differential corpus
# shows that upstream's container rewrite drops it and our additive patch keeps it.
APISERVER_FEATURE_GATES = ("--feature-gates=VolumeBindMountOptions=true",)


# The deliberate differences from upstream that the differential suite saw, for the summary.
DIFFERENCES_SEEN = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def differences(request: pytest.FixtureRequest) -> list[str]:
    """Append "case: why" for each documented improvement a test saw; printed at the end."""
    return request.config.stash.setdefault(DIFFERENCES_SEEN, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seen = terminalreporter.config.stash.get(DIFFERENCES_SEEN, [])
    if seen:
        terminalreporter.section("deliberate differences from the upstream webhook")
        for line in sorted(set(seen)):
            terminalreporter.write_line(f"- {line}")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        tools = tools_dir()
    except ToolsUnavailable as e:
        if os.environ.get("PIW_E2E_REQUIRED") == "1":
            pytest.fail(f"PIW_E2E_REQUIRED=1 but {e}")
        pytest.skip(f"e2e skipped: {e}")
    # A pytest temp dir (kept for the last few runs) so logs survive a failure.
    with ControlPlane(
        tools,
        workdir=tmp_path_factory.mktemp("control-plane"),
        extra_apiserver_args=APISERVER_FEATURE_GATES,
    ) as cp:
        yield cp


@pytest.fixture(scope="session")
def kube_client(control_plane: ControlPlane) -> Iterator[k8s_client.ApiClient]:
    api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(control_plane.kubeconfig)
    )
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]
