"""The chart's PrometheusRule and Grafana dashboard: valid for promtool, each alert fires on
the series that should raise it and stays quiet otherwise, and every metric they query is one
that a running server exposes on /metrics.

promtool is found like helm (tests/conftest.py): $PIW_PROMTOOL, $PIW_E2E_TOOLS_DIR, PATH, or
the directory `bash e2e/tools/build.sh` prints (it builds promtool from Go modules).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.builders import admission_review
from tests.chart_render import (
    FULLNAME,
    NAMESPACE,
    Obj,
    one,
    render,
)
from tests.serverproc import make_certs, pod, running_webhook, service_account, write_objects
from webhook.server.metrics import Metrics

ROLE_ARN = "arn:aws:iam::111122223333:role/app"
# The scrape labels the ServiceMonitor gives the series (job = Service name).
SERIES = f'job="{FULLNAME}",namespace="{NAMESPACE}"'
# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = {"up"}

pytestmark = pytest.mark.timeout(1800)


def rule_groups(helm: str, *sets: str) -> list[Obj]:
    rule = one(render(helm, "prometheusRule.enabled=true", *sets), "PrometheusRule")
    groups: list[Obj] = rule["spec"]["groups"]
    return groups


def alerts(helm: str, *sets: str) -> dict[str, Obj]:
    return {r["alert"]: r for g in rule_groups(helm, *sets) for r in g["rules"] if "alert" in r}


def dashboard(helm: str) -> Obj:
    config_map = one(
        render(helm, "grafanaDashboard.enabled=true"), "ConfigMap", f"{FULLNAME}-dashboard"
    )
    data: Obj = json.loads(config_map["data"]["pod-identity-webhook.json"])
    return data


def dashboard_exprs(board: Obj) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- promtool


def test_rules_pass_promtool_check(helm: str, promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(helm)}))
    proc = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


def _series(name: str, values: str, **labels: str) -> Obj:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{SERIES}{extra}}}", "values": values}


def _firing(rule: Obj, eval_time: str, value_text: str = "", **labels: str) -> Obj:
    """An alert_rule_test expecting `rule` to fire with these labels; `value_text` is what
    the description's $value renders to."""
    annotations = {
        k: re.sub(r"\{\{ \$value \| \w+ \}\}", value_text, v).replace(
            "{{ $labels.pod }}", labels.get("pod", "")
        )
        for k, v in rule["annotations"].items()
    }
    exp = {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}
    return {"eval_time": eval_time, "alertname": rule["alert"], "exp_alerts": [exp]}


def _quiet(rule: Obj, eval_time: str) -> Obj:
    return {"eval_time": eval_time, "alertname": rule["alert"], "exp_alerts": []}


def _unit_tests(rules: dict[str, Obj]) -> list[Obj]:
    """One promtool test per alert: the series that raise it, then series that must not."""
    mutate = {"path": "/mutate"}
    ok = _series("http_request_count", "0+60x40", code="200", verb="POST", **mutate)
    down, errors = rules["PodIdentityWebhookDown"], rules["PodIdentityWebhookErrors"]
    slow, misses = rules["PodIdentityWebhookSlow"], rules["PodIdentityWebhookServiceAccountMisses"]
    unsynced = rules["PodIdentityWebhookCacheNotSynced"]
    bucket = "pod_identity_webhook_request_duration_seconds_bucket"
    return [
        {  # every replica failing its scrape, then no target at all
            "interval": "1m",
            "input_series": [_series("up", "0x10", pod="a"), _series("up", "0x10", pod="b")],
            "alert_rule_test": [_quiet(down, "4m"), _firing(down, "6m")],
        },
        {
            "interval": "1m",
            "input_series": [],
            "alert_rule_test": [
                _firing(down, "6m", job=FULLNAME, namespace=NAMESPACE),
            ],
        },
        {  # one replica up is enough
            "interval": "1m",
            "input_series": [_series("up", "0x10", pod="a"), _series("up", "1x10", pod="b")],
            "alert_rule_test": [_quiet(down, "10m")],
        },
        {  # 6 of 66 answers per minute are 500s: 9.091% > 1%
            "interval": "1m",
            "input_series": [
                ok,
                _series("http_request_count", "0+6x40", code="500", verb="POST", **mutate),
            ],
            "alert_rule_test": [_quiet(errors, "9m"), _firing(errors, "20m", "9.091%")],
        },
        {  # only 200s
            "interval": "1m",
            "input_series": [ok],
            "alert_rule_test": [_quiet(errors, "30m")],
        },
        {  # every review between 0.25 s and 1 s: p99 0.9925 s over the 0.25 s budget
            "interval": "1m",
            "input_series": [
                _series(bucket, "0x40", le="0.1", **mutate),
                _series(bucket, "0x40", le="0.25", **mutate),
                _series(bucket, "0+60x40", le="1", **mutate),
                _series(bucket, "0+60x40", le="+Inf", **mutate),
            ],
            "alert_rule_test": [_quiet(slow, "9m"), _firing(slow, "20m", "992.5ms")],
        },
        {  # every review under 1 ms
            "interval": "1m",
            "input_series": [
                _series(bucket, "0+60x40", le="0.001", **mutate),
                _series(bucket, "0+60x40", le="+Inf", **mutate),
            ],
            "alert_rule_test": [_quiet(slow, "30m")],
        },
        {  # 10 of 60 reviews per minute miss their ServiceAccount: 16.67% > 5%
            "interval": "1m",
            "input_series": [ok, _series("pod_identity_webhook_missing_sa_count", "0+10x40")],
            "alert_rule_test": [_quiet(misses, "14m"), _firing(misses, "35m", "16.67%")],
        },
        {  # 1 in 60 misses (a ServiceAccount created right before its pod) is normal
            "interval": "1m",
            "input_series": [ok, _series("pod_identity_webhook_missing_sa_count", "0+1x40")],
            "alert_rule_test": [_quiet(misses, "40m")],
        },
        {  # replica a never syncs; b does after 2 minutes
            "interval": "1m",
            "input_series": [
                _series("pod_identity_webhook_cache_synced", "0x20", pod="a"),
                _series("pod_identity_webhook_cache_synced", "0 0 1x18", pod="b"),
            ],
            "alert_rule_test": [
                _quiet(unsynced, "5m"),
                _firing(unsynced, "15m", pod="a", job=FULLNAME, namespace=NAMESPACE),
            ],
        },
    ]


def test_each_alert_fires_on_its_condition_and_only_then(
    helm: str,
    promtool: str,
    tmp_path: Path,
) -> None:
    rules = alerts(helm)
    assert set(rules) == {
        "PodIdentityWebhookDown",
        "PodIdentityWebhookErrors",
        "PodIdentityWebhookSlow",
        "PodIdentityWebhookServiceAccountMisses",
        "PodIdentityWebhookCacheNotSynced",
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(helm)}))
    tests: Obj = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": _unit_tests(rules),
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = run(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert tested == set(rules), "every alert has a unit test"


def test_thresholds_and_alert_labels_are_values(helm: str) -> None:
    rules = alerts(
        helm,
        # --set types decimals as strings; --set-json (or a values file) as numbers.
        "json:prometheusRule.latencyBudgetSeconds=0.5",
        "json:prometheusRule.errorRatio=0.05",
        "json:prometheusRule.missingServiceAccountRatio=0.2",
        "prometheusRule.alertLabels.team=platform",
    )
    assert rules["PodIdentityWebhookSlow"]["expr"].endswith("> 0.5")
    assert rules["PodIdentityWebhookErrors"]["expr"].endswith("> 0.05")
    assert rules["PodIdentityWebhookServiceAccountMisses"]["expr"].endswith("> 0.2")
    assert all(r["labels"]["team"] == "platform" for r in rules.values())


def test_rule_and_dashboard_are_opt_in(helm: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(helm)}
    assert not any(kind == "PrometheusRule" for kind, _ in kinds)
    assert ("ConfigMap", f"{FULLNAME}-dashboard") not in kinds


def test_dashboard_carries_the_grafana_sidecar_label(helm: str) -> None:
    config_map = one(
        render(helm, "grafanaDashboard.enabled=true"), "ConfigMap", f"{FULLNAME}-dashboard"
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard(helm)
    titles = {p["title"] for p in board["panels"]}
    assert {"Reviews by outcome", "/mutate latency", "Cached ServiceAccounts"} <= titles
    assert any("missing_sa_count" in e for e in dashboard_exprs(board))


# --------------------------------------------------------------------------- metric names

_PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "absent", "by", "without", "or", "and",
    "unless", "on", "ignoring", "group_left", "group_right", "max", "min", "avg", "count",
    "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping
    labels, Grafana variables, numbers and function names removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in _PROMQL_WORDS and not re.fullmatch(r"e\d*|Inf|NaN", w)}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Sample names on /metrics of a real server after a mutated, a missed and a refused review."""
    directory = tmp_path_factory.mktemp("metrics-server")
    cert_files = make_certs(directory / "certs")
    objects = directory / "objects.json"
    write_objects(
        objects, [service_account("app", annotations={"eks.amazonaws.com/role-arn": ROLE_ARN})]
    )
    with running_webhook(
        tls_cert=cert_files.tls_cert,
        tls_key=cert_files.tls_key,
        ca_pem=cert_files.ca.cert_pem,
        objects=objects,
        log_path=directory / "server.log",
    ) as server:
        with server.client() as https:
            for sa in ("app", "not-in-the-cache"):
                review = admission_review(pod(service_account_name=sa))
                assert https.post("/mutate", json=review).status_code == 200
            refused = https.post("/mutate", content=b"{}", headers={"content-type": "text/plain"})
            assert refused.status_code == 415
        text = httpx.get(f"{server.metrics_url}/metrics", timeout=10.0).text
    # A server on the API (not --objects) also exposes its list/watch retries.
    in_cluster = Metrics()
    in_cluster.track_reconnects(lambda: {"serviceaccounts": 0})
    text += in_cluster.exposition().decode()
    yield {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{job=~"$job",le="+Inf"}[5m]))) > 0.25'
    ) == {"x_bucket"}
    assert metric_names('sum(up{a="b"}) == 0 or absent(up{a="b"})') == {"up"}
    assert metric_names("process_resident_memory_bytes{} / 2^20") == {
        "process_resident_memory_bytes"
    }


def test_dashboard_queries_only_metrics_the_server_exposes(
    helm: str,
    exposed: set[str],
) -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard(helm))))
    assert used, "the dashboard queries something"
    assert used - exposed == set(), f"not on /metrics: {sorted(used - exposed)}"


def test_alerts_query_only_metrics_the_server_exposes(
    helm: str,
    exposed: set[str],
) -> None:
    used = set().union(*(metric_names(r["expr"]) for r in alerts(helm).values()))
    assert used - exposed - SYNTHETIC == set(), f"not on /metrics: {sorted(used - exposed)}"
    assert used >= SYNTHETIC, "the down alert reads Prometheus' own up series"


def test_dashboard_is_grafana_json(helm: str) -> None:
    board: Any = dashboard(helm)
    assert board["uid"] == "pod-identity-webhook" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    for expr in dashboard_exprs(board):
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
