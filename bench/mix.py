"""A realistic AdmissionReview mix and the ServiceAccounts it needs.

Pods look like what a ReplicaSet controller sends through the API server: two containers and
one init container with env, resources, probes, mounts, the projected kube-api-access volume,
owner references, managedFields and API-server defaults (~5.5 KB of JSON per review; an
UPDATE, which also carries oldObject, ~14 KB).

    60% annotated  pod CREATE of a ServiceAccount with a role annotation (gets a patch)
    25% plain      pod CREATE of a ServiceAccount without one (allowed, no patch)
    10% identity   pod CREATE that already carries the identity (allowed, nothing to add)
     5% update     pod UPDATE (a label change on a running, already mutated pod)

Deterministic for a given seed. As a script it writes the bodies and an --objects file:

    python bench/mix.py --out /tmp/mix --count 200 --api-version v1beta1
"""

from __future__ import annotations

import argparse
import copy
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"
API_VERSIONS = {"v1": V1, "v1beta1": V1BETA1}

REGION = "us-west-2"  # both webhooks run with --aws-default-region=REGION
ACCOUNT = "111122223333"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"

# kind -> share of the mix, in percent
MIX: dict[str, int] = {"annotated": 60, "plain": 25, "identity": 10, "update": 5}
KINDS = tuple(MIX)

NAMESPACES = (
    "payments",
    "checkout",
    "search",
    "catalog",
    "accounts",
    "ml-serving",
    "data-pipeline",
    "observability",
)
ANNOTATED_SAS = ("api", "worker", "exporter")
PLAIN_SAS = ("default", "frontend", "cron")
TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"


@dataclass(frozen=True, slots=True)
class Review:
    kind: str
    api_version: str
    namespace: str
    service_account: str
    body: bytes


class ObjectCreator(Protocol):
    """What `create_objects` needs: e2e.controlplane.ControlPlane has it."""

    def ensure_namespace(self, name: str) -> None: ...

    def ensure_service_account(
        self, namespace: str, name: str, annotations: dict[str, str] | None = None
    ) -> None: ...


# --------------------------------------------------------------------------- ServiceAccounts


def role_arn(namespace: str, name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{namespace}-{name}"


def sa_annotations(namespace: str, name: str) -> dict[str, str] | None:
    """Role annotations for the annotated ServiceAccounts; a few also set the optional ones."""
    if name not in ANNOTATED_SAS:
        return None
    annotations = {ROLE_ANNOTATION: role_arn(namespace, name)}
    if name == "worker":
        annotations["eks.amazonaws.com/sts-regional-endpoints"] = "true"
    if name == "exporter":
        annotations["eks.amazonaws.com/token-expiration"] = "3600"
    return annotations


def service_accounts() -> list[dict[str, Any]]:
    items = []
    for namespace in NAMESPACES:
        for name in (*ANNOTATED_SAS, *PLAIN_SAS):
            meta: dict[str, Any] = {"name": name, "namespace": namespace}
            annotations = sa_annotations(namespace, name)
            if annotations:
                meta["annotations"] = annotations
            items.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    return items


def objects_document() -> bytes:
    """A `kind: List` for `serve --objects` (JSON is YAML)."""
    return orjson.dumps({"apiVersion": "v1", "kind": "List", "items": service_accounts()})


def create_objects(api: ObjectCreator) -> int:
    """Create the namespaces and ServiceAccounts in an API server; returns the SA count."""
    items = service_accounts()
    for namespace in NAMESPACES:
        api.ensure_namespace(namespace)
    for item in items:
        meta = item["metadata"]
        api.ensure_service_account(meta["namespace"], meta["name"], meta.get("annotations"))
    return len(items)


# --------------------------------------------------------------------------- pods


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


def _probe(path: str, port: str, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "initialDelaySeconds": 5,
        "timeoutSeconds": 2,
        "periodSeconds": period,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def _defaults(container: dict[str, Any]) -> dict[str, Any]:
    container.update(
        terminationMessagePath="/dev/termination-log",
        terminationMessagePolicy="File",
        imagePullPolicy="IfNotPresent",
    )
    return container


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _identity_env(namespace: str, sa: str) -> list[dict[str, Any]]:
    return [
        {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
        {"name": "AWS_DEFAULT_REGION", "value": REGION},
        {"name": "AWS_REGION", "value": REGION},
        {"name": "AWS_ROLE_ARN", "value": role_arn(namespace, sa)},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": TOKEN_FILE},
    ]


def deployment_pod(
    rng: random.Random, namespace: str, app: str, sa: str, *, identity: bool = False
) -> dict[str, Any]:
    """A pod as the ReplicaSet controller creates it, after API-server defaulting and the
    ServiceAccount admission plugin; `identity` adds what the webhook would have added."""
    template_hash = _hex(rng, 10)
    replica_set = f"{app}-{template_hash}"
    version = f"v1.{rng.randrange(40)}.{rng.randrange(10)}"
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{namespace}/{app}:{version}"
    api_access = f"kube-api-access-{_suffix(rng)}"
    api_mount = {
        "name": api_access,
        "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    }
    app_container = _defaults(
        {
            "name": app,
            "image": image,
            "args": ["--config=/etc/app/config.yaml", "--listen=:8080"],
            "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
            ],
            "env": [
                {"name": "LOG_LEVEL", "value": "info"},
                _field_env("POD_NAME", "metadata.name"),
                _field_env("POD_NAMESPACE", "metadata.namespace"),
                _field_env("NODE_NAME", "spec.nodeName"),
                {
                    "name": "DATABASE_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": f"{app}-db", "key": "password"}},
                },
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4317"},
            ],
            "resources": _resources("250m", "256Mi", "1", "512Mi"),
            "livenessProbe": _probe("/healthz", "http", 10),
            "readinessProbe": _probe("/readyz", "http", 5),
            "volumeMounts": [
                {"name": "config", "readOnly": True, "mountPath": "/etc/app"},
                {"name": "tmp", "mountPath": "/tmp"},
                api_mount,
            ],
        }
    )
    sidecar = _defaults(
        {
            "name": "log-router",
            "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:2.32.2",
            "env": [
                {"name": "FLB_LOG_LEVEL", "value": "warn"},
                _field_env("HOST_NAME", "spec.nodeName"),
            ],
            "resources": _resources("50m", "64Mi", "200m", "128Mi"),
            "volumeMounts": [
                {"name": "tmp", "readOnly": True, "mountPath": "/var/log/app"},
                api_mount,
            ],
        }
    )
    init = _defaults(
        {
            "name": "migrate",
            "image": image,
            "command": ["/app/migrate", "--wait-for-db", "--timeout=120s"],
            "env": [
                {"name": "LOG_LEVEL", "value": "info"},
                {
                    "name": "DATABASE_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": f"{app}-db", "key": "password"}},
                },
            ],
            "resources": _resources("100m", "128Mi", "500m", "256Mi"),
            "volumeMounts": [api_mount],
        }
    )
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {
            "name": api_access,
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ],
                "defaultMode": 420,
            },
        },
    ]
    if identity:
        mount = {
            "name": "aws-iam-token",
            "readOnly": True,
            "mountPath": TOKEN_FILE[: -len("/token")],
        }
        for container in (app_container, sidecar, init):
            container["env"].extend(_identity_env(namespace, sa))
            container["volumeMounts"].append(mount)
        token = {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}
        volumes.insert(
            0, {"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": token}]}}
        )
    labels = {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": f"{namespace}-{app}",
        "app.kubernetes.io/version": version,
        "pod-template-hash": template_hash,
    }
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": f"{replica_set}-",
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": replica_set,
                    "uid": _uid(rng),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2025-01-14T09:30:14Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {".": {}, "f:prometheus.io/port": {}},
                            "f:generateName": {},
                            "f:labels": {".": {}, "f:pod-template-hash": {}},
                            "f:ownerReferences": {".": {}, f'k:{{"uid":"{_uid(rng)}"}}': {}},
                        },
                    },
                }
            ],
        },
        "spec": {
            "volumes": volumes,
            "initContainers": [init],
            "containers": [app_container, sidecar],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": sa,
            "serviceAccount": sa,
            "securityContext": {"fsGroup": 65534},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
    }


# --------------------------------------------------------------------------- reviews


def _envelope(
    rng: random.Random,
    api_version: str,
    namespace: str,
    operation: str,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    name: str = "",
) -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    request: dict[str, Any] = {
        "uid": _uid(rng),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": _uid(rng),
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated",
            ],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": False,
        "options": {
            "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
            "apiVersion": "meta.k8s.io/v1",
        },
    }
    if name:
        request["name"] = name
    return {"kind": "AdmissionReview", "apiVersion": api_version, "request": request}


def make_review(rng: random.Random, kind: str, api_version: str) -> Review:
    namespace = rng.choice(NAMESPACES)
    app = rng.choice(("orders", "ledger", "gateway", "indexer", "recommender", "notifier"))
    sa = rng.choice(PLAIN_SAS if kind == "plain" else ANNOTATED_SAS)
    pod = deployment_pod(rng, namespace, app, sa, identity=kind in ("identity", "update"))
    if kind == "update":
        # A running pod (named, scheduled) whose labels are being changed.
        meta = pod["metadata"]
        name = meta["generateName"] + _suffix(rng)
        meta.update(name=name, uid=_uid(rng), resourceVersion=str(rng.randrange(10**6, 10**7)))
        pod["spec"]["nodeName"] = f"ip-10-0-{rng.randrange(256)}-{rng.randrange(256)}.ec2.internal"
        pod["status"] = {"phase": "Running", "qosClass": "Burstable", "podIP": "10.0.3.17"}
        old = copy.deepcopy(pod)
        meta["labels"]["rollout"] = "canary"
        review = _envelope(rng, api_version, namespace, "UPDATE", pod, old, name)
    else:
        review = _envelope(rng, api_version, namespace, "CREATE", pod, None)
    return Review(kind, api_version, namespace, sa, orjson.dumps(review))


def kinds_for(count: int, rng: random.Random) -> list[str]:
    """`count` kinds in the MIX proportions (largest remainder), shuffled."""
    total = sum(MIX.values())
    exact = {kind: count * share / total for kind, share in MIX.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(MIX, key=lambda k: exact[k] - counts[k], reverse=True)
    for kind in by_remainder[: count - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    return kinds


def generate(count: int = 200, api_version: str = V1BETA1, seed: int = 1) -> list[Review]:
    rng = random.Random(seed)
    return [make_review(rng, kind, api_version) for kind in kinds_for(count, rng)]


def bodies(reviews: Sequence[Review]) -> list[bytes]:
    return [r.body for r in reviews]


def write(out: Path, reviews: Sequence[Review]) -> None:
    """out/reviews/NNNN-kind.json (what loadgen --bodies reads) and out/objects.json."""
    (out / "reviews").mkdir(parents=True, exist_ok=True)
    for index, r in enumerate(reviews):
        (out / "reviews" / f"{index:04d}-{r.kind}.json").write_bytes(r.body)
    (out / "objects.json").write_bytes(objects_document())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--count", type=int, default=200, help="number of reviews")
    parser.add_argument("--api-version", choices=sorted(API_VERSIONS), default="v1beta1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    reviews = generate(args.count, API_VERSIONS[args.api_version], args.seed)
    write(args.out, reviews)
    sizes = sorted(len(r.body) for r in reviews)
    median = sizes[len(sizes) // 2]
    print(
        f"wrote {len(reviews)} reviews to {args.out / 'reviews'} (median {median} B, "
        f"max {sizes[-1]} B) and the ServiceAccounts to {args.out / 'objects.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
