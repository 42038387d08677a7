"""`replay` on manifests: each Pod or workload becomes the pod CREATE its controller would send.

Golden files in tests/replay_golden: `manifests/` (helm-template-like input), `requests/` (the
admission request built for each workload, reviewed by hand against kube-controller-manager
v1.37's code), `expected/plain` (our responses) and `expected/selected` (with
--webhook-config). After a deliberate change, regenerate and review the diff:
`python -m tests.test_replay_manifests`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from webhook.cli import main
from webhook.cli.replay_inputs import read_cases
from webhook.toolkit.manifests import ManifestError, pod_review

from .chart_render import CHART, run_helm

GOLDEN = Path(__file__).parent / "replay_golden"
MANIFESTS = GOLDEN / "manifests"
OBJECTS = GOLDEN / "objects.yaml"
WEBHOOK_CONFIG = GOLDEN / "webhook-config.yaml"


def built_requests() -> dict[str, dict[str, Any]]:
    errors: list[str] = []
    found = {
        case.key.split("/", 1)[1]: orjson.loads(case.body)["request"]
        for case in read_cases([str(MANIFESTS)], errors.append, errors.append)
    }
    assert errors == []
    return found


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_workload_kind_becomes_the_request_its_controller_sends() -> None:
    built = built_requests()
    golden = {p.stem: yaml.safe_load(p.read_text()) for p in (GOLDEN / "requests").glob("*.yaml")}
    assert sorted(built) == sorted(golden)
    for key, request in built.items():
        assert request == golden[key], f"{key} differs from requests/{key}.yaml"


def test_pod_names_and_owners_are_what_the_controllers_set() -> None:
    pods = {key: request["object"]["metadata"] for key, request in built_requests().items()}
    deployment = pods["deployment-shop-web"]
    template_hash = deployment["labels"]["pod-template-hash"]
    assert deployment["generateName"] == f"web-{template_hash}-"
    assert deployment["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert deployment["ownerReferences"][0]["name"] == f"web-{template_hash}"
    assert pods["statefulset-shop-db"]["name"] == "db-0"
    assert pods["daemonset-shop-agent"]["generateName"] == "agent-"
    assert pods["replicaset-legacy-old-web"]["generateName"] == "old-web-"
    assert pods["job-shop-migrate"]["generateName"] == "migrate-0-"  # Indexed: index 0
    # 2026-01-01T00:00Z in minutes: the CronJob's Job is named after its scheduled time.
    assert pods["cronjob-shop-report"]["generateName"] == "report-29453760-"
    assert pods["pod-default-canary-"]["generateName"] == "canary-"


def test_generated_names_reach_admission_without_a_name() -> None:
    requests = built_requests()
    assert requests["deployment-shop-web"]["name"] == ""
    assert requests["statefulset-shop-db"]["name"] == "db-0"


def test_the_service_account_is_defaulted_as_admission_does_before_webhooks() -> None:
    requests = built_requests()
    assert requests["daemonset-shop-agent"]["object"]["spec"]["serviceAccountName"] == "web"
    assert requests["pod-default-debug"]["object"]["spec"]["serviceAccountName"] == "default"


def test_namespace_comes_from_the_object_then_the_flag() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    assert pod_review(pod, "fallback").review["request"]["namespace"] == "fallback"
    placed = {**pod, "metadata": {"name": "p", "namespace": "mine"}}
    assert pod_review(placed, "fallback").review["request"]["namespace"] == "mine"


def test_a_cronjob_without_creation_time_is_named_after_now() -> None:
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
    }
    now = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    built = pod_review(cronjob, "default", now).review["request"]["object"]
    assert built["metadata"]["generateName"] == f"c-{int(now.timestamp()) // 60}-"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kind": "Deployment", "metadata": {}}, "a Deployment without metadata.name"),
        (
            {"kind": "Job", "metadata": {"name": "j"}, "spec": {}},
            "Job default/j has no pod template spec",
        ),
        ({"kind": "Pod", "metadata": {"name": "p"}}, "Pod default/p has no spec"),
    ],
)
def test_unreadable_workloads_are_named(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        pod_review(document, "default")


def test_responses_match_the_golden_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = replay(
        capsys,
        "--objects",
        str(OBJECTS),
        "--expect",
        str(GOLDEN / "expected" / "plain"),
        str(MANIFESTS),
    )
    assert code == 0, err
    assert "8 of 8 matched" in err


def test_objects_without_a_pod_are_skipped_and_said_so_when_nothing_else_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = tmp_path / "svc.yaml"
    only.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
    )
    code, out, err = replay(capsys, "--objects", str(OBJECTS), str(only))
    assert out == ""
    assert "no pod or workload, only objects that hold no pod (1 ConfigMap, 1 Service)" in err
    assert code == 2  # no review at all is still a usage error


def test_helm_template_output_on_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO((MANIFESTS / "workloads.yaml").read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = replay(capsys, "--objects", str(OBJECTS), "-o", "pod", "-")
    assert code == 0, err
    pods = [json.loads(line) for line in out.splitlines()]
    assert len(pods) == 8
    web = next(p for p in pods if p["metadata"].get("generateName", "").startswith("web-"))
    env = {e["name"]: e["value"] for e in web["spec"]["containers"][0]["env"]}
    assert env["AWS_ROLE_ARN"] == "arn:aws:iam::111122223333:role/web"


def test_manifest_namespace_flag_places_objects_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {serviceAccountName: web, containers: [{name: c, image: i}]}\n"
    )
    code, out, _ = replay(
        capsys, "--objects", str(OBJECTS), "--manifest-namespace", "shop", "-o", "pod", str(pod)
    )
    assert code == 0
    mutated = json.loads(out)
    assert mutated["metadata"]["namespace"] == "shop"
    assert "AWS_ROLE_ARN" in json.dumps(mutated)


# -- a real chart, through `helm template` ---------------------------------------------------------


def _helm_template(helm_binary: str, *sets: str) -> str:
    args = ["template", "piw", str(CHART), "--namespace", "piw-system"]
    for value in sets:
        args += ["--set", value]
    proc = run_helm(helm_binary, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_helm_template_of_the_chart_piped_into_replay(helm: str, tmp_path: Path) -> None:
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(
        _helm_template(helm, "webhook.namespaceSelector.excludeReleaseNamespace=false")
    )
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: piw-pod-identity-webhook\n"
        "  namespace: piw-system\n  annotations: {eks.amazonaws.com/role-arn: 'arn:aws:iam::1:role/r'}\n"
    )
    command = [
        sys.executable,
        "-m",
        "webhook",
        "replay",
        "--objects",
        str(objects),
        "-o",
        "diff",
        "-",
    ]
    plain = subprocess.run(
        command, input=rendered.read_text(), capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    assert "(Deployment piw-system/piw-pod-identity-webhook) (mutated)" in plain.stdout
    assert "+    - name: AWS_ROLE_ARN" in plain.stdout
    # The chart's own objectSelector keeps the webhook's pods away from itself.
    selected = subprocess.run(
        [*command[:-1], "--webhook-config", str(rendered), "-"],
        input=rendered.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert selected.returncode == 0, selected.stderr
    webhook_pod = next(
        line
        for line in selected.stdout.splitlines()
        if "(Deployment piw-system/piw-pod-identity-webhook)" in line
    )
    assert webhook_pod.startswith("# piw-system/piw-pod-identity-webhook-")
    assert webhook_pod.endswith("not sent to the webhook: objectSelector")


def regenerate() -> None:
    """Rewrite requests/ and expected/ from the current code; review `git diff` afterwards."""
    requests = GOLDEN / "requests"
    requests.mkdir(exist_ok=True)
    for key, request in built_requests().items():
        (requests / f"{key}.yaml").write_text(yaml.safe_dump(request, sort_keys=False))
    base = ["replay", "--objects", str(OBJECTS), "--update-expected", "--expect"]
    main([*base, str(GOLDEN / "expected" / "plain"), str(MANIFESTS)])
    config = ["--webhook-config", str(WEBHOOK_CONFIG)]
    main([*base, str(GOLDEN / "expected" / "selected"), *config, str(MANIFESTS)])


if __name__ == "__main__":
    regenerate()


def test_the_charts_match_conditions_are_evaluated_as_cel(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "webhook:\n  matchConditions:\n  - name: not-openshift\n"
        "    expression: '!request.namespace.startsWith(\"openshift-\")'\n"
    )
    proc = run_helm(
        helm, "template", "piw", str(CHART), "--namespace", "piw-system", "-f", str(values)
    )
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "chart.yaml"
    config.write_text(proc.stdout)
    pods = tmp_path / "pods.yaml"
    pods.write_text(
        "".join(
            f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: {ns}}}\n"
            "spec: {containers: [{name: c, image: i}]}\n"
            for ns in ("openshift-monitoring", "shop")
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "replay",
            "--webhook-config",
            str(config),
            "-o",
            "diff",
            str(pods),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "# openshift-monitoring/p (Pod openshift-monitoring/p): not sent to the webhook: matchConditions (not-openshift)"
        in result.stdout
    )
    assert "# shop/p (Pod shop/p): unchanged" in result.stdout  # sent; no ServiceAccount known
