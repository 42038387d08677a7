"""`replay --against URL`: each review also goes to another webhook over HTTP(S); both answers
are applied and the pods compared, with every difference classified."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook.cli import main
from webhook.sources.store import IdentityStore

from .builders import ROLE, admission_review, pod, respond, store_with
from .serverproc import make_certs

Answer = Callable[[dict[str, Any]], tuple[int, Any]]
V1BETA1 = "admission.k8s.io/v1beta1"


class OtherWebhook:
    """A loopback webhook whose answer to each review the test chooses."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.received.append(review)
                status, body = owner.answer(review)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"

    def use_tls(self, directory: Path) -> Path:
        files = make_certs(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.tls_cert, files.tls_key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https"
        return files.ca_cert

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/mutate"


@pytest.fixture()
def store() -> IdentityStore:
    return store_with(app={"eks.amazonaws.com/role-arn": ROLE})


@pytest.fixture()
def other(store: IdentityStore) -> Iterator[OtherWebhook]:
    webhook = OtherWebhook(lambda review: (200, respond(review, store)))
    thread = threading.Thread(target=webhook.server.serve_forever, daemon=True)
    thread.start()
    yield webhook
    webhook.server.shutdown()
    webhook.server.server_close()


@pytest.fixture()
def objects(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: ServiceAccount, metadata: {name: app, namespace: default, "
        f"annotations: {{eks.amazonaws.com/role-arn: '{ROLE}'}}}}}}\n"
    )
    return path


def reviews(directory: Path, *pods: dict[str, Any]) -> list[str]:
    paths = []
    for index, p in enumerate(pods):
        path = directory / f"review-{index}.json"
        path.write_text(json.dumps(admission_review(p, uid=f"uid-{index}")))
        paths.append(str(path))
    return paths


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def edit_patch(answer: dict[str, Any], edit: Callable[[list[Any]], None]) -> dict[str, Any]:
    operations = orjson.loads(base64.b64decode(answer["response"]["patch"]))
    edit(operations)
    answer["response"]["patch"] = base64.b64encode(orjson.dumps(operations)).decode()
    return answer


def test_a_webhook_that_answers_as_we_do_is_identical_on_every_review(
    other: OtherWebhook, objects: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = reviews(tmp_path, pod(), pod(sa="unknown"))
    code, _, err = replay(capsys, "--objects", str(objects), "--against", other.url, *files)
    assert code == 0, err
    assert err.count("IDENTICAL default/pod-1") == 2
    assert f"against {other.url}: 2 identical, 0 differ as documented, 0 differ" in err


def test_a_v1beta1_only_webhook_is_sent_v1beta1_reviews_after_its_first_answer(
    other: OtherWebhook,
    store: IdentityStore,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def upstream_like(review: dict[str, Any]) -> tuple[int, Any]:
        answer = respond(review, store)
        return 200, {"response": answer["response"]}  # no apiVersion/kind, as v0.6.17

    other.answer = upstream_like
    files = reviews(tmp_path, pod(), pod())
    code, _, err = replay(capsys, "--objects", str(objects), "--against", other.url, *files)
    assert code == 0, err
    assert [r["apiVersion"] for r in other.received] == [
        "admission.k8s.io/v1",
        V1BETA1,
        V1BETA1,
    ]
    assert "answers v1 reviews without apiVersion/kind" in err
    assert err.count("IDENTICAL") == 2


def test_with_a_fixed_v1_version_an_answer_without_apiversion_is_an_error(
    other: OtherWebhook,
    store: IdentityStore,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other.answer = lambda review: (200, {"response": respond(review, store)["response"]})
    code, _, err = replay(
        capsys,
        "--objects",
        str(objects),
        "--against",
        other.url,
        "--against-version=v1",
        *reviews(tmp_path, pod()),
    )
    assert code == 1
    assert "ERROR default/pod-1: --against: answered a v1 review without apiVersion/kind" in err


def test_an_undocumented_difference_is_shown_by_structure_and_exits_1(
    other: OtherWebhook,
    store: IdentityStore,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def extra_env(operations: list[Any]) -> None:
        for op in operations:
            if op["path"].endswith("/env"):
                op["value"].append({"name": "EXTRA", "value": "1"})

    other.answer = lambda review: (200, edit_patch(respond(review, store), extra_env))
    code, _, err = replay(
        capsys, "--objects", str(objects), "--against", other.url, *reviews(tmp_path, pod())
    )
    assert code == 1
    assert "DIFFERS default/pod-1:" in err
    assert "--- default/pod-1 (--against)\n+++ default/pod-1 (ours)\n" in err
    assert "@@ spec.containers[app].env[EXTRA]\n-name: EXTRA\n-value: '1'\n" in err
    assert "image" not in err.split("DIFFERS", 1)[1]  # unchanged fields are not shown
    assert "0 differ as documented, 1 differ, 0 error(s)" in err


def test_a_documented_difference_names_the_readme_row_and_exits_0(
    other: OtherWebhook,
    store: IdentityStore,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    huge = 2**32 + 100

    def pass_it_on(operations: list[Any]) -> None:  # what upstream does with the annotation
        for op in operations:
            for volume in op["value"] if op["path"] == "/spec/volumes" else []:
                volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] = huge

    other.answer = lambda review: (200, edit_patch(respond(review, store), pass_it_on))
    annotated = pod(
        metadata={"name": "pod-1", "annotations": {"eks.amazonaws.com/token-expiration": str(huge)}}
    )
    code, _, err = replay(
        capsys, "--objects", str(objects), "--against", other.url, *reviews(tmp_path, annotated)
    )
    assert code == 0, err
    assert (
        "DOCUMENTED default/pod-1: differs as documented: expiration-above-2^32 "
        "(Token expirations above 2^32 s)"
    ) in err


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda review: (500, b"boom"), "HTTP 500: boom"),
        (lambda review: (200, b"<html>"), "the answer is not JSON"),
        (
            lambda review: (
                200,
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": "other", "allowed": True},
                },
            ),
            "the answer's uid 'other' is not the request's",
        ),
    ],
    ids=["http-500", "not-json", "wrong-uid"],
)
def test_an_answer_the_api_server_would_not_take_is_an_error_and_exits_1(
    answer: Answer,
    message: str,
    other: OtherWebhook,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other.answer = answer
    code, _, err = replay(
        capsys, "--objects", str(objects), "--against", other.url, *reviews(tmp_path, pod())
    )
    assert code == 1
    assert f"ERROR default/pod-1: --against: {message}" in err


def test_json_and_the_report_carry_the_verdict_and_the_other_webhooks_warnings(
    other: OtherWebhook,
    store: IdentityStore,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def warn(review: dict[str, Any]) -> tuple[int, Any]:
        answer = respond(review, store)
        answer["response"]["warnings"] = ["other <webhook> says hello"]
        return 200, answer

    other.answer = warn
    page = tmp_path / "report.html"
    code, out, _ = replay(
        capsys,
        "--objects",
        str(objects),
        "--against",
        other.url,
        f"--report={page}",
        "-o",
        "json",
        *reviews(tmp_path, pod()),
    )
    assert code == 0
    document = json.loads(out)
    assert document["against"] == {
        "url": other.url,
        "verdicts": {"identical": 1, "documented": 0, "differs": 0, "error": 0},
    }
    assert document["cases"][0]["against"] == {
        "verdict": "identical",
        "documented": [],
        "detail": "",
        "warnings": ["other <webhook> says hello"],
    }
    html = page.read_text()
    assert "<li>other &lt;webhook&gt; says hello</li>" in html
    assert '<td data-verdict="identical">1</td>' in html


def test_https_with_against_ca_verifies_the_other_webhook(
    other: OtherWebhook, objects: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = other.use_tls(tmp_path)
    files = reviews(tmp_path, pod())
    code, _, err = replay(
        capsys, "--objects", str(objects), "--against", other.url, f"--against-ca={ca}", *files
    )
    assert code == 0, err
    assert "IDENTICAL default/pod-1" in err
    two = reviews(tmp_path, pod(), pod())
    code, _, err = replay(capsys, "--objects", str(objects), "--against", other.url, *two)
    assert code == 1
    assert err.count("CERTIFICATE_VERIFY_FAILED") == 2
    hint = "certificate is not from a CA this machine trusts, and no --against-ca was given"
    assert err.count(hint) == 1 and "--against-ca <(kubectl get mutatingwebhookconfiguration" in err


@pytest.mark.parametrize(
    ("name", "verdict"),
    [("localhost", "IDENTICAL default/pod-1"), ("svc.example", "Hostname mismatch")],
)
def test_against_server_name_is_the_name_the_certificate_must_be_for(
    name: str,
    verdict: str,
    other: OtherWebhook,
    objects: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = other.use_tls(tmp_path)  # for localhost and 127.0.0.1
    _, _, err = replay(
        capsys,
        "--objects",
        str(objects),
        f"--against={other.url}",
        f"--against-ca={ca}",
        f"--against-server-name={name}",
        *reviews(tmp_path, pod()),
    )
    assert verdict in err


def test_against_flags_are_checked_before_anything_is_sent(
    objects: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = reviews(tmp_path, pod())
    code, _, err = replay(capsys, "--objects", str(objects), "--against-ca=ca.pem", *files)
    assert code == 2 and "--against-ca needs --against URL" in err
    code, _, err = replay(capsys, "--objects", str(objects), "--against=ftp://x/mutate", *files)
    assert code == 2 and "expected an https:// URL" in err
    code, _, err = replay(capsys, "--against-server-name=svc", *files)
    assert code == 2 and "--against-server-name needs --against URL" in err
