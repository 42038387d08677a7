"""The Helm chart: lint, schema, and the objects `helm template` renders for each ci/ file.

helm is found through $PIW_HELM (the binary or its directory), $PIW_E2E_TOOLS_DIR, then PATH,
then the directory that `bash e2e/tools/build.sh` prints last. Without any of them (build.sh
missing, or exiting 3 for "no Go"), the tests that need helm are skipped.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

import webhook
from tests.chart_render import (
    CHART,
    CI_NAMES,
    CLUSTER_SCOPED,
    FULLNAME,
    IN_CLUSTER_CI,
    NAMESPACE,
    RELEASE,
    REPO,
    SKIP_LABEL,
    TLS_SECRET,
    Obj,
    args_of,
    ci_file,
    container,
    decode,
    find,
    flags_of,
    one,
    pod_labels,
    render,
    render_fails,
    run_helm,
    selector_matches,
    webhook_entry,
)
from webhook.cli import serve

# helm may be built from source on first use: allow for it.
pytestmark = pytest.mark.timeout(1800)

# --------------------------------------------------------------------------- lint & metadata


def test_required_ci_files_exist() -> None:
    required = {
        "default",
        "cert-manager",
        "existing-secret",
        "openshift",
        "configmap-mode",
        "container-credentials",
        "url-mode",
        "hardened",
    }
    assert required <= set(CI_NAMES)


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "pod-identity-webhook"
    assert meta["type"] == "application"
    assert str(meta["appVersion"]) == webhook.__version__
    assert (CHART / "templates" / "NOTES.txt").is_file()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_helm_lint_strict(helm: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("name", CI_NAMES)
def test_helm_lint_strict_with_ci_values(helm: str, name: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(ci_file(name)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


# --------------------------------------------------------------------------- every ci file


@pytest.mark.parametrize("name", CI_NAMES)
def test_rendered_objects_are_well_formed(helm: str, name: str) -> None:
    objs = render(helm, ci=name)
    seen: set[tuple[str, str, str]] = set()
    for obj in objs:
        meta = obj["metadata"]
        assert obj["apiVersion"] and obj["kind"] and meta["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
        assert len(meta["name"]) <= 63
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta
        else:
            assert meta["namespace"] == NAMESPACE, obj["kind"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)


@pytest.mark.parametrize("name", CI_NAMES)
def test_rbac_is_exactly_serviceaccount_reads(helm: str, name: str) -> None:
    objs = render(helm, ci=name)
    sa = one(objs, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}

    cluster_role = one(objs, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == [subject]

    roles = find(objs, "Role")
    if name == "configmap-mode":
        role = one(objs, "Role")
        # Only the ConfigMap the webhook reads (e2e/test_chart_install.py checks on a real API
        # server that its field-selected list and watch pass and other names do not).
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["pod-identity-webhook"],
                "verbs": ["get", "list", "watch"],
            }
        ]
        role_binding = one(objs, "RoleBinding")
        assert role_binding["roleRef"]["name"] == role["metadata"]["name"]
        assert role_binding["roleRef"]["kind"] == "Role"
        assert role_binding["subjects"] == [subject]
    else:
        assert roles == [] and find(objs, "RoleBinding") == []


@pytest.mark.parametrize("name", IN_CLUSTER_CI)
def test_service_exposes_webhook_and_metrics_ports(helm: str, name: str) -> None:
    objs = render(helm, ci=name)
    service = one(objs, "Service", FULLNAME)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"https", "metrics"}
    assert ports["https"]["port"] == 443
    assert ports["metrics"]["port"] == 9999

    flags = flags_of(objs)
    # The Service targets, by number, the ports the process listens on.
    assert str(ports["https"]["targetPort"]) == flags["port"]
    assert str(ports["metrics"]["targetPort"]) == flags["metrics-port"]
    ctr = container(objs)
    if "reuse-port" in flags:
        assert "ports" not in ctr, "hostNetwork containerPorts would become hostPorts"
    else:
        container_ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        assert container_ports == {"https": 8443, "metrics": 9999}
        assert str(container_ports["https"]) == flags["port"]
        assert str(container_ports["metrics"]) == flags["metrics-port"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(objs))


@pytest.mark.parametrize("name", IN_CLUSTER_CI)
def test_hardening_holds_for_every_ci_file(helm: str, name: str) -> None:
    objs = render(helm, ci=name)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    ctr = container(objs)
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runAsUser" not in pod["securityContext"]
    assert pod.get("hostNetwork", False) is (name == "host-network")
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    assert "runAsUser" not in sc
    port = int(flags_of(objs)["port"])
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port, "scheme": "HTTPS"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port, "scheme": "HTTPS"}
    assert all(p["containerPort"] >= 1024 for p in ctr.get("ports", []))
    assert not any("hostPort" in p for p in ctr.get("ports", []))
    args = args_of(objs)
    assert args[0] == "serve"
    assert "--in-cluster=false" in args
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]
    # The certificate is mounted read-only where --tls-cert/--tls-key point.
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/webhook/certs"
    assert mounts["tls"]["readOnly"] is True
    flags = flags_of(objs)
    assert flags["tls-cert"] == "/etc/webhook/certs/tls.crt"
    assert flags["tls-key"] == "/etc/webhook/certs/tls.key"
    assert flags["namespace"] == NAMESPACE
    assert flags["service-name"] == FULLNAME


@pytest.mark.parametrize("name", CI_NAMES)
def test_webhook_selectors_exclude_self_opt_out_and_system_namespaces(helm: str, name: str) -> None:
    objs = render(helm, ci=name)
    hook = webhook_entry(objs)
    object_selector = hook["objectSelector"]
    exprs = object_selector["matchExpressions"]
    assert {"key": SKIP_LABEL, "operator": "DoesNotExist"} in exprs
    assert selector_matches(object_selector, {"app": "anything"})
    assert not selector_matches(object_selector, {SKIP_LABEL: "true"})
    if find(objs, "Deployment"):
        assert not selector_matches(object_selector, pod_labels(objs)), "webhook pods excluded"

    ns_selector = hook["namespaceSelector"]

    def ns(name: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": name}

    assert not selector_matches(ns_selector, ns("kube-system"))
    assert not selector_matches(ns_selector, ns(NAMESPACE))
    assert selector_matches(ns_selector, ns("team-a"))


def _every_flag_sets() -> list[str]:
    sets = [f"{path}={value}" for path, value, _, _ in FLAG_TABLE]
    return [
        *sets,
        "containerCredentials.enabled=true",
        "containerCredentials.identities[0].namespace=a",
        "containerCredentials.identities[0].serviceAccount=b",
        "config.extraArgs={--logtostderr}",
    ]


@pytest.mark.parametrize("name", [*CI_NAMES, "every-flag"])
def test_args_are_accepted_by_the_webhook_cli(helm: str, name: str) -> None:
    """The rendered args parse with `pod-identity-webhook serve`'s own parser."""
    if name == "every-flag":
        objs = render(helm, *_every_flag_sets())
    else:
        objs = render(helm, ci=name)
        if not find(objs, "Deployment"):
            objs = render(helm, "deployment.enabled=true", ci=name)
    args = args_of(objs)
    parser = argparse.ArgumentParser(prog="pod-identity-webhook serve", exit_on_error=False)
    serve.add_arguments(parser)
    parsed = parser.parse_args(serve.normalize_argv(args[1:]))
    flags = flags_of(objs)
    assert parsed.port == int(flags["port"])
    assert parsed.metrics_port == int(flags["metrics-port"])
    assert parsed.in_cluster is False
    assert parsed.namespace == NAMESPACE
    assert parsed.service_name == FULLNAME
    assert parsed.token_audience == flags["token-audience"]
    assert parsed.token_expiration == int(flags["token-expiration"])
    assert parsed.watch_config_map is (flags["watch-config-map"] == "true")
    assert parsed.sts_regional_endpoint is (flags["sts-regional-endpoint"] == "true")
    assert parsed.tls_min_version == flags["tls-min-version"]
    assert parsed.verbosity == int(flags["v"])
    assert parsed.log_format == flags["log-format"]
    assert parsed.reuse_port is ("reuse-port" in flags)
    if name == "every-flag":
        assert parsed.enable_debugging_handlers is True
        assert parsed.compose_role_arn is True
        assert parsed.aws_account_id == "012345678901"
        assert parsed.kubeconfig == "/etc/kube/config"
        assert parsed.kube_api == "https://10.0.0.1:6443"
        assert parsed.service_account_lookup_grace_period == 2.0
        assert parsed.resync_period == 90.0
        assert parsed.max_request_bytes == 8388608
        assert parsed.shutdown_delay == 3.0
        assert parsed.shutdown_timeout == 20.0
        assert parsed.reuse_port is True
        assert parsed.watch_container_credentials_config.endswith("/config.json")


# --------------------------------------------------------------------------- defaults


def test_webhook_configuration_defaults(helm: str) -> None:
    objs = render(helm)
    config = one(objs, "MutatingWebhookConfiguration", FULLNAME)
    hook = webhook_entry(objs)
    assert hook["name"] == "pod-identity-webhook.amazonaws.com"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    # Short: with failurePolicy Ignore a hung webhook costs each pod creation this long.
    assert hook["timeoutSeconds"] == 5
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"] == {
        "name": FULLNAME,
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }
    assert "url" not in hook["clientConfig"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", NAMESPACE],
        }
    ]
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": SKIP_LABEL, "operator": "DoesNotExist"},
        {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["pod-identity-webhook"]},
    ]
    assert "cert-manager.io/inject-ca-from" not in (config["metadata"].get("annotations") or {})


def test_ha_defaults(helm: str) -> None:
    objs = render(helm)
    deployment = one(objs, "Deployment", FULLNAME)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    labels = pod_labels(objs)
    assert selector_matches(spec["selector"], labels)
    assert "priorityClassName" not in pod

    pdb = one(objs, "PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    assert selector_matches(pdb["spec"]["selector"], labels)

    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    keys = {t["podAffinityTerm"]["topologyKey"] for t in preferred}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for term in preferred:
        assert selector_matches(term["podAffinityTerm"]["labelSelector"], labels)
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    )

    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in spread:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["maxSkew"] == 1
        assert selector_matches(constraint["labelSelector"], labels)

    ctr = container(objs)
    assert ctr["image"].endswith(f"/pod-identity-webhook:{webhook.__version__}")
    assert ctr["imagePullPolicy"] == "IfNotPresent"
    assert ctr["resources"]["requests"]["cpu"] and ctr["resources"]["limits"]["memory"]


def test_default_args(helm: str) -> None:
    assert args_of(render(helm)) == [
        "serve",
        "--in-cluster=false",
        "--port=8443",
        "--metrics-port=9999",
        "--tls-cert=/etc/webhook/certs/tls.crt",
        "--tls-key=/etc/webhook/certs/tls.key",
        "--tls-min-version=1.2",
        f"--namespace={NAMESPACE}",
        f"--service-name={FULLNAME}",
        "--annotation-prefix=eks.amazonaws.com",
        "--token-audience=sts.amazonaws.com",
        "--token-mount-path=/var/run/secrets/eks.amazonaws.com/serviceaccount",
        "--token-expiration=86400",
        "--sts-regional-endpoint=false",
        "--watch-config-map=false",
        "--log-format=text",
        "--v=0",
    ]


def test_optional_objects_are_off_by_default(helm: str) -> None:
    kinds = {o["kind"] for o in render(helm)}
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    }


# --------------------------------------------------------------------------- image


VERSION = webhook.__version__


@pytest.mark.parametrize(
    ("sets", "image"),
    [
        ((), f"ghcr.io/pod-identity-webhook/pod-identity-webhook:{VERSION}"),
        # A repository that starts with a registry host is used exactly as given.
        (
            ("image.repository=registry.example.com/team/pod-identity-webhook", "image.tag=0.1.0"),
            "registry.example.com/team/pod-identity-webhook:0.1.0",
        ),
        (
            ("image.repository=localhost/pod-identity-webhook", "image.tag=0.1.0"),
            "localhost/pod-identity-webhook:0.1.0",
        ),
        (
            ("image.repository=localhost:5000/pod-identity-webhook",),
            f"localhost:5000/pod-identity-webhook:{VERSION}",
        ),
        (
            ("image.repository=123456789012.dkr.ecr.eu-west-1.amazonaws.com/piw",),
            f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/piw:{VERSION}",
        ),
        # Otherwise the registry goes in front, unless it is empty.
        (
            ("image.registry=registry.example.com", "image.repository=pod-identity-webhook"),
            f"registry.example.com/pod-identity-webhook:{VERSION}",
        ),
        (
            ("image.registry=registry.example.com/team/", "image.repository=piw"),
            f"registry.example.com/team/piw:{VERSION}",
        ),
        (("image.registry=", "image.repository=myorg/piw"), f"myorg/piw:{VERSION}"),
        # The digest pins the image in place of the tag.
        (
            ("image.repository=localhost/piw", "image.tag=1.0", "image.digest=sha256:" + "b" * 64),
            "localhost/piw@sha256:" + "b" * 64,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v) or "default",
)
def test_image_is_the_one_the_user_named(helm: str, sets: tuple[str, ...], image: str) -> None:
    assert container(render(helm, *sets))["image"] == image


@pytest.mark.parametrize(
    "bad",
    [
        "image.repository=localhost/piw:0.1.0",  # the tag belongs in image.tag
        "image.repository=localhost/piw@sha256:" + "c" * 64,
        "image.repository=",
    ],
)
def test_image_repository_rejects_tags_and_digests(helm: str, bad: str) -> None:
    message = render_fails(helm, bad)
    assert "at '/image/repository'" in message, message


def _fenced_blocks(markdown: str) -> Iterator[str]:
    block: list[str] | None = None
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if block is None:
                block = []
            else:
                yield "\n".join(block)
                block = None
        elif block is not None:
            block.append(line)


def _helm_commands(markdown: str) -> Iterator[list[str]]:
    """The `helm install/upgrade ... charts/pod-identity-webhook` commands of fenced blocks."""
    for block in _fenced_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if (
                re.match(r"helm (install|upgrade)\b", line)
                and "charts/pod-identity-webhook" in line
            ):
                yield shlex.split(line)


# Placeholders the guides use, and what a reader would type for them.
PLACEHOLDERS = {"<registry>": "registry.example.com/team", "$AWS_REGION": "eu-west-1"}
GUIDES = [REPO / "README.md", CHART / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _install_commands() -> list[Any]:
    """pytest.param(--set values, id=where) for each documented install that names an image."""
    found = []
    for guide in GUIDES:
        text = guide.read_text()
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        for argv in _helm_commands(text):
            sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
            if any(s.startswith("image.") for s in sets):
                where = f"{guide.relative_to(REPO)}: {' '.join(argv[:3])}"
                found.append(pytest.param(sets, id=where))
    return found


@pytest.mark.parametrize("sets", _install_commands())
def test_documented_install_commands_render_the_image_they_name(helm: str, sets: list[str]) -> None:
    given = dict(s.split("=", 1) for s in sets)
    named = "/".join(p for p in (given.get("image.registry"), given["image.repository"]) if p)
    tag = given.get("image.tag", VERSION)
    assert container(render(helm, *sets))["image"] == f"{named}:{tag}"


def test_readme_installs_an_image_it_names() -> None:
    assert any(p.id.startswith("README.md") for p in _install_commands()), (
        "README.md's helm install names no image.repository"
    )


# --------------------------------------------------------------------------- host network


def test_host_network_shares_ports_between_replicas_on_one_node(helm: str) -> None:
    objs = render(helm, ci="host-network")
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    flags = flags_of(objs)
    assert (flags["port"], flags["metrics-port"]) == ("10443", "10999")
    assert flags["reuse-port"] == "true"
    ctr = container(objs)
    # No containerPorts: the API server would default them to hostPorts and the scheduler's
    # NodePorts filter would refuse a second replica, or the surge pod of a rollout, on the node.
    assert "ports" not in ctr
    assert ctr["readinessProbe"]["httpGet"]["port"] == 10443
    assert ctr["livenessProbe"]["httpGet"]["port"] == 10443
    ports = {p["name"]: p for p in one(objs, "Service")["spec"]["ports"]}
    assert (ports["https"]["port"], ports["https"]["targetPort"]) == (443, 10443)
    assert (ports["metrics"]["port"], ports["metrics"]["targetPort"]) == (9999, 10999)
    # A preferred (not required) anti-affinity lets both replicas land on a single node.
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    )
    assert webhook_entry(objs)["clientConfig"]["service"]["port"] == 443


def test_host_network_without_reuse_port_declares_host_ports(helm: str) -> None:
    objs = render(helm, "hostNetwork=true", "config.reusePort=false")
    assert "reuse-port" not in flags_of(objs)
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    assert ports == {"https": 8443, "metrics": 9999}


def test_reuse_port_is_off_and_ports_declared_without_host_network(helm: str) -> None:
    objs = render(helm)
    assert "reuse-port" not in flags_of(objs)
    assert "hostNetwork" not in one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {p["name"] for p in container(objs)["ports"]} == {"https", "metrics"}
    assert flags_of(render(helm, "config.reusePort=true"))["reuse-port"] == "true"


def test_webhook_and_metrics_ports_must_differ(helm: str) -> None:
    message = render_fails(helm, "config.port=9999")
    assert "config.port and config.metricsPort must differ" in message


# --------------------------------------------------------------------------- rollouts


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.31.2-eks-1552ad0", "1.37.2"])
def test_rollouts_keep_serving_while_pods_terminate(helm: str, kube_version: str) -> None:
    objs = render(helm, kube_version=kube_version)
    spec = one(objs, "Deployment")["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    ctr = container(objs)
    assert ctr["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert find(objs, "PodDisruptionBudget")


def test_pre_stop_delay_is_configurable_and_can_be_turned_off(helm: str) -> None:
    objs = render(helm, "preStopDelaySeconds=20", "terminationGracePeriodSeconds=45")
    assert container(objs)["lifecycle"]["preStop"]["sleep"]["seconds"] == 20
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45
    assert "lifecycle" not in container(render(helm, "preStopDelaySeconds=0"))


@pytest.mark.parametrize("kube_version", ["1.29.4", "1.28.15-eks-7f9249a"])
def test_pre_stop_runs_python_before_the_sleep_action_exists(helm: str, kube_version: str) -> None:
    """Before 1.30 the API server drops `sleep`; the image has Python but no shell."""
    ctr = container(render(helm, "preStopDelaySeconds=1", kube_version=kube_version))
    command = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", *command[2:]], check=True, timeout=30)
    assert time.monotonic() - started >= 1


def test_grace_period_must_outlast_the_pre_stop_delay(helm: str) -> None:
    message = render_fails(helm, "preStopDelaySeconds=30", "terminationGracePeriodSeconds=30")
    assert "terminationGracePeriodSeconds must exceed preStopDelaySeconds" in message
    assert render(helm, "preStopDelaySeconds=0", "terminationGracePeriodSeconds=0")


# --------------------------------------------------------------------------- flags


# (values path, --set value, expected flag, expected flag value)
FLAG_TABLE = [
    ("config.port", "9443", "port", "9443"),
    ("config.metricsPort", "9100", "metrics-port", "9100"),
    ("config.reusePort", "true", "reuse-port", "true"),
    ("config.annotationPrefix", "example.com", "annotation-prefix", "example.com"),
    ("config.tokenAudience", "my-audience", "token-audience", "my-audience"),
    ("config.tokenMountPath", "/var/run/aws", "token-mount-path", "/var/run/aws"),
    ("config.tokenExpiration", "7200", "token-expiration", "7200"),
    ("config.awsDefaultRegion", "ap-southeast-2", "aws-default-region", "ap-southeast-2"),
    ("config.stsRegionalEndpoint", "true", "sts-regional-endpoint", "true"),
    ("config.composeRoleArn", "true", "compose-role-arn", "true"),
    ("config.awsAccountId", "012345678901", "aws-account-id", "012345678901"),
    ("config.awsPartition", "aws-cn", "aws-partition", "aws-cn"),
    ("config.serviceAccountLookupGracePeriod", "2s", "service-account-lookup-grace-period", "2s"),
    ("config.resyncPeriod", "90s", "resync-period", "90s"),
    ("config.shutdownDelay", "3s", "shutdown-delay", "3s"),
    ("config.shutdownTimeout", "20s", "shutdown-timeout", "20s"),
    ("config.maxRequestBytes", "8388608", "max-request-bytes", "8388608"),
    ("config.enableDebuggingHandlers", "true", "enable-debugging-handlers", "true"),
    ("config.tlsMinVersion", "1.3", "tls-min-version", "1.3"),
    (
        "config.tlsCipherSuites",
        "{TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}",
        "tls-cipher-suites",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    ("config.logLevel", "5", "v", "5"),
    ("config.logFormat", "json", "log-format", "json"),
    ("config.kubeconfig", "/etc/kube/config", "kubeconfig", "/etc/kube/config"),
    ("config.kubeApi", "https://10.0.0.1:6443", "kube-api", "https://10.0.0.1:6443"),
    ("watchConfigMap.enabled", "true", "watch-config-map", "true"),
]


@pytest.mark.parametrize(
    ("path", "value", "flag", "expected"), FLAG_TABLE, ids=[row[0] for row in FLAG_TABLE]
)
def test_each_value_maps_to_its_flag(
    helm: str, path: str, value: str, flag: str, expected: str
) -> None:
    sets = [f"{path}={value}"]
    if path == "config.awsAccountId":
        sets.append("config.composeRoleArn=true")  # the account only applies to composition
    assert flags_of(render(helm, *sets))[flag] == expected


def test_flags_are_not_duplicated(helm: str) -> None:
    for name in IN_CLUSTER_CI:
        names = [a.lstrip("-").partition("=")[0] for a in args_of(render(helm, ci=name))[1:]]
        extra = yaml.safe_load(ci_file(name).read_text() or "{}") or {}
        extra_args = ((extra.get("config") or {}).get("extraArgs")) or []
        chart_names = names[: len(names) - len(extra_args)]
        assert len(chart_names) == len(set(chart_names)), (name, chart_names)


def test_hardened_values_map_to_args(helm: str) -> None:
    objs = render(helm, ci="hardened")
    flags = flags_of(objs)
    expected = {
        "aws-default-region": "eu-west-1",
        "sts-regional-endpoint": "true",
        "token-expiration": "3600",
        "compose-role-arn": "true",
        "aws-account-id": "111122223333",
        "aws-partition": "aws",
        "service-account-lookup-grace-period": "250ms",
        "resync-period": "5m",
        "max-request-bytes": "1048576",
        "tls-min-version": "1.3",
        "tls-cipher-suites": "TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384",
        "v": "4",
        "log-format": "json",
    }
    assert args_of(objs)[-1] == "--logtostderr", "extraArgs come last, verbatim"
    for flag, value in expected.items():
        assert flags.get(flag) == value, flag
    assert "enable-debugging-handlers" not in flags
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    assert one(objs, "Deployment")["spec"]["replicas"] == 3
    template_meta = one(objs, "Deployment")["spec"]["template"]["metadata"]
    assert template_meta["annotations"]["example.com/owner"] == "platform"
    assert template_meta["labels"]["team"] == "platform"
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_extra_args_and_unset_optionals(helm: str) -> None:
    flags = flags_of(render(helm, "config.extraArgs={--vmodule=x=2}"))
    for absent in (
        "aws-default-region",
        "compose-role-arn",
        "aws-account-id",
        "aws-partition",
        "service-account-lookup-grace-period",
        "resync-period",
        "max-request-bytes",
        "enable-debugging-handlers",
        "kubeconfig",
        "kube-api",
        "tls-cipher-suites",
        "shutdown-delay",
        "shutdown-timeout",
        "reuse-port",
        "watch-container-credentials-config",
    ):
        assert absent not in flags
    assert flags["vmodule"] == "x=2"


# --------------------------------------------------------------------------- webhook knobs


def test_webhook_knobs(helm: str) -> None:
    objs = render(helm, ci="hardened")
    hook = webhook_entry(objs)
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "IfNeeded"
    ns_exprs = hook["namespaceSelector"]["matchExpressions"]
    assert ns_exprs[0] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "kube-public", "cert-manager", NAMESPACE],
    }
    assert {"key": "pod-identity-webhook/disabled", "operator": "DoesNotExist"} in ns_exprs
    obj_exprs = hook["objectSelector"]["matchExpressions"]
    assert obj_exprs[:2] == [
        {"key": SKIP_LABEL, "operator": "DoesNotExist"},
        {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["pod-identity-webhook"]},
    ]
    assert {
        "key": "app.kubernetes.io/part-of",
        "operator": "NotIn",
        "values": ["istio"],
    } in obj_exprs

    hook = webhook_entry(
        render(
            helm,
            "webhook.reinvocationPolicy=Never",
            "webhook.matchPolicy=Exact",
            "webhook.namespaceSelector.excludeReleaseNamespace=false",
            "webhook.objectSelector.matchLabels.iam=enabled",
            "webhook.namespaceSelector.matchLabels.team=a",
            "webhook.name=iam.example.com",
        )
    )
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["matchPolicy"] == "Exact"
    assert hook["name"] == "iam.example.com"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system"]
    assert hook["namespaceSelector"]["matchLabels"] == {"team": "a"}
    assert hook["objectSelector"]["matchLabels"] == {"iam": "enabled"}
    assert {"key": SKIP_LABEL, "operator": "DoesNotExist"} in hook["objectSelector"][
        "matchExpressions"
    ]


def test_anti_affinity_presets_and_spread_toggle(helm: str) -> None:
    pod = one(render(helm, ci="openshift"), "Deployment")["spec"]["template"]["spec"]
    required = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["topologyKey"] for t in required] == ["kubernetes.io/hostname"]

    pod = one(render(helm, "podAntiAffinity=none", "defaultTopologySpread=false"), "Deployment")[
        "spec"
    ]["template"]["spec"]
    assert "affinity" not in pod
    assert "topologySpreadConstraints" not in pod


# --------------------------------------------------------------------------- TLS modes


def _load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public_key = ca.public_key()
    assert cert.issuer == ca.subject
    assert cert.signature_hash_algorithm is not None
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    else:  # pragma: no cover
        raise AssertionError(f"unexpected CA key type {type(public_key)}")


def test_self_signed_ca_bundle_signed_the_serving_certificate(helm: str) -> None:
    objs = render(helm)
    secret = one(objs, "Secret", TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = secret["data"]
    assert set(data) == {"ca.crt", "tls.crt", "tls.key"}

    ca_bundle = webhook_entry(objs)["clientConfig"]["caBundle"]
    assert ca_bundle == data["ca.crt"], "caBundle must be the CA in the mounted Secret"
    ca_pem = decode(ca_bundle)
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    ca = _load_cert(ca_pem)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True

    cert = _load_cert(decode(data["tls.crt"]))
    _verify_signed_by(cert, ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        FULLNAME,
        f"{FULLNAME}.{NAMESPACE}",
        f"{FULLNAME}.{NAMESPACE}.svc",
    }
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(decode(data["tls.key"]), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]

    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": TLS_SECRET}} in volumes


class _FakeAPIServer:
    """Just enough kube-apiserver (discovery, GET by name) for `helm template --validate`
    with `--dry-run=server`, the mode in which the chart's `lookup` calls reach a cluster."""

    GROUPS: ClassVar[dict[str, dict[str, tuple[str, bool]]]] = {
        "v1": {
            "secrets": ("Secret", True),
            "serviceaccounts": ("ServiceAccount", True),
            "services": ("Service", True),
            "configmaps": ("ConfigMap", True),
        },
        "apps/v1": {"deployments": ("Deployment", True)},
        "policy/v1": {"poddisruptionbudgets": ("PodDisruptionBudget", True)},
        "rbac.authorization.k8s.io/v1": {
            "clusterroles": ("ClusterRole", False),
            "clusterrolebindings": ("ClusterRoleBinding", False),
            "roles": ("Role", True),
            "rolebindings": ("RoleBinding", True),
        },
        "admissionregistration.k8s.io/v1": {
            "mutatingwebhookconfigurations": ("MutatingWebhookConfiguration", False)
        },
    }

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.gets: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                fake.gets.append(path)
                code, body = fake.answer(path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, Obj]:
        if path == "/version":
            return 200, {"major": "1", "minor": "36", "gitVersion": "v1.36.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = []
            for gv in self.GROUPS:
                if "/" in gv:
                    group, version = gv.split("/")
                    entry = {"groupVersion": gv, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for gv, resources in self.GROUPS.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                listed = [
                    {"name": name, "namespaced": namespaced, "kind": kind, "verbs": ["get"]}
                    for name, (kind, namespaced) in resources.items()
                ]
                return 200, {"kind": "APIResourceList", "groupVersion": gv, "resources": listed}
        if path in self.objects:
            return 200, self.objects[path]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}

    def __enter__(self) -> _FakeAPIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, directory: Path) -> Path:
        port = self.server.server_address[1]
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path


def _render_against(helm: str, kubeconfig: Path, *extra: str) -> list[Obj]:
    proc = run_helm(
        helm,
        "template",
        *extra,
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        str(kubeconfig),
        "--validate",
        "--dry-run=server",
        "--disable-openapi-validation",
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_self_signed_secret_survives_upgrade(helm: str, tmp_path: Path) -> None:
    """A second render, with the first render's Secret in the cluster, keeps CA and cert."""
    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{TLS_SECRET}"
    with _FakeAPIServer() as api:
        kubeconfig = api.kubeconfig(tmp_path)
        first = _render_against(helm, kubeconfig)
        assert secret_path in api.gets, "the chart must look the Secret up"
        installed = one(first, "Secret", TLS_SECRET)
        # As `helm install` leaves it: owned by the release.
        stored = json.loads(json.dumps(installed))
        stored["metadata"]["annotations"] = {
            "meta.helm.sh/release-name": RELEASE,
            "meta.helm.sh/release-namespace": NAMESPACE,
        }
        api.objects[secret_path] = stored

        second = _render_against(helm, kubeconfig, "--is-upgrade")
        assert one(second, "Secret", TLS_SECRET)["data"] == installed["data"]
        ca_bundle = webhook_entry(second)["clientConfig"]["caBundle"]
        assert ca_bundle == installed["data"]["ca.crt"]

        # A Secret without the CA (e.g. replaced by hand) is regenerated, never half-reused.
        stored["data"] = {k: installed["data"][k] for k in ("tls.crt", "tls.key")}
        third = _render_against(helm, kubeconfig, "--is-upgrade")
        regenerated = one(third, "Secret", TLS_SECRET)["data"]
        assert regenerated["ca.crt"] != installed["data"]["ca.crt"]
        assert webhook_entry(third)["clientConfig"]["caBundle"] == regenerated["ca.crt"]
        _verify_signed_by(
            _load_cert(decode(regenerated["tls.crt"])), _load_cert(decode(regenerated["ca.crt"]))
        )

    # Plain `helm template` (no cluster) generates fresh material every time.
    assert one(render(helm), "Secret", TLS_SECRET)["data"] != installed["data"]


def test_cert_manager_mode(helm: str) -> None:
    objs = render(helm, ci="cert-manager")
    assert find(objs, "Secret") == []
    issuers = {o["metadata"]["name"]: o for o in find(objs, "Issuer")}
    assert issuers[f"{FULLNAME}-selfsigned"]["spec"] == {"selfSigned": {}}
    assert issuers[f"{FULLNAME}-ca"]["spec"] == {"ca": {"secretName": f"{FULLNAME}-ca"}}
    certs = {o["metadata"]["name"]: o for o in find(objs, "Certificate")}
    ca_cert = certs[f"{FULLNAME}-ca"]["spec"]
    assert ca_cert["isCA"] is True
    assert ca_cert["secretName"] == f"{FULLNAME}-ca"
    assert ca_cert["issuerRef"]["name"] == f"{FULLNAME}-selfsigned"
    serving = certs[FULLNAME]["spec"]
    assert serving["secretName"] == f"{FULLNAME}-cert-manager-tls"  # not Helm's: its own name
    assert serving["issuerRef"] == {
        "name": f"{FULLNAME}-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"{FULLNAME}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert serving["duration"] == "720h" and serving["renewBefore"] == "240h"
    assert "server auth" in serving["usages"]

    config = one(objs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{FULLNAME}"
    )
    assert "caBundle" not in webhook_entry(objs)["clientConfig"]
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": serving["secretName"]}} in volumes


def test_cert_manager_existing_issuer(helm: str) -> None:
    objs = render(
        helm,
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
        ci="cert-manager",
    )
    assert find(objs, "Issuer") == []
    certificate = one(objs, "Certificate")
    assert certificate["metadata"]["name"] == FULLNAME
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_existing_secret_mode(helm: str) -> None:
    objs = render(helm, ci="existing-secret")
    assert find(objs, "Secret") == [] and find(objs, "Certificate") == []
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-webhook-tls"}} in volumes
    ca_bundle = webhook_entry(objs)["clientConfig"]["caBundle"]
    expected_pem = yaml.safe_load(ci_file("existing-secret").read_text())["webhook"]["caBundle"]
    assert decode(ca_bundle).decode() == expected_pem
    assert _load_cert(decode(ca_bundle))
    annotations = one(objs, "MutatingWebhookConfiguration")["metadata"].get("annotations") or {}
    assert not annotations

    # An already base64-encoded bundle passes through unchanged.
    encoded = base64.b64encode(expected_pem.encode()).decode()
    objs = render(helm, f"webhook.caBundle={encoded}", ci="existing-secret")
    assert webhook_entry(objs)["clientConfig"]["caBundle"] == encoded


def test_existing_secret_mode_needs_ca_bundle_and_name(helm: str) -> None:
    assert "webhook.caBundle" in render_fails(helm, "tls.mode=existingSecret", "webhook.caBundle=")
    assert "tls.existingSecret.name" in render_fails(
        helm, "tls.mode=existingSecret", "webhook.caBundle=Zm9v"
    )


def test_openshift_mode(helm: str) -> None:
    objs = render(helm, ci="openshift")
    assert find(objs, "Secret") == [] and find(objs, "Certificate") == []
    service = one(objs, "Service")
    service_ca_secret = f"{FULLNAME}-service-ca-tls"  # not Helm's: its own name
    assert service["metadata"]["annotations"] == {
        "service.beta.openshift.io/serving-cert-secret-name": service_ca_secret
    }
    config = one(objs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {
        "service.beta.openshift.io/inject-cabundle": "true"
    }
    assert "caBundle" not in webhook_entry(objs)["clientConfig"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": service_ca_secret}} in pod["volumes"]
    # restricted-v2 assigns UID and fsGroup itself.
    for context in (pod["securityContext"], container(objs)["securityContext"]):
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context)


def test_url_mode(helm: str) -> None:
    objs = render(helm, ci="url-mode")
    kinds = {o["kind"] for o in objs}
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    }
    client = webhook_entry(objs)["clientConfig"]
    assert client["url"] == "https://127.0.0.1:23443/mutate"
    assert "service" not in client
    assert _load_cert(decode(client["caBundle"]))
    annotations = one(objs, "MutatingWebhookConfiguration")["metadata"].get("annotations") or {}
    assert not annotations


def test_url_and_deployment_combinations_are_validated(helm: str) -> None:
    assert "webhook.caBundle" in render_fails(helm, "webhook.caBundle=", ci="url-mode")
    assert "webhook.url" in render_fails(helm, "deployment.enabled=false")
    # url with an in-cluster Deployment keeps the chart's TLS objects and CA.
    objs = render(helm, "webhook.url=https://webhook.example.com/mutate")
    client = webhook_entry(objs)["clientConfig"]
    assert client["url"] == "https://webhook.example.com/mutate"
    assert client["caBundle"] == one(objs, "Secret", TLS_SECRET)["data"]["ca.crt"]


# --------------------------------------------------------------------------- config sources


def test_configmap_mode(helm: str) -> None:
    objs = render(helm, ci="configmap-mode")
    configmap = one(objs, "ConfigMap", "pod-identity-webhook")
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert json.loads(configmap["data"]["config"]) == {
        "default/my-app": {"RoleARN": "arn:aws:iam::111122223333:role/my-app"},
        "team-a/reporter": {
            "RoleARN": "arn:aws:iam::111122223333:role/team-a/reporter",
            "Audience": "sts.amazonaws.com",
            "UseRegionalSTS": True,
            "TokenExpiration": 3600,
        },
    }
    flags = flags_of(objs)
    assert flags["watch-config-map"] == "true"
    assert flags["namespace"] == NAMESPACE, "the webhook looks for the ConfigMap in --namespace"
    # ConfigMap managed elsewhere: RBAC and flag stay, the object goes.
    objs = render(helm, "watchConfigMap.create=false", ci="configmap-mode")
    assert find(objs, "ConfigMap") == []
    assert one(objs, "Role")


def test_container_credentials(helm: str) -> None:
    objs = render(helm, ci="container-credentials")
    configmap = one(objs, "ConfigMap", f"{FULLNAME}-container-credentials")
    assert json.loads(configmap["data"]["config.json"]) == {
        "identities": [
            {"namespace": "default", "serviceAccount": "pod-identity-agent-user"},
            {"namespace": "team-b", "serviceAccount": "billing"},
        ]
    }
    flags = flags_of(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in container(objs)["volumeMounts"] if m["name"] == "container-credentials")
    volume = next(v for v in pod["volumes"] if v["name"] == "container-credentials")
    assert volume == {
        "name": "container-credentials",
        "configMap": {"name": configmap["metadata"]["name"]},
    }
    assert "subPath" not in mount, "a subPath mount would never see ConfigMap updates"
    assert flags["watch-container-credentials-config"] == f"{mount['mountPath']}/config.json"
    assert flags["container-credentials-audience"] == "pods.eks.amazonaws.com"
    assert flags["container-credentials-full-uri"] == "http://169.254.170.23/v1/credentials"
    assert flags["container-credentials-token-mount-path"] == (
        "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
    )
    assert flags["container-credentials-token-volume-name"] == "eks-pod-identity-token"
    assert flags["container-credentials-token-path"] == "eks-pod-identity-token"

    objs = render(helm, "containerCredentials.existingConfigMap=my-ids", ci="container-credentials")
    assert find(objs, "ConfigMap") == []
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "container-credentials", "configMap": {"name": "my-ids"}} in volumes
    assert "identities" in render_fails(helm, "containerCredentials.enabled=true")


# --------------------------------------------------------------------------- extras


def test_network_policy_and_service_monitor(helm: str) -> None:
    objs = render(helm, ci="hardened")
    policy = one(objs, "NetworkPolicy", FULLNAME)
    assert selector_matches(policy["spec"]["podSelector"], pod_labels(objs))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r for r in rules}
    assert set(by_port) == {8443, 9999}
    assert "from" not in by_port[8443], "the API server's address is not known in advance"
    assert by_port[9999]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]

    monitor = one(objs, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objs, "Service")
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http" and endpoint["interval"] == "15s"

    egress = [{"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 443}]}]
    policy = one(
        render(
            helm, "networkPolicy.enabled=true", f"json:networkPolicy.egress={json.dumps(egress)}"
        ),
        "NetworkPolicy",
    )
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_optional_pod_settings(helm: str) -> None:
    objs = render(
        helm,
        "podSecurityContext.runAsUser=1001",
        "hostNetwork=true",
        "image.digest=sha256:" + "a" * 64,
        "imagePullSecrets[0].name=regcred",
        "serviceAccount.annotations.team=x",
        "podDisruptionBudget.maxUnavailable=1",
    )
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1001
    assert pod["securityContext"]["runAsNonRoot"] is True, "defaults merge with overrides"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert container(objs)["image"].endswith("@sha256:" + "a" * 64)
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert one(objs, "ServiceAccount")["metadata"]["annotations"] == {"team": "x"}
    pdb = one(objs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "bad",
    [
        "webhook.failurPolicy=Fail",  # typo'd key
        "replicaCount=3",  # key from other charts
        "config.tokenExpirationSeconds=600",  # nested typo
        "securityContext.readOnlyRootFileSystem=true",  # case typo in a securityContext
        "tls.selfSigned.validity=10",
        "watchConfigMap.entries.default/app.RoleArn=arn:aws:iam::111122223333:role/x",
    ],
)
def test_schema_rejects_unknown_keys(helm: str, bad: str) -> None:
    message = render_fails(helm, bad)
    assert "schema" in message.lower() or "additional" in message.lower(), message


@pytest.mark.parametrize(
    "bad",
    [
        "deployment.replicas=two",  # wrong type
        "config.tokenExpiration=soon",
        "config.stsRegionalEndpoint=yes",
        "webhook.failurePolicy=Sometimes",  # not in enum
        "webhook.timeoutSeconds=60",  # out of range
        "config.tlsMinVersion=1.4",
        "config.logFormat=xml",
        "tls.mode=letsEncrypt",
        'json:config.awsAccountId="12345"',  # a string of 5 digits
        "config.awsAccountId=1234567890123",  # 13 digits
        "webhook.url=http://plain.example.com/mutate",
    ],
)
def test_schema_rejects_wrong_types_and_values(helm: str, bad: str) -> None:
    message = render_fails(helm, bad)
    assert "schema" in message.lower() or "values don't meet" in message.lower(), message


def _walk_schema(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, child in node.items():
            yield from _walk_schema(child, f"{path}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _walk_schema(child, f"{path}[{i}]")


def test_schema_closes_every_defined_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _walk_schema(schema):
        # global is shared with parent charts, which put their own keys in it.
        if "properties" in node and path != "$.properties.global":
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_schema_covers_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} missing from the schema"
                check(child, node["properties"][key], f"{path}.{key}")

    check(values, schema, "values")


# --------------------------------------------------------------------------- NOTES.txt


@pytest.mark.parametrize("name", CI_NAMES)
def test_notes_render_with_verification_commands(helm: str, name: str, tmp_path: Path) -> None:
    """NOTES.txt is rendered through a copy of the chart, as a regular template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + notes + "\n{{- end -}}\n"
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        'kind: NotesUnderTest\ntext: {{ include "notes-under-test" . | toJson }}\n'
    )
    # As `helm install` renders it: able to look up the cluster, so the test hook is on.
    rendered = render(helm, "tests.enabled=true", ci=name, chart=chart)
    text = one(rendered, "NotesUnderTest")["text"]
    assert "kubectl" in text
    assert "AWS_ROLE_ARN" in text and "AWS_WEB_IDENTITY_TOKEN_FILE" in text
    assert "role-arn" in text
    if name != "url-mode":
        assert f"rollout status deployment/{FULLNAME}" in text
        assert f"helm test {RELEASE} -n {NAMESPACE}" in text
