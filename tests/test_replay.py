"""`pod-identity-webhook replay`: offline, through the server's own pipeline."""

import base64
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook.cli import main

from .builders import ROLE, admission_review, pod

CORPUS = Path(__file__).parent / "corpus" / "cases"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())


@pytest.fixture()
def objects(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: ServiceAccount, metadata: {name: app, namespace: default, "
        f"annotations: {{eks.amazonaws.com/role-arn: '{ROLE}'}}}}}}\n"
    )
    return path


def write_review(directory: Path, name: str, body: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(json.dumps(body))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_has_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case_matches_its_expected_response(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in (case / "args").read_text().splitlines() if a]
    cwd = os.getcwd()
    os.chdir(case)
    try:
        code, _, err = run(
            capsys, *args, "--objects", "objects.yaml", "--expect", "expected", "review.json"
        )
    finally:
        os.chdir(cwd)
    assert code == 0, err


def test_corpus_files_are_generated_from_the_case_table(tmp_path: Path) -> None:
    from tests.corpus.generate import generate

    for directory in generate(tmp_path / "cases"):
        committed = CORPUS / directory.name
        for file in directory.iterdir():
            assert (committed / file.name).read_bytes() == file.read_bytes(), (
                f"{committed / file.name} is stale"
            )


def test_default_output_is_one_response_per_review(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_review(tmp_path, "a.json", admission_review(pod(), uid="a"))
    b = write_review(tmp_path, "b.json", admission_review(pod(sa="other"), uid="b"))
    code, out, _ = run(capsys, "--objects", str(objects), str(a), str(b))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["response"]["uid"] for r in lines] == ["a", "b"]
    assert "patch" in lines[0]["response"] and "patch" not in lines[1]["response"]


def test_pod_output_prints_mutated_pods(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    _, out, _ = run(capsys, "--objects", str(objects), "--output", "pod", str(review))
    mutated = json.loads(out)
    assert mutated["spec"]["volumes"][0]["name"] == "aws-iam-token"
    assert {"name": "AWS_ROLE_ARN", "value": ROLE} in mutated["spec"]["containers"][0]["env"]


def test_diff_output_is_a_readable_unified_diff(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    _, out, _ = run(capsys, "--objects", str(objects), "--output", "diff", str(review))
    assert out.startswith("--- default/pod-1 (original)\n+++ default/pod-1 (mutated)\n")
    assert "+    - name: AWS_ROLE_ARN\n" in out or "+  - name: AWS_ROLE_ARN\n" in out.replace(
        "    - name", "  - name"
    )


def test_directories_yaml_and_stdin_are_inputs(
    tmp_path: Path,
    objects: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import sys

    import yaml

    folder = tmp_path / "reviews"
    folder.mkdir()
    write_review(folder, "1.json", admission_review(pod(), uid="one"))
    (folder / "2.yaml").write_text(yaml.safe_dump(admission_review(pod(), uid="two")))
    monkeypatch.setattr(
        sys,
        "stdin",
        io.TextIOWrapper(io.BytesIO(orjson.dumps(admission_review(pod(), uid="three")))),
    )
    _, out, _ = run(capsys, "--objects", str(objects), str(folder), "-")
    assert [json.loads(line)["response"]["uid"] for line in out.splitlines()] == [
        "one",
        "two",
        "three",
    ]


def test_audit_logs_replay_pod_create_events(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def event(
        verb: str, resource: str, audit_id: str, subresource: str | None = None
    ) -> dict[str, Any]:
        ref = {"resource": resource, "namespace": "default", "apiVersion": "v1"}
        if subresource:
            ref["subresource"] = subresource
        return {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "auditID": audit_id,
            "verb": verb,
            "objectRef": ref,
            "requestObject": pod(),
        }

    log = tmp_path / "audit.log"
    events = [
        event("create", "pods", "e1"),
        event("update", "pods", "e2"),
        event("create", "deployments", "e3"),
        event("create", "pods", "e4", "binding"),
        event("create", "pods", "e5"),
    ]
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    _, out, _ = run(capsys, "--objects", str(objects), str(log))
    responses = [json.loads(line)["response"] for line in out.splitlines()]
    assert [r["uid"] for r in responses] == ["e1", "e5"]
    assert all("patch" in r for r in responses)


def test_expect_reports_differences_and_exits_nonzero(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "case.json", admission_review(pod()))
    expected = tmp_path / "expected"
    assert (
        run(
            capsys,
            "--objects",
            str(objects),
            "--expect",
            str(expected),
            "--update-expected",
            str(review),
        )[0]
        == 0
    )
    assert run(capsys, "--objects", str(objects), "--expect", str(expected), str(review))[0] == 0
    code, _, err = run(
        capsys,
        "--objects",
        str(objects),
        "--aws-default-region=eu-west-1",
        "--expect",
        str(expected),
        str(review),
    )
    assert code == 1
    assert f"DIFFERENT default/pod-1 ({expected / 'case.json'})" in err
    assert "AWS_DEFAULT_REGION" in err  # the diff shows decoded patches


def test_expect_without_a_stored_response_fails(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "new.json", admission_review(pod()))
    code, _, err = run(
        capsys, "--objects", str(objects), "--expect", str(tmp_path / "none"), str(review)
    )
    assert code == 1 and "MISSING default/pod-1: no " in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not: [valid", "neither JSON"),
        ('{"kind": "Widget"}', "input.json: the input is a Widget, not an AdmissionReview"),
        ('{"kind": "Pod"}', "input.json: the input: Pod default/? has no spec"),
        ("null", "input.json: the input is null, not an AdmissionReview"),
        ("kind: Widget\n---\nkind: Service\n", "input.json: document 1 is a Widget, not an"),
        ("", "input.json: empty"),
    ],
)
def test_bad_inputs_give_clear_errors(
    tmp_path: Path,
    objects: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "--objects", str(objects), str(path))
    assert code == 2 and message in err and "Traceback" not in err
    assert out == ""  # nothing was answered for it


def test_a_non_review_input_is_an_error_but_the_others_are_replayed(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_review(tmp_path, "good.json", admission_review(pod()))
    bad = write_review(tmp_path, "widget.json", {"kind": "Widget"})
    code, out, err = run(capsys, "--objects", str(objects), str(bad), str(good))
    assert code == 2
    assert f"error: {bad}: the input is a Widget, not an AdmissionReview" in err
    assert len(out.splitlines()) == 1 and "patch" in json.loads(out)["response"]


def test_without_objects_it_warns_that_nothing_is_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    code, _, err = run(capsys, str(review))
    assert code == 0
    assert "warning: no --objects: no ServiceAccount is known" in err
    assert "no review was mutated: 1x ServiceAccount default/app not in --objects" in err


def test_a_config_map_without_watch_config_map_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pod-identity-webhook, namespace: eks}\n"
        f'data: {{config: \'{{"default/app": {{"RoleARN": "{ROLE}"}}}}\'}}\n'
    )
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    _, _, err = run(capsys, "--objects", str(objects), str(review))
    assert "eks/pod-identity-webhook ConfigMap, but it is ignored without --watch-config-map" in err
    _, out, err = run(capsys, "--objects", str(objects), "--watch-config-map", str(review))
    assert "ConfigMap" not in err and "patch" in json.loads(out)["response"]


def test_update_expected_says_what_it_wrote(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    write_review(folder, "a.json", admission_review(pod(), uid="a"))
    write_review(folder, "b.json", admission_review(pod(sa="other"), uid="b"))
    golden = tmp_path / "golden"
    update = ("--objects", str(objects), "--expect", str(golden), "--update-expected")
    _, _, err = run(capsys, *update, str(folder))
    assert (
        f"replay: wrote 2 expected response(s) to {golden} (2 new, 0 changed, 0 unchanged)" in err
    )
    _, _, err = run(capsys, *update, "--aws-default-region=eu-west-1", str(folder))
    assert "(0 new, 1 changed, 1 unchanged)" in err  # b has no role: its answer is the same


def audit_event(audit_id: str, name: str, verb: str = "create") -> dict[str, Any]:
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": audit_id,
        "verb": verb,
        "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
        "requestObject": pod(metadata={"name": name}),
    }


def test_a_truncated_last_audit_line_is_reported_and_the_rest_replayed(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps(audit_event(f"id-{i}", f"web-{i}")) for i in range(3)]
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n\n" + lines[0][:40])  # line 5, cut mid-write
    code, out, err = run(capsys, "--objects", str(objects), str(log))
    assert code == 0
    assert f"warning: {log}: line 5 is not complete JSON" in err
    assert [json.loads(o)["response"]["uid"] for o in out.splitlines()] == ["id-0", "id-1", "id-2"]


def test_a_broken_audit_line_in_the_middle_is_an_error_with_its_number(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.dumps(audit_event("id-1", "web-1"))
    log = tmp_path / "audit.log"
    log.write_text(f"{good}\n{{oops\n{good}\n")
    code, out, err = run(capsys, "--objects", str(objects), str(log))
    assert code == 2 and f"error: {log}: line 2 is not JSON" in err
    assert len(out.splitlines()) == 2


def test_audit_cases_are_named_by_pod_and_audit_id(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(json.dumps(audit_event(i, n)) for i, n in (("e1", "web-1"), ("e2", "web-2")))
    )
    _, out, _ = run(capsys, "--objects", str(objects), "-o", "diff", str(log))
    assert "--- default/web-1 (auditID e1) (original)" in out
    assert "--- default/web-2 (auditID e2) (original)" in out
    golden = tmp_path / "golden"
    run(capsys, "--objects", str(objects), "--expect", str(golden), "--update-expected", str(log))
    assert sorted(p.name for p in (golden / "audit").iterdir()) == ["e1.json", "e2.json"]


def test_an_audit_log_without_pod_creates_says_why(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.log"
    event = audit_event("e1", "web-1")
    del event["requestObject"]  # logged at level Metadata
    log.write_text(json.dumps(event) + "\n")
    code, _, err = run(capsys, "--objects", str(objects), str(log))
    assert code == 2
    assert "1 audit event(s), none a pod create with its requestObject" in err
    assert "level Request or RequestResponse" in err


def test_bad_objects_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "objects.yaml"
    bad.write_text("a: [unclosed")
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    code, _, err = run(capsys, "--objects", str(bad), str(review))
    assert code == 2 and "objects.yaml" in err


def test_replay_uses_the_servers_pipeline() -> None:
    import inspect

    from webhook.cli import replay
    from webhook.server import app

    # Both entry points call the same parse and finish functions of webhook.review.
    assert "review(case.body, store, store.settings)" in inspect.getsource(replay.run)
    assert "parse_review(body)" in inspect.getsource(app.MutateHandler.review)
    assert "finish_review(" in inspect.getsource(app.MutateHandler.review)
    assert "finish_review(" in inspect.getsource(app.MutateHandler._review_later)


def test_patch_in_response_is_base64_json(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = write_review(tmp_path, "r.json", admission_review(pod()))
    _, out, _ = run(capsys, "--objects", str(objects), str(review))
    ops = json.loads(base64.b64decode(json.loads(out)["response"]["patch"]))
    assert all(op["op"] == "add" for op in ops)
