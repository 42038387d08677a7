"""kubectl-free pod helpers: exec, logs and readiness, all through the API server.

Exec goes API server -> kubelet -> containerd's stream server, over the websocket
protocol `kubectl exec` speaks, so a passing exec proves the whole path works.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL as _ERROR_CHANNEL

__all__ = [
    "ExecResult",
    "PodNotReady",
    "create_until_mutated",
    "exec_in_pod",
    "pod_events",
    "pod_logs",
    "wait_pod_ready",
]

# Waiting reasons that no amount of waiting fixes.
_FATAL_WAITING = {
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
}


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str
    stderr: str


class PodNotReady(AssertionError):
    """A pod did not become Ready; the message carries its status and events."""


def exec_in_pod(
    api: k8s_client.ApiClient,
    namespace: str,
    pod: str,
    container: str | None,
    argv: list[str],
    *,
    timeout: float = 60.0,
) -> ExecResult:
    """Runs `argv` in the container (no TTY, no stdin) and collects its output and status."""
    core = k8s_client.CoreV1Api(api)
    kwargs: dict[str, Any] = {"container": container} if container else {}
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=argv,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
        **kwargs,
    )
    out: list[str] = []
    err: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while ws.is_open():
            if time.monotonic() > deadline:
                raise TimeoutError(f"exec {argv} in {namespace}/{pod} ran over {timeout:.0f}s")
            ws.update(timeout=1)
            if ws.peek_stdout():
                out.append(ws.read_stdout())
            if ws.peek_stderr():
                err.append(ws.read_stderr())
        # Whatever arrived with the closing frame.
        out.append(ws.read_stdout())
        err.append(ws.read_stderr())
        status = ws.read_channel(_ERROR_CHANNEL)
    finally:
        ws.close()
        # websocket-client answers the API server's closing frame by marking the connection
        # closed while its TLS socket stays open; close() then returns early, and the socket
        # was left to the garbage collector (ResourceWarning in some later test).
        # shutdown() is websocket-client's "close the socket now".
        ws.sock.shutdown()
    rc = _exit_code(status, f"exec {argv} in {namespace}/{pod}")
    return ExecResult(rc=rc, stdout="".join(out), stderr="".join(err))


def _exit_code(status_json: str, what: str) -> int:
    """The exit code in the metav1.Status the API server sends on the error channel.

    A command that could not run at all (no such executable, container gone) has no
    exit code: that is an error here, as it is for `kubectl exec`.
    """
    if not status_json:
        raise RuntimeError(f"{what}: the stream closed without a status")
    status = json.loads(status_json)
    if status.get("status") == "Success":
        return 0
    causes = status.get("details", {}).get("causes", [])
    codes = [c["message"] for c in causes if c.get("reason") == "ExitCode"]
    if status.get("reason") == "NonZeroExitCode" and codes:
        return int(codes[0])
    raise RuntimeError(f"{what}: {status.get('message', status_json)}")


def pod_logs(
    api: k8s_client.ApiClient, namespace: str, pod: str, container: str | None = None
) -> str:
    kwargs: dict[str, Any] = {"container": container} if container else {}
    text = k8s_client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, **kwargs)
    return str(text)


def pod_events(api: k8s_client.ApiClient, namespace: str, pod: str) -> list[str]:
    events = k8s_client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod}"
    )
    return [f"{e.type} {e.reason}: {e.message}" for e in events.items]


def _describe(api: k8s_client.ApiClient, pod: Any) -> str:
    lines = [f"phase={pod.status.phase}"]
    for cond in pod.status.conditions or []:
        lines.append(
            f"condition {cond.type}={cond.status} {cond.reason or ''} {cond.message or ''}"
        )
    for cs in pod.status.container_statuses or []:
        lines.append(f"container {cs.name}: ready={cs.ready} state={cs.state.to_dict()}")
    lines += pod_events(api, pod.metadata.namespace, pod.metadata.name)
    return "\n  ".join(lines)


def wait_pod_ready(
    api: k8s_client.ApiClient, namespace: str, pod: str, *, timeout: float = 120.0
) -> Any:
    """Polls until the pod's Ready condition is True; returns the V1Pod.

    Fails early on states that never recover (image missing, crash loop, failed).
    """
    core = k8s_client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = core.read_namespaced_pod(pod, namespace)  # a V1Pod, used as Any
        except ApiException as e:
            if e.status != 404:
                raise
            time.sleep(0.5)
            continue
        status = last.status
        if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            return last
        waiting = [
            cs.state.waiting.reason
            for cs in status.container_statuses or []
            if cs.state.waiting is not None
        ]
        if status.phase in ("Failed", "Succeeded") or _FATAL_WAITING.intersection(waiting):
            raise PodNotReady(
                f"pod {namespace}/{pod} will not become Ready:\n  {_describe(api, last)}"
            )
        time.sleep(0.5)
    detail = _describe(api, last) if last is not None else "never created"
    raise PodNotReady(f"pod {namespace}/{pod} not Ready after {timeout:.0f}s:\n  {detail}")


def create_until_mutated(
    api: k8s_client.ApiClient, namespace: str, account: str, env_name: str, timeout: float = 30.0
) -> Any:
    """Creates scheduling-gated (never run) pods of `account` until the stored one carries
    `env_name` or `timeout` passes; returns the last V1Pod. A new ServiceAccount reaches the
    webhook's cache a moment after it is created, hence the retries."""
    core: Any = k8s_client.CoreV1Api(api)  # takes plain dicts, which its stubs do not say
    body: dict[str, Any] = {
        "metadata": {"generateName": "probe-"},
        "spec": {
            "serviceAccountName": account,
            "schedulingGates": [{"name": "piw.e2e/never-scheduled"}],
            "containers": [{"name": "c", "image": "localhost/none:0"}],
        },
    }
    deadline = time.monotonic() + timeout
    while True:
        pod: Any = core.create_namespaced_pod(namespace, body)
        names = [e.name for e in pod.spec.containers[0].env or []]
        if env_name in names or time.monotonic() > deadline:
            return pod
        time.sleep(1)
