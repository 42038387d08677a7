"""What every `replay` run reports: the summary line, `-o wide`, `-o json` and the static
`--report` page. Golden outputs live in tests/replay_report_golden (PIW_UPDATE_GOLDEN=1
rewrites them)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from webhook.cli import main

HERE = Path(__file__).parent
GOLDEN = HERE / "replay_report_golden"
SELECTORS = HERE / "replay_golden"
# Every status: workloads (mutated), selectors (not sent), and the report's own inputs
# (denied, unchanged, an admission warning, an input that is not a review).
ARGV = (
    "--objects",
    str(SELECTORS / "objects.yaml"),
    "--objects",
    str(GOLDEN / "objects.yaml"),
    "--webhook-config",
    str(SELECTORS / "webhook-config.yaml"),
    str(SELECTORS / "manifests"),
    str(GOLDEN / "inputs"),
)
SUMMARY = "replay: 11 review(s): 5 mutated, 1 unchanged, 1 denied, 4 not sent, 2 error(s)"


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    relative = actual.replace(str(HERE), "tests")
    if os.environ.get("PIW_UPDATE_GOLDEN") == "1":
        path.write_text(relative)
    assert relative == path.read_text(), f"{path} differs (PIW_UPDATE_GOLDEN=1 rewrites it)"


def test_every_run_ends_with_the_counts_and_input_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = replay(capsys, *ARGV)
    assert code == 2  # the input that is not a review
    assert err.rstrip().splitlines()[-1] == SUMMARY


def test_wide_output_is_a_row_per_review_then_the_counts_per_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = replay(capsys, *ARGV, "-o", "wide")
    golden("wide.txt", out)
    per_namespace = out.split("\n\n", 1)[1].splitlines()
    assert per_namespace[0].split() == [
        "NAMESPACE",
        "MUTATED",
        "UNCHANGED",
        "DENIED",
        "NOT",
        "SENT",
        "ERROR",
    ]
    assert per_namespace[1:] == [
        "default     0         0           0        2          0",
        "legacy      0         0           0        1          0",
        "shop        5         1           1        1          0",
    ]


def test_json_output_is_one_document_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = replay(capsys, *ARGV, "-o", "json")
    golden("report.json", out)
    document = json.loads(out)
    assert document["summary"] == {
        "mutated": 5,
        "unchanged": 1,
        "denied": 1,
        "not sent": 4,
        "error": 2,
    }
    assert document["namespaces"]["shop"]["denied"] == 1
    assert [c["status"] for c in document["cases"] if c["namespace"] == "default"] == [
        "not sent",
        "not sent",
    ]
    warned = next(c for c in document["cases"] if c["pod"].startswith("shop/warned"))
    assert any("not-an-arn" in w for w in warned["warnings"])
    assert warned["diff"].startswith("--- shop/warned <b> (Pod shop/warned <b>) (original)\n")
    assert "against" not in document  # only with --against


def test_the_report_page_is_self_contained_escaped_and_has_every_review(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    code, _, err = replay(capsys, *ARGV, f"--report={page}")
    assert code == 2 and f"report written to {page}" in err
    html = page.read_text()
    assert not re.search(r"""\bsrc=|\bhref="(?!#)|@import|url\(|<script""", html)
    total = re.search(r'<tr class="total">(.*?)</tr>', html)
    assert total is not None
    assert dict(re.findall(r'data-status="([^"]+)">(\d+)<', total.group(1))) == {
        "mutated": "5",
        "unchanged": "1",
        "denied": "1",
        "not sent": "4",
        "error": "2",
    }
    assert html.count('<section class="case"') == 11
    assert "warned &lt;b&gt;" in html and "warned <b>" not in html
    assert '<ul class="warnings"><li>' in html
    assert '<span class="add">+    env:</span>' in html
    assert "not sent to the webhook: objectSelector" in html


def test_the_report_cannot_be_written_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = replay(capsys, *ARGV, f"--report={tmp_path / 'missing' / 'r.html'}")
    assert code == 2 and "--report" in err
