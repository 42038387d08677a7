"""What a `serve --record-dir` capture keeps: no redaction key inside DIR, and container
`command`/`args` hashed like env values (issue 19 §5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from webhook.cli import main
from webhook.server.record import (
    CURRENT,
    LEGACY_KEY_FILE,
    Recorder,
    RecordSettings,
    RedactionKeyError,
    read_redaction_key,
)

from .builders import admission_review, container, pod

KEY = b"0123456789abcdef0123456789abcdef"


def pod_with_secrets_in_args() -> dict[str, Any]:
    return pod(
        container(
            "a",
            command=["/bin/app", "--password=hunter2"],
            args=["--token", "swordfish", "--token", "swordfish"],
            env=[{"name": "PASSWORD", "value": "hunter2"}],
        ),
        container("b", args=["--password=hunter2"]),
    )


def record(directory: Path, review: dict[str, Any], **settings: Any) -> dict[str, Any]:
    recorder = Recorder(RecordSettings(directory, **settings), CollectorRegistry())
    recorder.start()
    recorder.offer(orjson.dumps(review), b"{}")
    recorder.close()
    *_, last = (directory / CURRENT).read_text().splitlines()
    result: dict[str, Any] = json.loads(last)
    return result


def containers(line: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = line["request"]["request"]["object"]["spec"]["containers"]
    return spec


def test_the_capture_directory_holds_only_reviews_never_the_key(tmp_path: Path) -> None:
    record(tmp_path, admission_review(pod_with_secrets_in_args()))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT]


def test_command_and_args_are_hashed_word_by_word_equal_for_equal_words(tmp_path: Path) -> None:
    line = record(tmp_path, admission_review(pod_with_secrets_in_args()))
    assert "hunter2" not in json.dumps(line) and "swordfish" not in json.dumps(line)
    a, b = containers(line)
    assert len(a["command"]) == 2 and len(a["args"]) == 4
    assert all(w.startswith("redacted:hmac-sha256:") for w in [*a["command"], *a["args"]])
    assert a["args"][1] == a["args"][3] and a["args"][0] != a["args"][1]
    assert a["command"][1] == b["args"][0]  # the same word in two containers


def test_without_a_key_file_each_process_draws_its_own_key(tmp_path: Path) -> None:
    review = admission_review(pod_with_secrets_in_args())
    first = record(tmp_path / "one", review)
    second = record(tmp_path / "two", review)
    assert containers(first)[0]["args"] != containers(second)[0]["args"]


def test_a_key_file_makes_hashes_match_across_restarts_and_replicas(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    review = admission_review(pod_with_secrets_in_args())
    first = record(tmp_path / "one", review, key_file=key_file)
    second = record(tmp_path / "two", review, key_file=key_file)
    assert first["request"] == second["request"]
    assert "hunter2" not in json.dumps(first)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [CURRENT]


def test_a_key_left_in_the_directory_by_an_earlier_version_is_not_used_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / LEGACY_KEY_FILE).write_bytes(KEY)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / LEGACY_KEY_FILE).write_bytes(KEY)
    review = admission_review(pod_with_secrets_in_args())
    with caplog.at_level(logging.WARNING):
        first = record(tmp_path / "one", review)
    second = record(tmp_path / "two", review)
    assert first["request"] != second["request"]  # not keyed by the file both hold
    assert "no longer used" in caplog.text and LEGACY_KEY_FILE in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "the file does not exist"), (b"short\n", "at least 16")],
)
def test_an_unusable_key_file_is_one_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RedactionKeyError, match=message):
        read_redaction_key(path)


def test_serve_refuses_a_missing_key_file_before_binding_a_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serverproc import make_certs

    files = make_certs(tmp_path)
    code = main(
        [
            "serve",
            f"--record-dir={tmp_path / 'r'}",
            f"--record-redaction-key-file={tmp_path / 'absent'}",
            f"--tls-cert={files.tls_cert}",
            f"--tls-key={files.tls_key}",
            "--port=1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--record-redaction-key-file {tmp_path / 'absent'}: the file does not exist" in err
