"""Webhook processes for the e2e suite: ours and the upstream Go oracle, as real processes,
registered with the real API server through MutatingWebhookConfigurations (clientConfig.url +
caBundle)."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.controlplane import ControlPlane, free_port

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_BINARY = "amazon-eks-pod-identity-webhook"


class WebhookError(RuntimeError):
    pass


@dataclass
class WebhookProcess:
    name: str
    argv: list[str]
    port: int
    metrics_port: int
    ca_pem: bytes
    log_path: Path
    cert: Path
    key: Path
    ready_path: str = "/healthz"  # ours: /readyz (caches synced); upstream has only /healthz
    # Run under `taskset -c CPUS` (e.g. "1"): pinned from exec on, so Go's GOMAXPROCS and any
    # thread pool sized at start see only those CPUs. The pid stays the server's (taskset execs).
    cpus: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate"

    def start(self, timeout: float = 60.0) -> WebhookProcess:
        self._log = self.log_path.open("ab")
        argv = self.argv if self.cpus is None else ["taskset", "-c", self.cpus, *self.argv]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise WebhookError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self._https_get(self.ready_path)[0] == 200:
                return self
            time.sleep(0.1)
        raise WebhookError(f"{self.name} not healthy after {timeout}s:\n{self.log_tail()}")

    def _https_get(self, path: str) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{self.port}{path}", timeout=2, context=ctx
            ) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())
        except OSError:
            return 0, b""

    def healthy(self) -> bool:
        return self._https_get("/healthz")[0] == 200

    def ready(self) -> bool:
        return self._https_get("/readyz")[0] == 200

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def cached_identities(self) -> dict[str, Any]:
        """Each ServiceAccount with a role in the webhook's cache ("namespace/name" -> identity),
        from the debug handler (ours with --enable-debugging-handlers)."""
        url = f"http://127.0.0.1:{self.metrics_port}/debug/alpha/cache"
        with urllib.request.urlopen(url, timeout=5) as r:
            accounts: dict[str, Any] = json.loads(r.read())["serviceAccounts"]
            return accounts

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def _serving_cert(cp: ControlPlane, name: str) -> tuple[Path, Path]:
    return cp.issue_serving_cert(name, ["127.0.0.1", "localhost"])


def ours(
    cp: ControlPlane,
    workdir: Path,
    flags: Sequence[str] = (),
    name: str = "ours",
    *,
    cpus: str | None = None,
) -> WebhookProcess:
    cert, key = _serving_cert(cp, name)
    port, metrics_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "webhook",
        "serve",
        "--bind-address=127.0.0.1",
        f"--port={port}",
        f"--metrics-port={metrics_port}",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        f"--kubeconfig={cp.kubeconfig}",
        "-v=4",
        *flags,
    ]
    return WebhookProcess(
        name, argv, port, metrics_port, cp.ca_pem, workdir / f"{name}.log", cert, key, cpus=cpus
    )


def upstream(
    cp: ControlPlane,
    workdir: Path,
    flags: Sequence[str] = (),
    name: str = "upstream",
    *,
    cpus: str | None = None,
) -> WebhookProcess:
    cert, key = _serving_cert(cp, name)
    port, metrics_port = free_port(), free_port()
    argv = [
        str(cp.tools / UPSTREAM_BINARY),
        "--in-cluster=false",
        f"--kubeconfig={cp.kubeconfig}",
        f"--port={port}",
        f"--metrics-port={metrics_port}",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        "--logtostderr",
        "-v=4",
        *flags,
    ]
    return WebhookProcess(
        name, argv, port, metrics_port, cp.ca_pem, workdir / f"{name}.log", cert, key, cpus=cpus
    )


def register(
    cp: ControlPlane,
    name: str,
    url: str,
    *,
    versions: Sequence[str] = ("v1", "v1beta1"),
    object_selector: dict[str, Any] | None = None,
    namespace_selector: dict[str, Any] | None = None,
    failure_policy: str = "Fail",
    reinvocation_policy: str = "Never",
) -> None:
    """(Re)create a MutatingWebhookConfiguration for pod CREATE pointing at `url`."""
    unregister(cp, name)
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.pod-identity-webhook.test",
                "clientConfig": {"url": url, "caBundle": base64.b64encode(cp.ca_pem).decode()},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "admissionReviewVersions": list(versions),
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": reinvocation_policy,
                "timeoutSeconds": 10,
                "objectSelector": object_selector or {},
                "namespaceSelector": namespace_selector or {},
            }
        ],
    }
    status, body = cp.request(
        "POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", config
    )
    if status not in (200, 201):
        raise WebhookError(f"registering {name}: HTTP {status}: {body[:400]!r}")


def unregister(cp: ControlPlane, name: str) -> None:
    cp.request(
        "DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
    )


def create_pod(
    cp: ControlPlane, namespace: str, pod: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    """Create a pod through the API server; returns what the API server stored (or would)."""
    query = "?dryRun=All" if dry_run else ""
    status, body = cp.request("POST", f"/api/v1/namespaces/{namespace}/pods{query}", pod)
    if status not in (200, 201):
        raise WebhookError(f"creating pod in {namespace}: HTTP {status}: {body[:600]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


def simple_pod(
    service_account: str, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": "e2e-"}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            **spec,
        },
    }


def env_names(pod: dict[str, Any], index: int = 0, kind: str = "containers") -> list[str]:
    return [e["name"] for e in pod["spec"][kind][index].get("env") or []]


def wait_until(
    predicate: Any, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise WebhookError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_until_mutating(
    cp: ControlPlane,
    namespace: str,
    service_account: str,
    labels: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """The API server's webhook configuration cache is eventually consistent: probe with
    dry-run pods until one comes back mutated."""

    def mutated() -> bool:
        try:
            pod = create_pod(cp, namespace, simple_pod(service_account, labels), dry_run=True)
        except WebhookError:
            return False
        return "AWS_ROLE_ARN" in env_names(
            pod
        ) or "AWS_CONTAINER_CREDENTIALS_FULL_URI" in env_names(pod)

    wait_until(mutated, timeout, what=f"webhook mutating pods of {namespace}/{service_account}")
