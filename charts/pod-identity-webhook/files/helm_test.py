"""`helm test`: the webhook injects what it should into a pod of an annotated ServiceAccount.

Runs in the webhook image (Python and the kubernetes client, nothing else). Creates a pod in
server-side dry run, so the API server runs admission, our webhook included, and returns the
pod it would have stored; nothing is persisted. Settings come from the environment the chart
sets. Retries for a while: a replica may not have seen the test's ServiceAccount yet.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from kubernetes import client, config

TOKEN_VOLUME = "aws-iam-token"
DEADLINE_SECONDS = 60.0


def _pod(service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "helm-test-"},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "registry.invalid/never-pulled:dry-run"}],
        },
    }


def _dry_run_create(api: client.CoreV1Api, namespace: str, service_account: str) -> dict[str, Any]:
    # _preload_content=False: the raw answer (a urllib3 response), not a V1Pod model.
    body: Any = _pod(service_account)  # the client serializes plain dicts as they are
    response: Any = api.create_namespaced_pod(
        namespace, body, dry_run="All", _preload_content=False
    )
    pod: dict[str, Any] = json.loads(response.data)
    return pod


def problems(pod: dict[str, Any], want: dict[str, str]) -> list[str]:
    """What the mutated pod lacks, as sentences; empty when the injection is complete."""
    spec = pod.get("spec") or {}
    found: list[str] = []
    container = (spec.get("containers") or [{}])[0]
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    expected_env = {
        "AWS_ROLE_ARN": want["role_arn"],
        "AWS_WEB_IDENTITY_TOKEN_FILE": f"{want['mount_path']}/token",
    }
    for name, value in expected_env.items():
        if env.get(name) != value:
            found.append(f"env {name} is {env.get(name)!r}, want {value!r}")
    mounts = {m.get("name"): m.get("mountPath") for m in container.get("volumeMounts") or []}
    mount = mounts.get(TOKEN_VOLUME)
    if mount != want["mount_path"]:
        found.append(f"volumeMount {TOKEN_VOLUME} is {mount!r}, want {want['mount_path']!r}")
    volume = next((v for v in spec.get("volumes") or [] if v.get("name") == TOKEN_VOLUME), None)
    sources = ((volume or {}).get("projected") or {}).get("sources") or [{}]
    audience = (sources[0].get("serviceAccountToken") or {}).get("audience")
    if audience != want["audience"]:
        found.append(f"{TOKEN_VOLUME} token audience is {audience!r}, want {want['audience']!r}")
    return found


def main() -> int:
    want = {
        "role_arn": os.environ["PIW_TEST_ROLE_ARN"],
        "mount_path": os.environ["PIW_TEST_TOKEN_MOUNT_PATH"],
        "audience": os.environ["PIW_TEST_AUDIENCE"],
    }
    namespace = os.environ["PIW_TEST_NAMESPACE"]
    service_account = os.environ["PIW_TEST_SERVICE_ACCOUNT"]
    config.load_incluster_config()  # type: ignore[no-untyped-call]
    api = client.CoreV1Api()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        found = problems(_dry_run_create(api, namespace, service_account), want)
        if not found:
            print(f"ok: pods of {namespace}/{service_account} get {want['role_arn']} and a token")
            return 0
        if time.monotonic() > deadline:
            print("FAIL: the webhook did not inject credentials:", *found, sep="\n  ")
            return 1
        time.sleep(2.0)


if __name__ == "__main__":
    sys.exit(main())
