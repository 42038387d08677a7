"""What a new user trips over (issue 19 §4), each tried as a new user would."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from webhook.cli import main

from .builders import ROLE, admission_review, container, pod

SA = {
    "apiVersion": "v1",
    "kind": "ServiceAccount",
    "metadata": {
        "name": "app",
        "namespace": "default",
        "annotations": {"eks.amazonaws.com/role-arn": ROLE},
    },
}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse
        code = int(exit.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def review_file(tmp_path: Path, name: str = "review.json", namespace: str = "default") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(admission_review(pod(container()), namespace=namespace)))
    return path


def objects_file(tmp_path: Path, *objects: dict[str, Any], name: str = "objects.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    return path


# -- a mistyped flag --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["replay", "--objcts", "x.yaml", "r.json"], '"--objects"'),
        (["serve", "--tls-min-verison=1.2"], '"--tls-min-version"'),
        (["audit", "--webhook-namespce=eks"], '"--webhook-namespace"'),
    ],
)
def test_a_mistyped_flag_is_one_line_with_a_suggestion_and_where_help_is(
    capsys: pytest.CaptureFixture[str], argv: list[str], suggestion: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    first, second = err.splitlines()
    assert first.startswith(f"pod-identity-webhook {argv[0]}: error: unrecognized arguments")
    assert first.endswith(f"did you mean {suggestion}?")
    assert second == f"See 'pod-identity-webhook {argv[0]} --help'."
    assert "usage:" not in err


def test_a_bad_value_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "replay", "-o", "yml", "r.json")
    assert code == 2 and len(err.splitlines()) == 2
    assert "argument -o/--output: invalid choice: 'yml'" in err


# -- certs generate -o json -------------------------------------------------------------------------


def test_certs_generate_takes_o_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys,
        "certs",
        "generate",
        "--service",
        "piw",
        "-n",
        "ns",
        "--out",
        str(tmp_path),
        "-o",
        "json",
        "--secret-manifest",
        "-",
    )
    assert code == 0 and err == ""
    result = json.loads(out)
    assert base64.b64decode(result["caBundle"]) == (tmp_path / "ca.crt").read_bytes()
    assert result["ca"]["cert"] == str(tmp_path / "ca.crt") and result["ca"]["origin"] == "new"
    assert "DNS:piw.ns.svc" in result["serving"]["names"]
    assert result["secret"]["manifest"]["kind"] == "Secret"
    assert result["secret"]["manifest"]["metadata"] == {"name": "piw-tls", "namespace": "ns"}


# -- -n/--namespace ----------------------------------------------------------------------------------


def test_replay_n_is_the_pods_namespace_as_in_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(
        tmp_path, SA, {**SA, "metadata": {**SA["metadata"], "namespace": "shop"}}
    )
    inputs = [str(review_file(tmp_path)), str(review_file(tmp_path, "shop.json", "shop"))]
    code, out, err = cli(capsys, "replay", "--objects", str(objects), "-n", "shop", *inputs)
    assert code == 0, err
    [line] = out.splitlines()
    assert json.loads(line)["response"]["patch"]
    assert "skipped 1 review(s) of pods in other namespaces" in err


def test_replay_n_with_no_review_in_scope_says_what_n_means(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(tmp_path, SA)
    code, _, err = cli(
        capsys, "replay", "--objects", str(objects), "-n", "eks", str(review_file(tmp_path))
    )
    assert code == 2
    assert "no review in that scope (the inputs hold 1 in default)" in err
    assert "--webhook-namespace" in err and "review.json" not in err


def test_replay_webhook_namespace_is_where_the_config_map_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "pod-identity-webhook", "namespace": "piw"},
        "data": {"config": json.dumps({"default/app": {"RoleARN": ROLE}})},
    }
    bare_sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}
    objects = objects_file(tmp_path, bare_sa, config_map)
    review = str(review_file(tmp_path))
    argv = ["replay", "--objects", str(objects), "--watch-config-map", review]
    _, out, _ = cli(capsys, *argv, "--webhook-namespace", "piw")
    assert "patch" in json.loads(out)["response"]
    _, out, _ = cli(capsys, *argv)  # default eks: no ConfigMap there
    assert "patch" not in json.loads(out)["response"]


@pytest.mark.parametrize(
    "command",
    [
        ["certs", "generate", "--service", "s"],
        [
            "trust-policy",
            "generate",
            "--account-id=111122223333",
            "--service-account=s",
            "--issuer=oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
        ],
    ],
)
def test_the_commands_that_name_a_namespace_take_n(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, *command, "-n", "Bad_NS")
    assert code == 2 and "unrecognized" not in err and "Bad_NS" in err


# -- --objects -------------------------------------------------------------------------------------


def test_a_mistyped_kind_in_objects_is_named_not_dropped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(tmp_path, {**SA, "kind": "ServiceAcount"}, {**SA, "kind": "Secret"})
    code, _, err = cli(capsys, "replay", "--objects", str(objects), str(review_file(tmp_path)))
    assert code == 0
    assert (
        f"--objects {objects}: object 1 (default/app): kind 'ServiceAcount' skipped, only "
        'ServiceAccount and ConfigMap are read; did you mean "ServiceAccount"?'
    ) in err
    assert f"--objects {objects}: object 2 (default/app): kind 'Secret' skipped" in err
    assert "not in --objects" in err and "cache" not in err


def test_objects_json_with_surrogate_pair_escapes_is_read_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sa = {
        **SA,
        "metadata": {
            **SA["metadata"],
            "annotations": {**SA["metadata"]["annotations"], "owner": "team 😀"},
        },
    }
    objects = objects_file(tmp_path, sa)
    assert "\\ud83d\\ude00" in objects.read_text()  # json.dumps's ensure_ascii, as jq -a
    code, out, err = cli(capsys, "replay", "--objects", str(objects), str(review_file(tmp_path)))
    assert code == 0, err
    assert "patch" in json.loads(out)["response"]


def test_a_lone_surrogate_in_a_review_is_a_clean_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(tmp_path, SA)
    lone = tmp_path / "lone.json"
    review = admission_review(pod(container(), metadata={"name": "p", "annotations": {"x": "X"}}))
    lone.write_text(json.dumps(review).replace('"X"', '"\\ud800"'))
    good = review_file(tmp_path)
    code, out, err = cli(capsys, "replay", "--objects", str(objects), str(lone), str(good))
    assert code == 2
    assert len(out.splitlines()) == 1  # the good review is still replayed
    assert f"{lone}: default/p: a string holds a lone UTF-16 surrogate escape" in err
    assert "Traceback" not in err and "TypeError" not in err


# -- serve: flags first, one line per failure ---------------------------------------------------------


@pytest.fixture()
def tls_flags(tmp_path: Path) -> list[str]:
    from tests.serverproc import make_certs

    files = make_certs(tmp_path)
    return [f"--tls-cert={files.tls_cert}", f"--tls-key={files.tls_key}"]


def test_serve_checks_tls_flags_before_contacting_the_cluster(
    tls_flags: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = cli(capsys, "serve", *tls_flags, "--tls-min-version", "1.5", "--port=1")
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("pod-identity-webhook serve: error: unsupported --tls-min-version '1.5'")


def test_serve_says_a_missing_kubeconfig_does_not_exist(
    tls_flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent-kubeconfig"
    code, _, err = cli(capsys, "serve", *tls_flags, f"--kubeconfig={absent}", "--port=1")
    assert code == 2
    assert (
        err
        == f"pod-identity-webhook serve: error: --kubeconfig {absent}: the file does not exist\n"
    )


def test_audit_says_a_missing_kubeconfig_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent-kubeconfig"
    code, _, err = cli(capsys, "audit", f"--kubeconfig={absent}")
    assert code == 2
    assert f"--kubeconfig {absent}: the file does not exist" in err
    assert "Invalid kube-config" not in err


def test_a_port_in_use_is_one_serve_error_line_with_the_port_hint(
    tls_flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    objects = objects_file(tmp_path, SA)
    with socket.socket() as taken, socket.socket() as other:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other.bind(("127.0.0.1", 0))
        metrics_port = other.getsockname()[1]
        other.close()  # free: only --port is taken
        code, _, err = cli(
            capsys,
            "serve",
            *tls_flags,
            "--bind-address=127.0.0.1",
            f"--port={port}",
            f"--metrics-port={metrics_port}",
            f"--objects={objects}",
        )
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith(f"pod-identity-webhook serve: error: cannot listen on 127.0.0.1:{port}")
    assert "in use" in line and "make run PORT=" in line


# -- make run --------------------------------------------------------------------------------------


def test_make_run_certificates_print_the_ca_bundle_they_promise(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {"CERTS_OUT": str(tmp_path / "out"), "PY": sys.executable, "PATH": "/usr/bin:/bin"}
    for _ in ("new", "kept"):
        done = subprocess.run(
            ["bash", str(repo / "certs" / "dev-localhost.sh")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        last = done.stdout.splitlines()[-1]
        ca = (tmp_path / "out" / "ca.crt").read_bytes()
        assert last == f"caBundle  {base64.b64encode(ca).decode()}"


# -- replay's output when checking, its --help, its report ------------------------------------------


def test_expect_prints_the_differences_and_the_summary_not_every_review(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(tmp_path, SA)
    inputs = [str(review_file(tmp_path, f"r{i}.json")) for i in range(3)]
    expected = tmp_path / "expected"
    base = ["replay", "--objects", str(objects), "--expect", str(expected)]
    assert cli(capsys, *base, "--update-expected", *inputs)[0] == 0
    (expected / "r1.json").write_text('{"changed": true}\n')
    code, out, err = cli(capsys, *base, *inputs)
    assert code == 1
    assert out == ""  # no review's JSON
    assert "DIFFERENT default/pod-1" in err and err.count("DIFFERENT") == 1
    assert "replay: 2 of 3 matched" in err
    code, out, _ = cli(capsys, *base, "-o", "response", *inputs)  # asked for: printed
    assert len(out.splitlines()) == 3


def test_replay_help_does_not_list_glog_compatibility_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "replay", "--help")
    assert code == 0 and "--objects" in out and "-v LEVEL" in out
    for flag in ("--add_dir_header", "--one_output", "--logtostderr", "--skip_headers"):
        assert flag not in out


def test_the_html_report_says_how_it_was_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = objects_file(tmp_path, SA)
    review = review_file(tmp_path)
    report = tmp_path / "report.html"
    argv = ["replay", "--objects", str(objects), "--token-audience=example.com", "-n", "default"]
    code, _, err = cli(capsys, *argv, "--report", str(report), "--one_output", str(review))
    assert code == 0, err
    html = report.read_text()
    provenance = html.split('<details open id="provenance">', 1)[1].split("</details>", 1)[0]
    import hashlib

    import webhook

    digest = hashlib.sha256(review.read_bytes()).hexdigest()
    assert f"pod-identity-webhook replay --objects {objects}" in provenance
    assert f"--report {report} --one_output {review}" in provenance
    assert f"{review} ({review.stat().st_size} bytes, sha256 {digest})" in provenance
    assert str(objects) in provenance and "--token-audience=example.com" in provenance
    assert "--namespace=default" in provenance
    assert f"pod-identity-webhook {webhook.__version__}" in provenance
    assert re.search(r"<th>time</th><td>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ</td>", provenance)
