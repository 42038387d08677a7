"""docs/try-it-on-one-machine.md, "Your own ServiceAccount and pod", run as written on the node
(issue 17 §5): the guide's shell block, with `k` as the kubectl line `make demo` prints and
the demo's STS on its fixed port, reading the roles file the guide edits through the same
RolesFile the demo's supervisor polls. botocore in the person's own pod must come back with
the assumed role."""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.node import demo, summary
from e2e.node.cluster import Node
from e2e.node.issuer import IssuerSite
from e2e.node.walkthrough import Release, aws_emulators, trust_policy, typed_api

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "try-it-on-one-machine.md"
GUIDE_NODE_IP = "192.0.2.10"


def guide_block() -> str:
    text = GUIDE.read_text()
    section = text[text.index("## Your own ServiceAccount and pod") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the guide's section has no sh block"
    return match.group(1)


@pytest.fixture
def shop_namespace_removed(node: Node) -> Iterator[None]:
    yield
    try:
        typed_api(k8s_client.CoreV1Api, node.api).delete_namespace("shop")
    except ApiException as e:
        if e.status != 404:
            raise


def test_the_guides_steps_give_ones_own_pod_credentials(
    node: Node,
    release: Release,
    issuer_site: IssuerSite,
    tmp_path: Path,
    shop_namespace_removed: None,
) -> None:
    block = guide_block()
    assert f"http://{GUIDE_NODE_IP}:{demo.STS_PORT}" in block, "the demo's stable STS address"
    assert str(demo.ROLES_FILE) in block
    roles_path = tmp_path / "roles.json"
    script = block.replace(str(demo.ROLES_FILE), str(roles_path)).replace(
        f"http://{GUIDE_NODE_IP}:", f"http://{node.node_ip}:"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    k = [*node.netns.nsenter(), str(node.tools / "kubectl"), "--kubeconfig", str(node.kubeconfig)]
    (bin_dir / "k").write_text(f'#!/bin/sh\nexec {shlex.join(k)} "$@"\n')
    (bin_dir / "k").chmod(0o755)

    roles = demo.RolesFile(roles_path)
    stop = threading.Event()
    with aws_emulators(node, issuer_site, sts_port=demo.STS_PORT) as aws:

        def supervise() -> None:  # what the demo's supervisor does every half second
            while not stop.wait(0.2):
                roles.sync(aws.sts, aws.provider, trust_policy)

        thread = threading.Thread(target=supervise, daemon=True)
        thread.start()
        try:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"},
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            stop.set()
            thread.join()

    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    arn = proc.stdout.strip().splitlines()[-1]
    assert arn.startswith("arn:aws:sts::111122223333:assumed-role/shop-app/"), proc.stdout
    summary.add(f"demo guide: one's own pod shop/app assumed {arn}")
