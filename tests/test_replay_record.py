"""`serve --record-dir` and replaying its files: redaction, never blocking, rotation, sampling."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from webhook.cli import main
from webhook.server.record import (
    CURRENT,
    LAST_APPLIED,
    Recorder,
    RecordSettings,
)

from .builders import ROLE, admission_review, container, pod


@pytest.fixture()
def objects(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: default, "
        f"annotations: {{eks.amazonaws.com/role-arn: '{ROLE}'}}}}\n"
    )
    return path


def secret_pod() -> dict[str, Any]:
    spec = pod(
        container(
            "a",
            env=[{"name": "PASSWORD", "value": "hunter2"}, {"name": "SAME", "value": "hunter2"}],
        ),
        container(
            "b", env=[{"name": "OTHER", "value": "swordfish"}, {"name": "REF", "valueFrom": {}}]
        ),
    )
    spec["metadata"]["annotations"] = {LAST_APPLIED: '{"env": "hunter2"}', "kept": "yes"}
    return spec


def answer(
    objects: Path, tmp_path: Path, review: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> bytes:
    """Our server's answer, from the shared pipeline."""
    file = tmp_path / "in.json"
    file.write_bytes(orjson.dumps(review))
    assert main(["replay", "--objects", str(objects), str(file)]) == 0
    return capsys.readouterr().out.strip().encode()


def record(directory: Path, *pairs: tuple[bytes, bytes], **settings: Any) -> Recorder:
    recorder = Recorder(RecordSettings(directory, **settings), CollectorRegistry())
    recorder.start()
    for request, response in pairs:
        recorder.offer(request, response)
    recorder.close()
    return recorder


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / CURRENT).read_text().splitlines()]


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- redaction -----------------------------------------------------------------------------------------


def test_env_values_are_replaced_by_a_keyed_hash_equal_for_equal_values(tmp_path: Path) -> None:
    request = orjson.dumps(admission_review(secret_pod()))
    record(tmp_path, (request, b'{"response": {}}'))
    [line] = lines(tmp_path)
    pod_spec = line["request"]["request"]["object"]
    a, b = (c["env"] for c in pod_spec["spec"]["containers"])
    assert "hunter2" not in json.dumps(line) and "swordfish" not in json.dumps(line)
    assert a[0]["value"] == a[1]["value"]  # equal values stay equal
    assert a[0]["value"] != b[0]["value"]  # different ones different
    assert a[0]["value"].startswith("redacted:hmac-sha256:")
    assert b[1] == {"name": "REF", "valueFrom": {}}
    assert pod_spec["metadata"]["annotations"]["kept"] == "yes"
    assert pod_spec["metadata"]["annotations"][LAST_APPLIED].startswith("redacted:")


def test_the_opt_out_keeps_env_values(tmp_path: Path) -> None:
    record(tmp_path, (orjson.dumps(admission_review(secret_pod())), b"{}"), redact=False)
    assert "hunter2" in json.dumps(lines(tmp_path)[0])
    assert [p.name for p in tmp_path.iterdir()] == [CURRENT]


# -- the request path ----------------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    recorder = Recorder(RecordSettings(tmp_path, queue_size=2), registry)  # writer not started
    for _ in range(5):
        recorder.offer(b"{}", b"{}")
    assert registry.get_sample_value("pod_identity_webhook_record_dropped_total") == 3
    recorder.start()
    recorder.close()
    assert registry.get_sample_value("pod_identity_webhook_recorded_total") == 2


@pytest.mark.parametrize(
    ("sample", "draw", "kept"),
    [(1.0, 0.99, True), (0.1, 0.05, True), (0.1, 0.5, False), (0.0, 0.0, False)],
)
def test_sampling_keeps_the_given_fraction(
    tmp_path: Path, sample: float, draw: float, kept: bool
) -> None:
    recorder = Recorder(
        RecordSettings(tmp_path, sample=sample), CollectorRegistry(), chance=lambda: draw
    )
    sampled = recorder.sampled()
    recorder.close()  # the file it opened
    assert sampled is kept


def test_the_mutate_handler_records_reviews_answered_200_only(tmp_path: Path) -> None:
    """--record-dir is a hook on the one /mutate handler of the one app `serve` runs."""
    import httpx

    from webhook.core.settings import MutationSettings
    from webhook.server.app import WebhookContext, create_webhook_app
    from webhook.server.grace import GraceLookup
    from webhook.server.metrics import Metrics
    from webhook.sources.store import IdentityStore

    recorder = Recorder(RecordSettings(tmp_path, redact=False), CollectorRegistry())
    recorder.start()
    store = IdentityStore(MutationSettings())
    ctx = WebhookContext(
        MutationSettings(),
        store,
        GraceLookup(store, 0, None),
        Metrics(),
        lambda: True,
        record=recorder.record,
    )
    review = orjson.dumps(admission_review(pod(), uid="recorded"))

    async def exchange() -> list[int]:
        transport = httpx.ASGITransport(app=create_webhook_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            json = {"Content-Type": "application/json"}
            return [
                (await client.post("/mutate", content=review, headers=json)).status_code,
                (await client.post("/mutate", content=b"[]", headers={})).status_code,  # 415
                (await client.post("/healthz", content=review, headers=json)).status_code,
            ]

    statuses = asyncio.run(exchange())
    recorder.close()
    assert statuses == [200, 415, 405]
    [line] = lines(tmp_path)
    assert line["request"]["request"]["uid"] == "recorded"
    assert line["response"]["response"]["uid"] == "recorded"


# -- rotation ------------------------------------------------------------------------------------------


def test_files_rotate_into_gzip_within_the_size_budget(tmp_path: Path) -> None:
    request = orjson.dumps(admission_review(pod(), uid="x" * 2000))
    record(tmp_path, *[(request, b"{}")] * 200, max_bytes=100_000, redact=False)
    rotations = sorted(tmp_path.glob("reviews-*.jsonl.gz"))
    assert len(rotations) >= 2
    total = sum(p.stat().st_size for p in rotations) + (tmp_path / CURRENT).stat().st_size
    assert total <= 100_000
    assert gzip.decompress(rotations[0].read_bytes()).count(b"\n") >= 1


# -- replay reads the records --------------------------------------------------------------------------


def test_replay_of_the_records_and_rotations_gives_the_recorded_answers(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records"
    reviews = [admission_review(pod(), uid=f"uid-{i}") for i in range(30)] + [
        admission_review(secret_pod(), uid="secret")
    ]
    pairs = [(orjson.dumps(r), answer(objects, tmp_path, r, capsys)) for r in reviews]
    record(records, *pairs, max_bytes=60_000)
    assert list(records.glob("*.gz")), "the test wants at least one rotation"
    code, out, err = replay(capsys, "--objects", str(objects), "--expect-recorded", str(records))
    assert code == 0, err
    assert out == ""  # checking prints the differences and the summary only
    assert f"replay: {len(reviews)} of {len(reviews)} matched the recorded responses" in err


def test_a_different_answer_is_reported_and_fails(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    review = admission_review(pod(), uid="u")
    record(tmp_path, (orjson.dumps(review), answer(objects, tmp_path, review, capsys)))
    other = tmp_path / "other.yaml"
    other.write_text(objects.read_text().replace(ROLE, "arn:aws:iam::111122223333:role/changed"))
    code, _, err = replay(
        capsys, "--objects", str(other), "--expect-recorded", str(tmp_path / CURRENT)
    )
    assert code == 1
    assert "DIFFERENT default/pod-1 (uid u)" in err and "replay: 0 of 1 matched" in err


def test_a_truncated_rotation_is_a_clear_error(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "reviews-1.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"kind": "RecordedReview"}\n')[:-8])
    code, _, err = replay(capsys, "--objects", str(objects), str(broken))
    assert code == 2 and "not a complete gzip file" in err


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--record-sample=1.5", "between 0 and 1"), ("--record-max-bytes=0", "must be positive")],
)
def test_bad_record_flags_are_usage_errors(
    tmp_path: Path, flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serverproc import make_certs

    files = make_certs(tmp_path)
    code = main(
        [
            "serve",
            f"--record-dir={tmp_path / 'r'}",
            flag,
            f"--tls-cert={files.tls_cert}",
            f"--tls-key={files.tls_key}",
            "--port=1",
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_server_records_what_it_answers_and_replay_gives_the_same(
    tmp_path: Path, objects: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serverproc import make_certs, metric_value, running_webhook, wait_until

    files = make_certs(tmp_path)
    records = tmp_path / "records"
    answers: list[dict[str, Any]] = []
    with (
        running_webhook(
            tls_cert=files.tls_cert,
            tls_key=files.tls_key,
            ca_pem=files.ca.cert_pem,
            objects=objects,
            log_path=tmp_path / "serve.log",
            extra_args=[f"--record-dir={records}"],
        ) as server,
        server.client() as client,
    ):
        for i, spec in enumerate([pod(), secret_pod(), pod(sa="unknown")]):
            reply = client.post("/mutate", json=admission_review(spec, uid=f"live-{i}"))
            assert reply.status_code == 200
            answers.append(reply.json())
        assert (
            client.post(
                "/mutate", content=b"{}", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )
        recorded_metric = wait_until(
            lambda: metric_value(server, "pod_identity_webhook_recorded_total") == 3 or None,
            10,
            "the recorder's counter",
        )
        assert (
            recorded_metric
            and metric_value(server, "pod_identity_webhook_record_dropped_total") == 0
        )
        server.stop()
    recorded = lines(records)
    assert [line["response"] for line in recorded] == answers  # 415 is not a review: not recorded
    assert "hunter2" not in (records / CURRENT).read_text()
    code, _, err = replay(capsys, "--objects", str(objects), "--expect-recorded", str(records))
    assert code == 0, err
    assert "replay: 3 of 3 matched the recorded responses" in err


def test_the_queue_is_bounded_in_bytes_as_well(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    recorder = Recorder(RecordSettings(tmp_path, queue_bytes=1000), registry)  # writer not started
    recorder.offer(b"x" * 600, b"{}")
    recorder.offer(b"x" * 600, b"{}")  # would exceed 1000 bytes queued
    assert registry.get_sample_value("pod_identity_webhook_record_dropped_total") == 1
    recorder.start()
    recorder.close()
    assert recorder.queued_bytes == 0


def test_golden_records_replay_to_their_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """tests/replay_golden/records: the golden manifests' reviews as the recorder wrote them,
    half in a .gz rotation; their answers are the golden responses of expected/plain."""
    golden = Path(__file__).parent / "replay_golden"
    code, out, err = replay(
        capsys,
        "--objects",
        str(golden / "objects.yaml"),
        "--expect-recorded",
        str(golden / "records"),
        "-o",
        "response",
    )
    assert code == 0, err
    assert "replay: 8 of 8 matched the recorded responses" in err

    def uid(response: dict[str, Any]) -> str:
        return str(response["response"]["uid"])

    answers = (golden / "expected" / "plain").rglob("*.json")
    plain = sorted((json.loads(p.read_text()) for p in answers), key=uid)
    assert sorted((json.loads(line) for line in out.splitlines()), key=uid) == plain


def regenerate_records() -> None:
    """Rewrite tests/replay_golden/records from the golden manifests (`python -m
    tests.test_replay_record`): the first half as a rotation, the rest as the current file."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from webhook.cli.replay_inputs import read_cases

    golden = Path(__file__).parent / "replay_golden"
    cases = list(read_cases([str(golden / "manifests")], print, print))
    pairs = []
    for case in cases:
        answered = subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook",
                "replay",
                "--objects",
                str(golden / "objects.yaml"),
                "-",
            ],
            input=case.body,
            capture_output=True,
            check=True,
        )
        pairs.append((case.body, answered.stdout.strip()))
    target = golden / "records"
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        half = len(pairs) // 2
        record(Path(scratch), *pairs[:half])
        target.mkdir()
        rotation = gzip.compress((Path(scratch) / CURRENT).read_bytes(), mtime=0)
        (target / "reviews-20260101T000000-1-0001.jsonl.gz").write_bytes(rotation)
        shutil.rmtree(scratch)
        record(Path(scratch), *pairs[half:])
        shutil.copy(Path(scratch) / CURRENT, target / CURRENT)


if __name__ == "__main__":
    regenerate_records()
