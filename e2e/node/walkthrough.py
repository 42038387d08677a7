"""The "Hello IRSA" walkthrough on a real node: install the chart, run a pod, let botocore in it
get credentials from what the webhook injected.

Shared by the node e2e tests and `make demo`, so both do exactly what a user following an IRSA
guide does:

    release = install_webhook(node, images)              # helm install, 2 replicas Ready
    with aws_emulators(node) as aws:                     # STS + Pod Identity agent, in-process
        apply_demo_objects(node, aws)                    # namespace, ServiceAccount, pod
        report = probe_pod(node, DEMO_NAMESPACE, DEMO_POD)

Everything runs inside the node's network namespace. The webhook (the chart's defaults: no
hostNetwork) and the demo pods run on the pod network; a pod reaches the STS emulator at the node
IP and the agent emulator at 169.254.170.23 through its gateway. Given an external issuer
(e2e/node/issuer.py, as the node suites run), the emulators fetch discovery and keys.json from
that site, never from the API server; without one, from the API server's own discovery endpoint.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

import webhook
from e2e.emulators import CredentialStore, OidcProvider, PodIdentityAgentEmulator, StsEmulator
from e2e.images import Images
from e2e.node.cluster import AGENT_IP, Node
from e2e.node.issuer import IssuerSite

__all__ = [
    "ACCOUNT_ID",
    "AGENT_NAMESPACE",
    "DEMO_NAMESPACE",
    "DEMO_POD",
    "DEMO_ROLE_ARN",
    "DEMO_SERVICE_ACCOUNT",
    "NEGATIVE_NAMESPACE",
    "PROBE_SCRIPT",
    "REGION",
    "RELEASE",
    "RELEASE_NAMESPACE",
    "AwsEmulators",
    "PodReport",
    "Release",
    "apply_demo_objects",
    "aws_emulators",
    "demo_pod",
    "install_webhook",
    "probe_pod",
    "trust_policy",
    "typed_api",
]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pod-identity-webhook"

ACCOUNT_ID = "111122223333"
REGION = "us-west-2"
TOKEN_EXPIRATION = 86400  # the chart's (and upstream's) default --token-expiration
RELEASE = "piw"
RELEASE_NAMESPACE = "pod-identity-webhook"

DEMO_NAMESPACE = "demo"
NEGATIVE_NAMESPACE = "demo2"  # same ServiceAccount name, same annotation: must be refused
DEMO_SERVICE_ACCOUNT = "s3-reader"
DEMO_POD = "irsa-demo"
DEMO_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/eks-irsa-lab-demo-s3-reader-role"
DEMO_UID = 1000  # the demo image's non-root user

AGENT_NAMESPACE = "demo-pod-identity"  # EKS Pod Identity (container credentials) mode
AGENT_SERVICE_ACCOUNT = "agent-user"
AGENT_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/eks-pod-identity-demo-role"
AGENT_PORT = 80  # the agent's: botocore's full URI http://169.254.170.23/v1/credentials

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


def typed_api(cls: Any, api: k8s_client.ApiClient) -> Any:
    """A kubernetes API group client, typed Any: its models are built from plain dicts here,
    which the client accepts and its annotations do not describe."""
    return cls(api)


# ------------------------------------------------------------------------------ the chart


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    deployment: str
    values: Mapping[str, Any]


def webhook_values(images: Images, **overrides: Any) -> dict[str, Any]:
    """Chart values for this node: the locally built image, IRSA flags on, the chart's own
    defaults for the rest (pod network; pass `hostNetwork=True` for the host-network option)."""
    repository, _, tag = images.webhook.ref.rpartition(":")
    values: dict[str, Any] = {
        # The README's form: the repository names its registry, the chart renders it as is.
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "config": {
            "awsDefaultRegion": REGION,
            "stsRegionalEndpoint": True,
            "logLevel": 3,
        },
        "containerCredentials": {
            "enabled": True,
            "identities": [{"namespace": AGENT_NAMESPACE, "serviceAccount": AGENT_SERVICE_ACCOUNT}],
        },
    }
    return _merge(values, overrides)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def install_webhook(
    node: Node,
    images: Images,
    *,
    name: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
    values: Mapping[str, Any] | None = None,
    upgrade: bool = False,
    timeout: float = 180.0,
) -> Release:
    """`helm install` (or `upgrade`) the chart and wait until every replica is Ready."""
    enable_listener_migration(node)
    chosen = webhook_values(images, **(values or {}))
    values_file = node.state_dir / f"values-{name}-{int(time.time() * 1000)}.json"
    values_file.write_text(json.dumps(chosen))
    verb = ("upgrade",) if upgrade else ("install", "--create-namespace")
    release = Release(name, namespace, f"{name}-pod-identity-webhook", chosen)
    try:
        node.helm(
            *verb, name, str(CHART), "-n", namespace, "-f", str(values_file),
            "--wait", f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )  # fmt: skip
    except Exception as e:
        e.add_note(describe_release(node, release))
        raise
    wait_rollout(node, release, timeout=timeout)
    return release


def enable_listener_migration(node: Node) -> None:
    """What the chart README asks of hostNetwork nodes: with SO_REUSEPORT, a replica that
    closes its listener would reset the connections queued on it (the API server does not retry
    those); `tcp_migrate_req` hands them to a replica still listening. Per network namespace."""
    subprocess.run(
        [*node.netns.nsenter(), "sysctl", "-q", "-w", "net.ipv4.tcp_migrate_req=1"],
        check=True,
        capture_output=True,
        timeout=10,
    )


def kubectl(node: Node, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The pinned kubectl with the node's admin kubeconfig, as a person would run it."""
    return subprocess.run(
        [*node.netns.nsenter(), str(node.tools / "kubectl"), "--kubeconfig", str(node.kubeconfig),
         *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def uninstall_webhook(node: Node, release: Release) -> None:
    node.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout=120s")


def wait_rollout(node: Node, release: Release, *, timeout: float = 180.0) -> None:
    """Until the Deployment's newest ReplicaSet has all replicas Ready, no old pod is left, and
    the Service has as many ready endpoints."""
    apps = typed_api(k8s_client.AppsV1Api, node.api)
    deadline = time.monotonic() + timeout
    status: Any = None
    while time.monotonic() < deadline:
        dep = apps.read_namespaced_deployment(release.deployment, release.namespace)
        status = dep.status
        want = dep.spec.replicas
        if (
            status.observed_generation == dep.metadata.generation
            and status.updated_replicas == want
            and status.ready_replicas == want
            and status.replicas == want
            and _ready_endpoints(node, release) == want
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"{release.deployment} did not roll out in {timeout:.0f}s: {status}")


def _ready_endpoints(node: Node, release: Release) -> int:
    """Ready endpoints of the webhook's Service: what the API server dials. They trail the pods'
    readiness (the controller-manager batches EndpointSlice updates, see cluster.py)."""
    discovery = typed_api(k8s_client.DiscoveryV1Api, node.api)
    selector = f"kubernetes.io/service-name={release.deployment}"
    slices = discovery.list_namespaced_endpoint_slice(release.namespace, label_selector=selector)
    return sum(
        1
        for s in slices.items
        for e in s.endpoints or []
        if e.conditions is not None and e.conditions.ready
    )


def describe_release(node: Node, release: Release) -> str:
    """The webhook pods' states, events and log tails: what a failed install needs read."""
    lines: list[str] = []
    core = typed_api(k8s_client.CoreV1Api, node.api)
    for pod in webhook_pods(node, release):
        name = pod.metadata.name
        lines.append(f"pod {name}: phase={pod.status.phase}")
        for cs in pod.status.container_statuses or []:
            lines.append(f"  {cs.name} ready={cs.ready} restarts={cs.restart_count} {cs.state}")
        events = core.list_namespaced_event(
            release.namespace, field_selector=f"involvedObject.name={name}"
        )
        lines += [f"  event {e.reason}: {e.message}" for e in events.items]
        with contextlib.suppress(Exception):
            log = node.pod_logs(release.namespace, name)
            lines += [f"  log: {line}" for line in log.splitlines()[-15:]]
    return "\n".join(lines) or "no webhook pods"


def webhook_pods(node: Node, release: Release) -> list[Any]:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    selector = f"app.kubernetes.io/instance={release.name}"
    return list(core.list_namespaced_pod(release.namespace, label_selector=selector).items)


# ------------------------------------------------------------------------------ AWS, emulated


def trust_policy(provider: OidcProvider, namespace: str, service_account: str) -> dict[str, Any]:
    """The least-privilege trust policy IRSA guides teach: exact sub and aud."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider.arn(ACCOUNT_ID)},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{provider.provider_id}:sub": (
                            f"system:serviceaccount:{namespace}:{service_account}"
                        ),
                        f"{provider.provider_id}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


@dataclass
class AwsEmulators:
    sts: StsEmulator
    agent: PodIdentityAgentEmulator
    provider: OidcProvider
    credentials: CredentialStore = field(default_factory=CredentialStore)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def aws_emulators(
    node: Node, site: IssuerSite | None = None, *, sts_port: int | None = None
) -> Iterator[AwsEmulators]:
    """STS on the node IP (on `sts_port`, default a free one) and the Pod Identity agent on
    169.254.170.23:80, both trusting the cluster's issuer as an IAM OIDC provider does: its
    URL, client IDs and trusted CA. With `site`, that is the external issuer's (its CA, its
    host name); else the API server's."""
    if site is not None:
        if node.issuer != site.issuer:
            raise ValueError(f"the node issues tokens for {node.issuer}, not {site.issuer}")
        issuer_ssl = site.client_context()
        hosts = site.hosts
    else:
        issuer_ssl = ssl.create_default_context(cafile=str(node.ca_file))
        hosts = {}
    provider = OidcProvider(node.issuer, ["sts.amazonaws.com"], issuer_ssl, hosts)
    store = CredentialStore()
    sts = StsEmulator(
        node.node_ip,
        sts_port or _free_port(node.node_ip),
        ACCOUNT_ID,
        [provider],
        {DEMO_ROLE_ARN: trust_policy(provider, DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT)},
        credentials=store,
    )
    agent = PodIdentityAgentEmulator(
        AGENT_IP,
        AGENT_PORT,
        issuer=node.issuer,
        account_id=ACCOUNT_ID,
        associations={(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT): AGENT_ROLE_ARN},
        ssl_context=issuer_ssl,
        issuer_hosts=hosts,
        credentials=store,
    )
    sts.start()
    try:
        agent.start()
        try:
            yield AwsEmulators(sts, agent, provider, store)
        finally:
            agent.stop()
    finally:
        sts.stop()


# ------------------------------------------------------------------------------ the demo pod


def demo_pod(name: str, service_account: str, images: Images, sts_url: str) -> dict[str, Any]:
    """A non-root pod of the botocore image; the SDK is pointed at STS as a user would:
    AWS_ENDPOINT_URL_STS in the pod's own spec (the webhook adds everything else)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "irsa-demo"}},
        "spec": {
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": DEMO_UID},
            "containers": [
                {
                    "name": "app",
                    "image": images.demo.ref,
                    "imagePullPolicy": "Never",
                    "env": [{"name": "AWS_ENDPOINT_URL_STS", "value": sts_url}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def ensure_namespace(node: Node, name: str) -> None:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    try:
        core.create_namespace({"metadata": {"name": name}})
    except ApiException as e:
        if e.status != 409:
            raise
    # The controller-manager creates `default`; the pods here name their own accounts.


def ensure_service_account(
    node: Node, namespace: str, name: str, annotations: Mapping[str, str]
) -> None:
    core = typed_api(k8s_client.CoreV1Api, node.api)
    body = {"metadata": {"name": name, "annotations": dict(annotations)}}
    try:
        core.create_namespaced_service_account(namespace, body)
    except ApiException as e:
        if e.status != 409:
            raise
        core.patch_namespaced_service_account(name, namespace, body)


def recreate_pod(node: Node, namespace: str, body: Mapping[str, Any]) -> Any:
    """Creates the pod (deleting an earlier one of that name first) and waits until Ready."""
    core = typed_api(k8s_client.CoreV1Api, node.api)
    name = body["metadata"]["name"]
    with contextlib.suppress(ApiException):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            if e.status == 404:
                break
            raise
        time.sleep(0.3)
    core.create_namespaced_pod(namespace, dict(body))
    return node.wait_pod_ready(namespace, name, timeout=120)


def apply_demo_objects(node: Node, images: Images, aws: AwsEmulators) -> None:
    """Namespaces demo, demo2 and the Pod Identity one, their ServiceAccounts and pods."""
    annotations = {ROLE_ANNOTATION: DEMO_ROLE_ARN}
    for namespace in (DEMO_NAMESPACE, NEGATIVE_NAMESPACE):
        ensure_namespace(node, namespace)
        ensure_service_account(node, namespace, DEMO_SERVICE_ACCOUNT, annotations)
    ensure_namespace(node, AGENT_NAMESPACE)
    ensure_service_account(node, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, {})
    for namespace, account in (
        (DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT),
        (NEGATIVE_NAMESPACE, DEMO_SERVICE_ACCOUNT),
        (AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT),
    ):
        recreate_pod(node, namespace, demo_pod(DEMO_POD, account, images, aws.sts.url))


# What runs inside the container (exec, as `kubectl exec`): everything the walkthrough checks,
# as one JSON document. Only the standard library and botocore: what an app would have.
PROBE_SCRIPT = r"""
import base64, json, os, sys
out = {"uid": os.getuid(), "env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get(
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
if path:
    out["token_file"] = path
    out["token_readable"] = os.access(path, os.R_OK)
    try:
        token = open(path).read().strip()
        body = token.split(".")[1]
        out["claims"] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except Exception as e:
        out["token_error"] = repr(e)
import botocore.session
from botocore.exceptions import ClientError
session = botocore.session.get_session()
try:
    creds = session.get_credentials()
    out["credential_method"] = creds.method if creds else None
    if creds is not None:
        out["access_key_id"] = creds.get_frozen_credentials().access_key
    sts = session.create_client("sts")
    ident = sts.get_caller_identity()
    out["caller"] = {k: ident[k] for k in ("Arn", "Account", "UserId")}
except ClientError as e:
    out["error"] = {"code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"]}
except Exception as e:
    out["error"] = {"code": type(e).__name__, "message": str(e)}
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class PodReport:
    uid: int
    env: dict[str, str]
    token_file: str | None
    token_readable: bool
    claims: dict[str, Any]
    credential_method: str | None
    access_key_id: str | None
    caller_arn: str | None
    error_code: str | None
    error_message: str | None


def probe_pod(node: Node, namespace: str, pod: str, container: str = "app") -> PodReport:
    result = node.exec_in_pod(namespace, pod, container, ["python3", "-c", PROBE_SCRIPT])
    if result.rc != 0:
        raise AssertionError(f"probe in {namespace}/{pod} exited {result.rc}: {result.stderr}")
    data = json.loads(result.stdout)
    error = data.get("error") or {}
    return PodReport(
        uid=data["uid"],
        env=data["env"],
        token_file=data.get("token_file"),
        token_readable=bool(data.get("token_readable")),
        claims=data.get("claims") or {},
        credential_method=data.get("credential_method"),
        access_key_id=data.get("access_key_id"),
        caller_arn=(data.get("caller") or {}).get("Arn"),
        error_code=error.get("code"),
        error_message=error.get("message"),
    )


def expected_image_version() -> str:
    return webhook.__version__


def injected_names(pod: Any, container: int = 0) -> Sequence[str]:
    return [e.name for e in pod.spec.containers[container].env or []]
