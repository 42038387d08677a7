"""pytest plugin for the single-node cluster suites.

Run them as their own pytest process, because the session moves into the node's
network namespace (`e2e/conftest.py` keeps the main e2e run from collecting them):

    .venv/bin/pytest e2e/node -q -p no:cacheprovider

Fixtures (session-scoped):
  node_images  e2e.images.Images, built (or taken from the cache) before anything else
  node         a started e2e.node.cluster.Node with every image of node_images imported
  node_api     the node's admin kubernetes.client.ApiClient
  issuer_site  the node's external service-account issuer (e2e/node/issuer.py), serving
               what `oidc keys` / `oidc discovery` made from the signing key

Needs root. Without it, or without the tools (no Go and no prebuilt binaries), the
fixtures skip, unless PIW_E2E_REQUIRED=1, where that is a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client

from e2e.controlplane import ToolsUnavailable, tools_dir
from e2e.images import Image, Images, build_images
from e2e.node import summary
from e2e.node.cluster import Node
from e2e.node.issuer import ISSUER_URL, JWKS_NAME, LISTEN_PORT, IssuerSite
from e2e.node.walkthrough import Release, install_webhook, uninstall_webhook


def _unavailable(reason: str) -> None:
    if os.environ.get("PIW_E2E_REQUIRED") == "1":
        pytest.fail(f"PIW_E2E_REQUIRED=1 but {reason}")
    pytest.skip(f"node e2e skipped: {reason}")


_NODE_FIXTURES = {"node", "node_images", "node_api"}


@functools.cache
def _images() -> Images:
    return build_images()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the tools and images before any test runs: cold, that takes far longer than
    # a test's timeout, which would otherwise count it against the first test. The
    # network namespace has no route out, so this must happen before the node starts.
    if os.geteuid() != 0:
        return
    if any(_NODE_FIXTURES & set(getattr(i, "fixturenames", ())) for i in session.items):
        try:
            tools_dir()
            _images()
        except Exception:
            # The fixtures try again and report it where it belongs: as a skip
            # (ToolsUnavailable) or as the first test's error, not as INTERNALERROR.
            return


@pytest.fixture(scope="session")
def node_images() -> Images:
    if os.geteuid() != 0:
        _unavailable("the node needs root (network namespace, mounts, cgroups)")
    return _images()


@pytest.fixture(scope="session")
def node(node_images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    try:
        tools = tools_dir()
    except ToolsUnavailable as e:
        _unavailable(str(e))
    # Logs in a pytest temp dir (kept for the last few runs) survive the teardown.
    cluster = Node(
        tools,
        pause_archive=node_images.pause.archive,
        pause_ref=node_images.pause.ref,
        log_dir=tmp_path_factory.mktemp("node-logs"),
        # Tokens for an external issuer, as a self-managed cluster's (see issuer_site).
        issuer=ISSUER_URL,
        service_account_jwks_uri=f"{ISSUER_URL}/{JWKS_NAME}",
    )
    # SIGTERM (a CI timeout, `kill`) as Ctrl-C: pytest then stops and runs the teardown.
    # Only SIGKILL leaves leftovers, and the next run's start removes those.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cluster.start()
        started = time.monotonic()
        for field in dataclasses.fields(node_images):
            image = getattr(node_images, field.name)
            if isinstance(image, Image) and image is not node_images.pause:
                cluster.import_image(image.archive, image.ref)
        cluster.timings["images imported"] = round(time.monotonic() - started, 2)
        timings = ", ".join(f"{k} {v}s" for k, v in cluster.timings.items())
        print(f"\nnode {cluster.run_id} up: {timings}; logs in {cluster.log_dir}")
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def node_api(node: Node) -> k8s_client.ApiClient:
    return node.api


@pytest.fixture(scope="session")
def issuer_site(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerSite]:
    """The static HTTPS site at the node's issuer URL (192.0.2.20:443 in the node's network
    namespace), publishing the documents made from the signing key file as a user makes them."""
    site = IssuerSite(tmp_path_factory.mktemp("issuer-site"), listen_port=LISTEN_PORT)
    assert site.issuer == node.issuer, (site.issuer, node.issuer)
    site.start(node.netns.name)
    try:
        site.publish([node.pki.sa_key_file])
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="session")
def release(node: Node, node_images: Images) -> Iterator[Release]:
    """The chart installed as the README says (default self-signed TLS, the built image),
    with host networking and the walkthrough's flags; uninstalled at the end."""
    installed = install_webhook(node, node_images)
    try:
        yield installed
    finally:
        uninstall_webhook(node, installed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = summary.lines()
    if lines:
        terminalreporter.section("node e2e summary")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The first test of a session also pays for the node, the images and a helm install.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))
