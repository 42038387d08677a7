"""Generate the conformance corpus: one directory per case under `cases/`.

Each case directory is self-contained and replayable by hand:

    cd tests/corpus/cases/<case>
    pod-identity-webhook replay $(cat args) --objects objects.yaml --expect expected review.json

`case.json` holds what the e2e differential suite needs (the flag group, the namespace, the
ServiceAccount, and, for deliberate improvements over upstream, the reason). Expected responses
are written by `python tests/corpus/generate.py --update` from our replay; the e2e suite proves
the resulting pods equal the upstream webhook's, case by case, on a real API server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
ROLE = "arn:aws:iam::111122223333:role/corpus-app"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"

# Flag groups: the e2e suite runs both webhooks once per group.
GROUPS: dict[str, list[str]] = {
    "defaults": [],
    "region-sts": ["--aws-default-region=us-west-2", "--sts-regional-endpoint"],
    "custom": [
        "--annotation-prefix=example.com",
        "--token-audience=custom.example.com",
        "--token-mount-path=/var/run/aws/token-dir",
        "--token-expiration=7200",
    ],
    # The ConfigMap in eks, the default of serve's --namespace (replay's --webhook-namespace).
    "configmap": ["--watch-config-map"],
    "container-credentials": [
        "--watch-container-credentials-config=identities.json",
        "--aws-default-region=eu-central-1",
    ],
    # Upstream reads the account from EC2 instance metadata only: ours-only group.
    "compose": ["--compose-role-arn", "--aws-account-id=111122223333", "--aws-partition=aws"],
}
OURS_ONLY_GROUPS = {"compose"}


def c(name: str = "app", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "registry.k8s.io/pause:3.10", **fields}


def env(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in pairs]


def pod(
    *containers: dict[str, Any],
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": "corpus-"}
    if annotations:
        meta["annotations"] = annotations
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": list(containers) or [c()], **spec},
    }


E = "eks.amazonaws.com/"
X = "example.com/"
ROLE_ONLY = {E + "role-arn": ROLE}


def case(
    name: str,
    group: str,
    pod_: dict[str, Any],
    sa: dict[str, str] | None = ROLE_ONLY,
    *,
    describe: str,
    config_map: dict[str, Any] | None = None,
    identities: bool = False,
    improvement: str | None = None,
    sa_name: str = "app",
) -> dict[str, Any]:
    return {
        "name": name,
        "group": group,
        "description": describe,
        "serviceAccount": None if sa is None else {"name": sa_name, "annotations": sa},
        "serviceAccountName": sa_name,
        "configMap": config_map,
        "identities": identities,
        "improvement": improvement,
        "pod": pod_,
    }


def all_cases() -> list[dict[str, Any]]:
    sidecar = c("sidecar", restartPolicy="Always")
    full_env = env(
        ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/own"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_STS_REGIONAL_ENDPOINTS", "legacy"),
    )
    cases = [
        case("basic", "defaults", pod(), describe="annotated ServiceAccount, one container"),
        case(
            "sa-without-role",
            "defaults",
            pod(),
            {},
            describe="ServiceAccount without annotations: no mutation",
        ),
        case(
            "sa-other-annotations",
            "defaults",
            pod(),
            {"team": "x", E + "audience": "a"},
            describe="annotations but no role: no mutation",
        ),
        case(
            "sa-unknown",
            "defaults",
            pod(),
            None,
            describe="ServiceAccount not in the cache: no mutation",
            sa_name="default",
        ),
        case(
            "audience",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "audience": "my.audience"},
            describe="audience annotation",
        ),
        case(
            "sts-true",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "sts-regional-endpoints": "true"},
            describe="regional STS from annotation",
        ),
        case(
            "sts-T",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "sts-regional-endpoints": "T"},
            describe="Go ParseBool spelling T",
        ),
        case(
            "sts-invalid",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "sts-regional-endpoints": "yes"},
            describe="invalid bool falls back to the flag",
        ),
        case(
            "sa-expiration",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "token-expiration": "3600"},
            describe="SA token expiration",
        ),
        case(
            "sa-expiration-min",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "token-expiration": "100"},
            describe="SA expiration clamped to 600",
        ),
        case(
            "sa-expiration-invalid",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "token-expiration": "1h"},
            describe="invalid SA expiration falls back",
        ),
        case(
            "pod-expiration",
            "defaults",
            pod(annotations={E + "token-expiration": "5000"}),
            {**ROLE_ONLY, E + "token-expiration": "3600"},
            describe="pod annotation overrides SA",
        ),
        case(
            "pod-expiration-invalid",
            "defaults",
            pod(annotations={E + "token-expiration": "x"}),
            {**ROLE_ONLY, E + "token-expiration": "3600"},
            describe="invalid pod expiration keeps SA value",
        ),
        case(
            "pod-expiration-min",
            "defaults",
            pod(annotations={E + "token-expiration": "60"}),
            describe="pod expiration clamped",
        ),
        case(
            "skip-one",
            "defaults",
            pod(c("app"), c("proxy"), annotations={E + "skip-containers": "proxy"}),
            describe="skip one container",
        ),
        case(
            "skip-quoted",
            "defaults",
            pod(c("a"), c("b"), c("c"), annotations={E + "skip-containers": '"a",c'}),
            describe="skip list with quotes",
        ),
        case(
            "skip-leading-space",
            "defaults",
            pod(c("a"), c("b"), annotations={E + "skip-containers": "a, b"}),
            describe="leading space is part of the name, b is not skipped",
        ),
        case(
            "skip-invalid-csv",
            "defaults",
            pod(c("a"), annotations={E + "skip-containers": 'a"b'}),
            describe="unparsable skip list skips nothing",
        ),
        case(
            "skip-init",
            "defaults",
            pod(c("app"), initContainers=[c("init")], annotations={E + "skip-containers": "init"}),
            describe="skip an init container",
        ),
        case(
            "init-containers",
            "defaults",
            pod(c("app"), initContainers=[c("init-a"), c("init-b")]),
            describe="init containers are mutated too",
        ),
        case(
            "native-sidecar",
            "defaults",
            pod(c("app"), initContainers=[sidecar]),
            describe="native sidecar keeps restartPolicy",
        ),
        case(
            "three-containers", "defaults", pod(c("a"), c("b"), c("c")), describe="every container"
        ),
        case(
            "has-role-env",
            "defaults",
            pod(c(env=env(("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/own")))),
            describe="existing AWS_ROLE_ARN counts as the pair",
        ),
        case(
            "has-token-file-env",
            "defaults",
            pod(c(env=env(("AWS_WEB_IDENTITY_TOKEN_FILE", "/own/token")))),
            describe="existing token file counts as the pair",
        ),
        case(
            "has-everything",
            "defaults",
            pod(c(env=full_env)),
            describe="complete container is untouched, volume still added",
        ),
        case(
            "other-env",
            "defaults",
            pod(c(env=env(("A", "1"), ("B", "2")))),
            describe="append after existing env",
        ),
        case(
            "env-from",
            "defaults",
            pod(c(envFrom=[{"configMapRef": {"name": "aws", "optional": True}}])),
            describe="envFrom does not count",
        ),
        case(
            "value-from",
            "defaults",
            pod(
                c(env=[{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
            ),
            describe="valueFrom env kept",
        ),
        case(
            "has-mount",
            "defaults",
            pod(
                c(volumeMounts=[{"name": "aws-iam-token", "mountPath": "/own", "readOnly": True}]),
                volumes=[{"name": "aws-iam-token", "emptyDir": {}}],
            ),
            describe="existing mount and volume with our name",
        ),
        case(
            "has-volume",
            "defaults",
            pod(volumes=[{"name": "aws-iam-token", "emptyDir": {}}]),
            describe="existing volume with our name is kept",
        ),
        case(
            "other-volumes",
            "defaults",
            pod(
                c(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
                volumes=[
                    {"name": "data", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                ],
            ),
            describe="token volume prepended",
        ),
        case(
            "windows",
            "defaults",
            pod(nodeSelector={"kubernetes.io/os": "windows"}),
            describe="Windows token path",
        ),
        case(
            "windows-beta",
            "defaults",
            pod(nodeSelector={"beta.kubernetes.io/os": "windows"}),
            describe="beta Windows selector",
        ),
        case(
            "windows-spec-os",
            "defaults",
            pod(os={"name": "windows"}),
            describe="spec.os.name windows",
            improvement="spec.os.name: windows also gets the Windows token path; upstream only reads nodeSelector",
        ),
        case(
            "linux",
            "defaults",
            pod(nodeSelector={"kubernetes.io/os": "linux"}),
            describe="Linux selector keeps Unix path",
        ),
        case(
            "invalid-arn",
            "defaults",
            pod(),
            {E + "role-arn": "my-role"},
            describe="invalid ARN injected (we add a warning)",
        ),
        case(
            "arn-with-path",
            "defaults",
            pod(),
            {E + "role-arn": "arn:aws:iam::111122223333:role/path/to/role"},
            describe="role with path",
        ),
        case(
            "gov-partition",
            "defaults",
            pod(),
            {E + "role-arn": "arn:aws-us-gov:iam::111122223333:role/gov"},
            describe="GovCloud ARN",
        ),
        case(
            "resize-policy",
            "defaults",
            pod(
                c(
                    resizePolicy=[{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                    resources={"requests": {"cpu": "10m"}},
                )
            ),
            describe="newer container field survives",
        ),
        case(
            "realistic",
            "defaults",
            pod(
                c(
                    "web",
                    ports=[{"containerPort": 8080, "name": "http"}],
                    securityContext={
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "allowPrivilegeEscalation": False,
                    },
                    readinessProbe={"httpGet": {"path": "/", "port": 8080}},
                    resources={"limits": {"memory": "64Mi"}},
                ),
                labels={"app": "web"},
                affinity={
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 1,
                                "preference": {
                                    "matchExpressions": [
                                        {"key": "zone", "operator": "In", "values": ["a"]}
                                    ]
                                },
                            }
                        ]
                    }
                },
                tolerations=[{"key": "k", "operator": "Exists"}],
            ),
            describe="a Deployment-like pod",
        ),
        case("rs-basic", "region-sts", pod(), describe="region and STS flags"),
        case(
            "rs-has-region",
            "region-sts",
            pod(c(env=env(("AWS_REGION", "eu-west-1")))),
            describe="AWS_REGION suppresses both region vars",
        ),
        case(
            "rs-has-default-region",
            "region-sts",
            pod(c(env=env(("AWS_DEFAULT_REGION", "eu-west-1")))),
            describe="AWS_DEFAULT_REGION suppresses both",
        ),
        case(
            "rs-has-sts",
            "region-sts",
            pod(c(env=env(("AWS_STS_REGIONAL_ENDPOINTS", "legacy")))),
            describe="existing STS var kept",
        ),
        case(
            "rs-has-everything",
            "region-sts",
            pod(c(env=full_env)),
            describe="complete container untouched",
        ),
        case(
            "rs-sts-false-annotation",
            "region-sts",
            pod(),
            {**ROLE_ONLY, E + "sts-regional-endpoints": "false"},
            describe="annotation turns STS off",
        ),
        case(
            "rs-init",
            "region-sts",
            pod(c("app"), initContainers=[c("init")]),
            describe="init containers get region too",
        ),
        case(
            "custom-basic",
            "custom",
            pod(),
            {X + "role-arn": ROLE},
            describe="custom prefix, audience, mount path, expiration",
        ),
        case(
            "custom-audience",
            "custom",
            pod(),
            {X + "role-arn": ROLE, X + "audience": "other"},
            describe="custom prefix audience annotation",
        ),
        case(
            "custom-pod-expiration",
            "custom",
            pod(annotations={X + "token-expiration": "3600"}),
            {X + "role-arn": ROLE},
            describe="custom prefix pod expiration",
        ),
        case(
            "custom-ignores-eks-prefix",
            "custom",
            pod(),
            ROLE_ONLY,
            describe="eks.amazonaws.com annotations ignored with another prefix",
        ),
        case(
            "custom-skip",
            "custom",
            pod(c("a"), c("b"), annotations={X + "skip-containers": "b"}),
            {X + "role-arn": ROLE},
            describe="custom prefix skip",
        ),
        case(
            "cm-exact",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/app": {"RoleARN": ROLE, "Audience": "sts.amazonaws.com"}},
            describe="ConfigMap exact key",
        ),
        case(
            "cm-star",
            "configmap",
            pod(),
            {},
            config_map={"*/app-star": {"RoleARN": ROLE, "Audience": "sts.amazonaws.com"}},
            sa_name="app-star",
            describe="ConfigMap * namespace",
        ),
        case(
            "cm-glob",
            "configmap",
            pod(),
            {},
            config_map={"{ns_prefix}*/app-glob": {"RoleARN": ROLE}},
            sa_name="app-glob",
            describe="ConfigMap glob namespace",
            improvement="glob namespace patterns like team-* match; upstream documents them but only a literal * works",
        ),
        case(
            "cm-annotation-wins",
            "configmap",
            pod(),
            ROLE_ONLY,
            config_map={"{ns}/app": {"RoleARN": "arn:aws:iam::111122223333:role/from-cm"}},
            describe="SA annotation beats ConfigMap",
        ),
        case(
            "cm-fields",
            "configmap",
            pod(),
            {},
            config_map={
                "{ns}/app": {
                    "RoleARN": ROLE,
                    "Audience": "cm.aud",
                    "UseRegionalSTS": True,
                    "TokenExpiration": 3600,
                }
            },
            describe="all ConfigMap fields",
        ),
        case(
            "cm-empty-audience",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/app": {"RoleARN": ROLE, "Audience": ""}},
            describe="empty audience",
            improvement="a missing or empty ConfigMap Audience means --token-audience; upstream leaves the audience empty (the token's audience becomes the API server's)",
        ),
        case(
            "cm-no-audience",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/app": {"RoleARN": ROLE}},
            describe="missing audience",
            improvement="a missing or empty ConfigMap Audience means --token-audience; upstream leaves the audience empty",
        ),
        case(
            "cm-lowercase-fields",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/app": {"rolearn": ROLE, "audience": "lower.aud"}},
            describe="field names are case-insensitive",
        ),
        case(
            "cm-other-sa",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/someone-else": {"RoleARN": ROLE, "Audience": "x"}},
            describe="entry for another SA: no mutation",
        ),
        case(
            "cc-basic",
            "container-credentials",
            pod(annotations={E + "token-expiration": "3600"}),
            {},
            identities=True,
            describe="container credentials (fixed expiration)",
        ),
        case(
            "cc-labels",
            "container-credentials",
            pod(labels={"app": "x"}, annotations={E + "token-expiration": "3600"}),
            {},
            identities=True,
            describe="label added beside existing labels",
        ),
        case(
            "cc-beats-role",
            "container-credentials",
            pod(annotations={E + "token-expiration": "3600"}),
            ROLE_ONLY,
            identities=True,
            describe="container credentials win over a role",
        ),
        case(
            "cc-sa-expiration",
            "container-credentials",
            pod(),
            {E + "token-expiration": "4000", E + "sts-regional-endpoints": "true"},
            identities=True,
            describe="SA expiration and STS carry over",
        ),
        case(
            "cc-jitter",
            "container-credentials",
            pod(),
            {},
            identities=True,
            describe="default expiration gets jitter in [79200, 86400]",
        ),
        case(
            "cc-has-env",
            "container-credentials",
            pod(c(env=env(("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://own")))),
            {},
            identities=True,
            describe="existing container-credentials env",
        ),
        case(
            "cc-windows",
            "container-credentials",
            pod(
                nodeSelector={"kubernetes.io/os": "windows"},
                annotations={E + "token-expiration": "3600"},
            ),
            {},
            identities=True,
            describe="Windows path in container-credentials mode",
        ),
        case(
            "cc-not-listed",
            "container-credentials",
            pod(),
            ROLE_ONLY,
            describe="SA not listed: web identity as usual",
            sa_name="web",
        ),
        case(
            "compose-name",
            "compose",
            pod(),
            {E + "role-arn": "corpus-app"},
            describe="role name composed into an ARN",
        ),
        case("compose-arn-kept", "compose", pod(), ROLE_ONLY, describe="a full ARN is kept"),
        # Appended last so earlier cases keep their numbers (and namespaces).
        case(
            "bind-mount-options",
            "defaults",
            pod(
                c(
                    volumeMounts=[
                        {
                            "name": "scratch",
                            "mountPath": "/scratch",
                            "bindMountOptions": ["noexec", "nosuid"],
                        }
                    ]
                ),
                volumes=[{"name": "scratch", "emptyDir": {}}],
            ),
            describe="volumeMounts[].bindMountOptions (Kubernetes 1.37, alpha) next to our mount",
            improvement="fields newer than upstream's vendored k8s.io/api (here volumeMounts[].bindMountOptions, "
            "new in Kubernetes 1.37) survive; upstream rewrites the containers and drops them",
        ),
        # Pods upstream's patch makes invalid (the API server rejects them); ours stay valid.
        case(
            "mount-path-taken",
            "defaults",
            pod(
                c(volumeMounts=[{"name": "own-token", "mountPath": TOKEN_DIR, "readOnly": True}]),
                volumes=[{"name": "own-token", "emptyDir": {}}],
            ),
            describe="the container already mounts another volume at the token path",
            improvement="a container that already mounts something at the token path gets no "
            "second mount there, and a warning; upstream adds one and the API server rejects the "
            "pod (mountPath must be unique)",
        ),
        case(
            "device-at-token-path",
            "defaults",
            pod(
                c(volumeDevices=[{"name": "block", "devicePath": TOKEN_DIR}]),
                volumes=[{"name": "block", "persistentVolumeClaim": {"claimName": "block"}}],
            ),
            describe="a raw block device sits at the token path",
            improvement="a raw block device at the token path also keeps our mount away (with a "
            "warning); upstream's mount there gets the pod rejected",
        ),
        case(
            "pod-expiration-huge",
            "defaults",
            pod(annotations={E + "token-expiration": "9999999999"}),
            describe="pod asks for more than 2^32 seconds",
            improvement="a token expiration above 2^32 s is lowered to 2^32 with a warning; "
            "upstream passes it on and the API server rejects the pod",
        ),
        case(
            "sa-expiration-huge",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "token-expiration": "9223372036854775807"},
            describe="ServiceAccount asks for the largest int64",
            improvement="a token expiration above 2^32 s is lowered to 2^32 with a warning; "
            "upstream passes it on and the API server rejects the pod",
        ),
        case(
            "sa-empty-audience",
            "defaults",
            pod(),
            {**ROLE_ONLY, E + "audience": ""},
            describe="empty audience annotation",
            improvement="an empty audience annotation means --token-audience, with a warning; "
            "upstream omits the audience, so the token is for the API server and STS refuses it",
        ),
        case(
            "cm-expiration-huge",
            "configmap",
            pod(),
            {},
            config_map={"{ns}/app": {"RoleARN": ROLE, "TokenExpiration": 2**40}},
            describe="ConfigMap TokenExpiration above 2^32",
            improvement="a token expiration above 2^32 s is lowered to 2^32 with a warning; "
            "upstream passes it on and the API server rejects the pod",
        ),
    ]
    return cases


def namespace_for(index: int) -> str:
    return f"corpus-{index:03d}"


def write_case(index: int, spec: dict[str, Any], root: Path) -> Path:
    ns = namespace_for(index)
    directory = root / f"{index:03d}-{spec['name']}"
    directory.mkdir(parents=True)
    spec = json.loads(json.dumps(spec).replace("{ns_prefix}", ns[:-2]).replace("{ns}", ns))
    spec["namespace"] = ns
    spec["pod"]["spec"]["serviceAccountName"] = spec["serviceAccountName"]
    objects: list[dict[str, Any]] = []
    if spec["serviceAccount"] is not None:
        meta: dict[str, Any] = {"name": spec["serviceAccount"]["name"], "namespace": ns}
        if spec["serviceAccount"]["annotations"]:
            meta["annotations"] = spec["serviceAccount"]["annotations"]
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    if spec["configMap"] is not None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "pod-identity-webhook", "namespace": "eks"},
                "data": {"config": json.dumps(spec["configMap"], sort_keys=True)},
            }
        )
    (directory / "objects.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}, sort_keys=False)
    )
    if spec["group"] == "container-credentials":
        identities = (
            [{"namespace": ns, "serviceAccount": spec["serviceAccountName"]}]
            if spec["identities"]
            else []
        )
        (directory / "identities.json").write_text(
            json.dumps({"identities": identities}, indent=2) + "\n"
        )
    (directory / "args").write_text(
        "\n".join(GROUPS[spec["group"]]) + ("\n" if GROUPS[spec["group"]] else "")
    )
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"00000000-0000-4000-8000-{index:012d}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "corpus"},
            "object": spec["pod"],
            "dryRun": False,
        },
    }
    (directory / "review.json").write_text(json.dumps(review, indent=2) + "\n")
    meta_out = {
        k: spec[k]
        for k in ("name", "group", "description", "namespace", "serviceAccountName", "improvement")
    }
    meta_out["oursOnly"] = spec["group"] in OURS_ONLY_GROUPS
    (directory / "case.json").write_text(json.dumps(meta_out, indent=2) + "\n")
    return directory


def generate(root: Path) -> list[Path]:
    if root.exists():
        shutil.rmtree(root)
    return [write_case(i, spec, root) for i, spec in enumerate(all_cases(), start=1)]


def update_expected(directories: list[Path]) -> None:
    import contextlib
    import io
    import os

    from webhook.cli import main

    for directory in directories:
        args = [a for a in (directory / "args").read_text().splitlines() if a]
        cwd = os.getcwd()
        os.chdir(directory)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the responses land in expected/
                code = main(
                    [
                        "replay",
                        *args,
                        "--objects",
                        "objects.yaml",
                        "--expect",
                        "expected",
                        "--update-expected",
                        "review.json",
                    ]
                )
        finally:
            os.chdir(cwd)
        if code != 0:
            sys.exit(f"replay failed for {directory}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", action="store_true", help="also (re)write expected responses")
    options = parser.parse_args()
    expected = {p.parent.name: p.read_bytes() for p in CASES.glob("*/expected/review.json")}
    dirs = generate(CASES)
    if options.update:
        update_expected(dirs)
    else:  # keep the committed expectations
        for d in dirs:
            if d.name in expected:
                (d / "expected").mkdir()
                (d / "expected" / "review.json").write_bytes(expected[d.name])
    print(f"{len(dirs)} cases in {CASES}")
