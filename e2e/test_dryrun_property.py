"""Property, on the real API server: a pod the API server accepts is still accepted after our
patch. Both webhooks answer the same generated pods; for each pod valid as submitted
(server-side dry run), each webhook's patch is applied and the result dry-run created again.
Rejections then can only come from the patch. Ours must have none; upstream's are counted
and printed at the end of the run, with their reasons.

PIW_DRYRUN_PODS (default 2000) and PIW_DRYRUN_SEED choose the pods.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest

from e2e.controlplane import ControlPlane
from e2e.podgen import ACCOUNTS, generate_pod
from e2e.webhooks import WebhookProcess, ours, upstream, wait_until

PODS = int(os.environ.get("PIW_DRYRUN_PODS", "2000"))
SEED = int(os.environ.get("PIW_DRYRUN_SEED", "20261201"))
NAMESPACE = "dryrun-property"
CONFIG_NAMESPACE = "dryrun-property-system"
WORKERS = 6
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "name")


@dataclass
class Tally:
    pods: int = 0
    invalid_unpatched: int = 0
    rejected: dict[str, Counter[str]] = field(
        default_factory=lambda: {"ours": Counter(), "upstream": Counter()}
    )
    rejected_pods: dict[str, int] = field(default_factory=lambda: {"ours": 0, "upstream": 0})
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    ours_repatched: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def valid(self) -> int:
        return self.pods - self.invalid_unpatched

    def summary(self, seconds: float) -> str:
        def reasons(oracle: str) -> str:
            found = self.rejected[oracle].most_common()
            return ", ".join(f"{n} {reason}" for reason, n in found) or "none"

        return (
            f"{self.pods} generated pods (seed {SEED}), {self.valid} valid as submitted: "
            f"rejected by the API server because of the patch: ours {self.rejected_pods['ours']} "
            f"({reasons('ours')}), upstream {self.rejected_pods['upstream']} "
            f"({reasons('upstream')}) "
            f"[{seconds:.0f}s]"
        )


class _Summary:
    """Prints the figures after the run, as the differential prints its differences."""

    def __init__(self, line: str) -> None:
        self.line = line

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section("dry-run property: valid pods the patch made invalid")
        terminalreporter.write_line(self.line)


def _category(reasons: list[str]) -> str:
    """One name per rejected pod: later causes often follow from the first (a volume that
    fails validation makes every mount of it "not found")."""
    text = " ".join(reasons)
    if "expirationSeconds" in text:
        return "expirationSeconds over 2^32"
    if "must be unique" in text or "already exist as a path" in text:
        return "mount path already in use"
    return "other: " + reasons[0]


def _reason(status_body: bytes) -> list[str]:
    """The API server's causes, without indices and values: 'spec.containers[*]...: why'."""
    try:
        causes = json.loads(status_body).get("details", {}).get("causes") or []
    except ValueError:
        return [status_body[:200].decode(errors="replace")]
    reasons = []
    for cause in causes:
        where = re.sub(r"\[\d+\]", "[*]", cause.get("field", ""))
        why = str(cause.get("message", "")).rsplit(": ", 1)[-1]
        reasons.append(f"{where}: {why}")
    return reasons or [status_body[:200].decode(errors="replace")]


@dataclass
class Endpoints:
    cp: ControlPlane
    mine: WebhookProcess
    theirs: WebhookProcess
    _local: threading.local = field(default_factory=threading.local)
    _opened: list[httpx.Client] = field(default_factory=list)
    _opened_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Closes every worker thread's clients (left open, their sockets would be found by
        the garbage collector later, in some other test, as unclosed-socket warnings)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for client in opened:
            client.close()

    def _clients(self) -> tuple[httpx.Client, httpx.Client]:
        # One keep-alive client per worker thread for the API server and one for webhooks.
        clients: tuple[httpx.Client, httpx.Client] | None = getattr(self._local, "c", None)
        if clients is None:
            api_ssl = ssl.create_default_context(cafile=str(self.cp.ca_file))
            api_ssl.load_cert_chain(str(self.cp.admin_cert_file), str(self.cp.admin_key_file))
            hook_ssl = ssl.create_default_context(cadata=self.mine.ca_pem.decode())
            clients = (
                httpx.Client(base_url=self.cp.url, verify=api_ssl, timeout=30),
                httpx.Client(verify=hook_ssl, timeout=30),
            )
            self._local.c = clients
            with self._opened_lock:
                self._opened.extend(clients)
        return clients

    def dry_run(self, pod: dict[str, Any]) -> httpx.Response:
        api, _ = self._clients()
        return api.post(f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All", json=pod)

    def patch(self, webhook: WebhookProcess, version: str, pod: dict[str, Any]) -> list[Any]:
        _, hooks = self._clients()
        review = {
            "apiVersion": f"admission.k8s.io/{version}",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "dryrun-property"},
                "object": pod,
                "dryRun": True,
            },
        }
        answer = hooks.post(webhook.url, json=review)
        assert answer.status_code == 200, (webhook.name, answer.status_code, answer.text)
        response = answer.json()["response"]
        assert response["allowed"] is True, (webhook.name, response)
        encoded = response.get("patch")
        return json.loads(base64.b64decode(encoded)) if encoded else []


def _as_submitted(stored: dict[str, Any]) -> dict[str, Any]:
    """What the API server admitted, as a webhook sees it: server-set fields removed."""
    pod = copy.deepcopy(stored)
    pod.pop("status", None)
    for key in SERVER_SET:
        pod["metadata"].pop(key, None)
    return pod


def _judge(endpoints: Endpoints, tally: Tally, generated: dict[str, Any]) -> None:
    first = endpoints.dry_run(generated)
    if first.status_code != 201:
        with tally.lock:
            tally.pods += 1
            tally.invalid_unpatched += 1
        return
    pod = _as_submitted(first.json())
    outcomes: dict[str, list[str]] = {}
    for oracle, webhook, version in (
        ("ours", endpoints.mine, "v1"),
        ("upstream", endpoints.theirs, "v1beta1"),  # v0.6.17 answers v1beta1 correctly
    ):
        patched = jsonpatch.apply_patch(pod, endpoints.patch(webhook, version, pod))
        second = endpoints.dry_run(patched)
        outcomes[oracle] = [] if second.status_code == 201 else _reason(second.content)
        if oracle == "ours" and not outcomes[oracle]:
            repatched = endpoints.patch(webhook, version, _as_submitted(second.json()))
            outcomes["repatch"] = [json.dumps(repatched)] if repatched else []
    with tally.lock:
        tally.pods += 1
        for oracle in ("ours", "upstream"):
            if outcomes[oracle]:
                tally.rejected_pods[oracle] += 1
                tally.rejected[oracle][_category(outcomes[oracle])] += 1
                for reason in outcomes[oracle]:  # the first pod rejected for each reason
                    tally.examples.setdefault(f"{oracle}: {reason}", generated)
        tally.ours_repatched += bool(outcomes.get("repatch"))


def _wait_until_both_know_every_account(endpoints: Endpoints) -> None:
    probe: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "probe-"},
        "spec": {"containers": [{"name": "app", "image": "img"}]},
    }
    for account in ACCOUNTS:
        has_identity = account.config_map or account.container_credentials
        if not (has_identity or "eks.amazonaws.com/role-arn" in account.annotations):
            continue
        pod = copy.deepcopy(probe)
        pod["spec"]["serviceAccountName"] = account.name
        for webhook, version in ((endpoints.mine, "v1"), (endpoints.theirs, "v1beta1")):
            wait_until(
                lambda w=webhook, v=version, p=pod: endpoints.patch(w, v, p),
                timeout=60,
                what=f"{webhook.name} mutating pods of {account.name}",
            )


@pytest.fixture(scope="module")
def endpoints(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Endpoints]:
    cp = control_plane
    workdir = tmp_path_factory.mktemp("dryrun-property")
    cp.ensure_namespace(NAMESPACE)
    cp.ensure_namespace(CONFIG_NAMESPACE)
    for account in ACCOUNTS:
        cp.ensure_service_account(NAMESPACE, account.name, account.annotations)
    entries = {f"{NAMESPACE}/{a.name}": a.config_map for a in ACCOUNTS if a.config_map}
    cp.apply(
        f"/api/v1/namespaces/{CONFIG_NAMESPACE}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pod-identity-webhook", "namespace": CONFIG_NAMESPACE},
            "data": {"config": json.dumps(entries)},
        },
    )
    identities = workdir / "identities.json"
    pairs = [
        {"namespace": NAMESPACE, "serviceAccount": a.name}
        for a in ACCOUNTS
        if a.container_credentials
    ]
    identities.write_text(json.dumps({"identities": pairs}))
    flags = [
        "--watch-config-map",
        f"--namespace={CONFIG_NAMESPACE}",
        f"--watch-container-credentials-config={identities}",
        "--aws-default-region=us-west-2",
        "-v=1",  # one line per review would cost more than the reviews
    ]
    processes: list[WebhookProcess] = []
    try:
        processes.append(ours(cp, workdir, flags, name="ours-dryrun").start())
        processes.append(upstream(cp, workdir, flags, name="upstream-dryrun").start())
        result = Endpoints(cp, processes[0], processes[1])
        try:
            _wait_until_both_know_every_account(result)
            yield result
        finally:
            result.close()
    finally:
        for process in processes:
            process.stop()


def test_no_valid_pod_is_made_invalid_by_our_patch(
    endpoints: Endpoints, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    generated = [generate_pod(rng) for _ in range(PODS)]
    tally = Tally()
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(_judge, endpoints, tally, pod) for pod in generated]:
            future.result()
    line = tally.summary(time.monotonic() - started)
    request.config.pluginmanager.register(_Summary(line), name="piw-dryrun-property-summary")
    (tmp_path / "summary.txt").write_text(line + "\n")
    (tmp_path / "examples.json").write_text(json.dumps(tally.examples, indent=1))
    print(f"dry-run property: summary and examples in {tmp_path}")

    assert tally.pods == PODS
    assert tally.valid >= PODS // 2, f"the generator produced too few valid pods: {line}"
    ours = {k: v for k, v in tally.examples.items() if k.startswith("ours: ")}
    assert tally.rejected_pods["ours"] == 0, f"{line}\n{json.dumps(ours, indent=1)}"
    assert tally.ours_repatched == 0, "a second review of our patched pod added something"
    # Otherwise the generator missed the cases this test exists for.
    assert tally.rejected_pods["upstream"] > 0, line
