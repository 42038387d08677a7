"""Seeded generator of pods a user could plausibly submit, crowded around what the webhook
touches: the token mount path, existing identity volumes, env, expiration annotations,
skip lists, Windows selectors, init and ephemeral containers.

Many are valid, some are not (a mount naming a missing volume, ephemeral containers on
create); the property test asks the API server which is which before judging a patch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

IMAGE = "registry.k8s.io/pause:3.10"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
CC_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
E = "eks.amazonaws.com/"

MOUNT_PATHS = (
    TOKEN_DIR,
    TOKEN_DIR + "/",
    TOKEN_DIR + "/token",
    "/var/run/secrets/eks.amazonaws.com",
    CC_DIR,
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/data",
    "/cache",
)
ENV_NAMES = (
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "APP_MODE",
)
EXPIRATIONS = (
    "3600",
    "600",
    "100",
    "0",
    "-1",
    "-9223372036854775808",
    "4294967296",  # 2^32: the largest the API server accepts
    "4294967297",
    "9999999999",
    "9223372036854775807",
    "99999999999999999999",  # not an int64: ignored, as upstream ignores it
    "1h",
    "",
)


@dataclass(frozen=True)
class Account:
    """A ServiceAccount of the property test and how each webhook learns about it."""

    name: str
    annotations: dict[str, str]
    config_map: dict[str, Any] | None = None  # its entry in the pod-identity-webhook ConfigMap
    container_credentials: bool = False


ROLE = "arn:aws:iam::111122223333:role/dryrun"
ACCOUNTS = (
    Account("web", {E + "role-arn": ROLE}),
    Account("web-sts", {E + "role-arn": ROLE, E + "sts-regional-endpoints": "true"}),
    Account("web-max-int64", {E + "role-arn": ROLE, E + "token-expiration": str(2**63 - 1)}),
    Account("web-2-32-plus-1", {E + "role-arn": ROLE, E + "token-expiration": str(2**32 + 1)}),
    Account("web-negative", {E + "role-arn": ROLE, E + "token-expiration": "-5"}),
    Account("web-empty-audience", {E + "role-arn": ROLE, E + "audience": ""}),
    Account("no-role", {}),
    Account("cm", {}, {"RoleARN": ROLE}),
    Account("cm-huge", {}, {"RoleARN": ROLE, "TokenExpiration": 2**40}),
    Account("cc", {}, container_credentials=True),
    Account("cc-huge", {E + "token-expiration": "9999999999"}, container_credentials=True),
)


def _volumes(rng: random.Random) -> list[dict[str, Any]]:
    candidates = [
        {"name": "data", "emptyDir": {}},
        {"name": "own-token", "emptyDir": {}},
        {"name": "block", "persistentVolumeClaim": {"claimName": "block"}},
        rng.choice(
            [
                {"name": "aws-iam-token", "emptyDir": {}},
                {
                    "name": "aws-iam-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": "sts.amazonaws.com",
                                    "expirationSeconds": 3600,
                                    "path": "token",
                                }
                            }
                        ]
                    },
                },
            ]
        ),
        {"name": "eks-pod-identity-token", "emptyDir": {}},
    ]
    return [v for v in candidates if rng.random() < 0.3]


def _container(rng: random.Random, name: str, volumes: list[str]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": IMAGE}
    if rng.random() < 0.5:
        c["env"] = [{"name": n, "value": "v"} for n in rng.sample(ENV_NAMES, rng.randint(1, 3))]
    if rng.random() < 0.15:
        c["envFrom"] = [{"configMapRef": {"name": "aws", "optional": True}}]
    # Mounting aws-iam-token without declaring it relies on the webhook: invalid as
    # submitted, so rarely generated.
    mountable = [v for v in volumes if v != "block"] or ["data"]
    if "aws-iam-token" not in mountable and rng.random() < 0.05:
        mountable.append("aws-iam-token")
    paths = rng.sample(MOUNT_PATHS, rng.choice((0, 0, 1, 1, 2, 3)))
    if paths:
        c["volumeMounts"] = [{"name": rng.choice(mountable), "mountPath": p} for p in paths]
    if "block" in volumes and rng.random() < 0.5:
        free = [p for p in (TOKEN_DIR, CC_DIR, "/dev/xvdb") if p not in paths]
        c["volumeDevices"] = [{"name": "block", "devicePath": rng.choice(free)}]
    return c


def _annotations(rng: random.Random, names: list[str]) -> dict[str, str]:
    annotations: dict[str, str] = {}
    if rng.random() < 0.5:
        annotations[E + "token-expiration"] = rng.choice(EXPIRATIONS)
    if rng.random() < 0.2:
        skipped = rng.sample(names, rng.randint(1, len(names)))
        annotations[E + "skip-containers"] = rng.choice([",".join(skipped), 'x"y', " " + names[0]])
    return annotations


def _spec_os(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    selector = rng.choice([None, "kubernetes.io/os", "beta.kubernetes.io/os"])
    if selector:
        spec["nodeSelector"] = {selector: rng.choice(["windows", "linux"])}
    if rng.random() < 0.2:
        spec["os"] = {"name": rng.choice(["windows", "linux"])}
    return spec


def generate_pod(rng: random.Random) -> dict[str, Any]:
    """One pod for a random ServiceAccount of ACCOUNTS."""
    volumes = _volumes(rng)
    names = [v["name"] for v in volumes]
    containers = [_container(rng, f"c{i}", names) for i in range(rng.randint(1, 3))]
    inits = [_container(rng, f"i{i}", names) for i in range(rng.choice((0, 0, 1, 2)))]
    for init in inits:
        if rng.random() < 0.3:
            init["restartPolicy"] = "Always"  # a native sidecar
    all_names = [c["name"] for c in containers + inits]
    spec: dict[str, Any] = {
        "serviceAccountName": rng.choice(ACCOUNTS).name,
        "containers": containers,
        **_spec_os(rng),
    }
    if inits:
        spec["initContainers"] = inits
    if volumes or rng.random() < 0.1:
        spec["volumes"] = volumes
    if rng.random() < 0.3:
        spec["automountServiceAccountToken"] = False
    if rng.random() < 0.03:  # the API server refuses these on create: counted as invalid
        spec["ephemeralContainers"] = [{"name": "debug", "image": IMAGE}]
    meta: dict[str, Any] = {"generateName": "prop-"}
    annotations = _annotations(rng, all_names)
    if annotations:
        meta["annotations"] = annotations
    if rng.random() < 0.3:
        meta["labels"] = {"app": "prop"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
