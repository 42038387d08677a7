"""Decision logs an operator can act on: every denial by default, upstream's lines at -v=3."""

import asyncio
import base64
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jsonpatch
import orjson
import pytest

from webhook.cli import logs, main
from webhook.core.identity import Lookup
from webhook.review import review
from webhook.server.app import WebhookContext, create_webhook_app
from webhook.server.grace import GraceLookup
from webhook.server.metrics import Metrics
from webhook.sources.store import IdentityStore

from .builders import ROLE, admission_review, container, pod, store_with

Logged = Callable[..., list[str]]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[Logged]:
    """Run reviews with `serve`'s logging at a verbosity; the log lines they wrote."""

    def run(
        verbosity: int, *bodies: object, store: IdentityStore | None = None, fmt: str = "text"
    ) -> list[str]:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        logs.configure(verbosity, fmt)
        target = store or store_with(app={"eks.amazonaws.com/role-arn": ROLE}, plain={})
        for body in bodies:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            review(raw, target, target.settings)
        return stream.getvalue().splitlines()

    yield run


def review_of(sa: str, name: str = "web-1", namespace: str = "default") -> dict[str, object]:
    return admission_review(pod(sa=sa, metadata={"name": name}), namespace=namespace)


def test_default_verbosity_logs_each_denial_with_reason_pod_namespace_and_sa(
    logged: Logged,
) -> None:
    broken = admission_review(pod(container(env="not-a-list"), sa="app", metadata={"name": "b"}))
    lines = logged(0, review_of("app"), review_of("plain"), broken)
    assert len(lines) == 1  # mutations and pods without a role are quiet at -v=0
    line = lines[0]
    assert "level=warning" in line and "Pod was denied. Reason: cannot read pod:" in line
    for field in ("pod=b", "namespace=default", "serviceAccount=app", "reason="):
        assert field in line


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", orjson.dumps({"kind": "AdmissionReview", "apiVersion": "v2"})],
)
def test_undecodable_reviews_are_logged_too(logged: Logged, body: bytes) -> None:
    lines = logged(0, body)
    assert len(lines) == 1 and "Request was denied. Reason: " in lines[0]


def test_v3_logs_pod_was_mutated_as_upstream_does(logged: Logged) -> None:
    store = store_with()
    store.replace_service_accounts([("shop", "app", {"eks.amazonaws.com/role-arn": ROLE})])
    lines = logged(3, review_of("app", name="web-1", namespace="shop"), store=store)
    assert len(lines) == 1
    assert "level=info" in lines[0]
    # upstream: klog.V(3).Infof("Pod was mutated. %s", logContext(...))
    assert 'msg="Pod was mutated. Pod=web-1, ServiceAccount=app, Namespace=shop"' in lines[0]


def test_v3_names_generate_name_pods_like_upstream(logged: Logged) -> None:
    body = admission_review(pod(sa="app", metadata={"generateName": "web-"}))
    (line,) = logged(3, body)
    assert "Pod was mutated. Pod=web-, ServiceAccount=app" in line


def test_v3_says_when_a_pod_already_had_everything(logged: Logged) -> None:
    store = store_with(app={"eks.amazonaws.com/role-arn": ROLE})
    first = review(orjson.dumps(review_of("app")), store, store.settings)
    patched = json.loads(first.body)
    assert patched["response"]["patch"]
    operations = json.loads(base64.b64decode(patched["response"]["patch"]))
    mutated_pod = jsonpatch.apply_patch(pod(sa="app", metadata={"name": "web-1"}), operations)
    (line,) = logged(3, admission_review(mutated_pod), store=store)
    assert "Pod was not mutated. Reason: Required volume mounts and env variables" in line


def test_json_format_has_the_same_fields(logged: Logged) -> None:
    (line,) = logged(0, admission_review(pod(container(env=3), sa="app")), fmt="json")
    record = json.loads(line)
    assert record["level"] == "warning"
    assert (record["pod"], record["namespace"], record["serviceAccount"]) == (
        "pod-1",
        "default",
        "app",
    )
    assert record["reason"].startswith("cannot read pod:")


def test_reason_tells_an_unknown_service_account_from_one_without_a_role() -> None:
    store = store_with(plain={})
    unknown = review(orjson.dumps(review_of("ghost")), store, store.settings)
    no_role = review(orjson.dumps(review_of("plain")), store, store.settings)
    assert unknown.reason == "ServiceAccount default/ghost not in the cache"
    assert no_role.reason == (
        "ServiceAccount default/plain has no role (no eks.amazonaws.com/role-arn annotation)"
    )
    assert unknown.missing_service_account and not no_role.missing_service_account


def test_v4_logs_one_line_per_review_and_never_a_token(logged: Logged) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    secret = admission_review(
        pod(container(env=[{"name": "TOKEN", "value": token}]), sa="app", metadata={"name": "w"})
    )
    lines = logged(
        4,
        secret,
        review_of("plain"),
        review_of("ghost"),
        admission_review(
            {"kind": "Deployment"}, kind="Deployment", group="apps", resource="deployments"
        ),
    )
    assert len(lines) == 4
    mutated, no_role, unknown, other = lines
    assert "Pod was mutated. Pod=w" in mutated and " mutated=true " in mutated
    assert "has no role" in no_role and " mutated=false " in no_role
    assert "ServiceAccount default/ghost not in the cache" in unknown
    assert 'msg="Request was not mutated. Reason: not a Pod' in other
    assert not any(token in line for line in lines)


class _BrokenLookup(GraceLookup):
    def lookup_now(self, namespace: str, service_account: str) -> Lookup | None:
        raise RuntimeError("simulated bug")

    async def lookup(self, namespace: str, service_account: str) -> Lookup:
        raise RuntimeError("simulated bug")


def test_an_error_answer_is_one_line_naming_the_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(0, "text")
    store = store_with()
    ctx = WebhookContext(store.settings, store, _BrokenLookup(store, 0, None), Metrics(), bool)
    body = admission_review(pod(sa="app", metadata={"name": "web-9"}), namespace="shop")

    async def post() -> int:
        transport = httpx.ASGITransport(app=create_webhook_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.post("/mutate", json=body)).status_code

    assert asyncio.run(post()) == 500
    ours = [line for line in stream.getvalue().splitlines() if "logger=httpx" not in line]
    (line,) = ours  # the traceback is escaped into the line
    assert "level=error" in line
    assert 'msg="Pod review failed. Reason: internal error: simulated bug.' in line
    assert "Pod=web-9, ServiceAccount=app, Namespace=shop" in line
    assert " pod=web-9 namespace=shop serviceAccount=app " in line
    assert "Traceback" in line and "simulated bug" in line


@pytest.mark.parametrize(("verbosity", "quiet", "shown"), [(0, True, False), (1, True, True)])
def test_replay_stays_quiet_unless_asked(
    monkeypatch: pytest.MonkeyPatch, verbosity: int, quiet: bool, shown: bool
) -> None:
    import logging

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(verbosity, "text", quiet=quiet)
    logging.getLogger("webhook.test").info("an info line")
    assert ("an info line" in stream.getvalue()) is shown


def test_a_quiet_replay_leaves_denial_logs_on_for_the_rest_of_the_process(
    logged: Logged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay -v=0 keeps denial lines off its own stderr (its stdout has the answers), and
    only there: a server configured later in the same process still logs every denial."""
    broken = admission_review(pod(container(env="not-a-list"), sa="app", metadata={"name": "b"}))
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    main(["replay", str(path)])
    out, err = capsys.readouterr()
    assert '"allowed":false' in out.replace(" ", "")
    assert "Pod was denied" not in err
    lines = logged(0, broken)
    assert len(lines) == 1 and "Pod was denied. Reason: cannot read pod:" in lines[0]


def test_troubleshooting_guide_quotes_the_reasons_the_webhook_gives() -> None:
    from pathlib import Path

    guide = (Path(__file__).parent.parent / "docs" / "troubleshooting.md").read_text()
    store = store_with(plain={})
    for account in ("ghost", "plain"):
        reason = review(orjson.dumps(review_of(account)), store, store.settings).reason
        documented = reason.replace(f"default/{account}", "<ns>/<sa>")
        assert f'reason="{documented}"' in guide


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", [0, 3])
def test_serve_logs_as_configured_at_each_verbosity(tmp_path: Path, verbosity: int) -> None:
    """The real process: -v=0 logs the denial only, -v=3 adds upstream's mutation line."""
    from tests.serverproc import (
        make_certs,
        running_webhook,
        service_account,
        wait_until,
        write_objects,
    )

    certs = make_certs(tmp_path / "certs")
    objects = tmp_path / "objects.json"
    write_objects(
        objects,
        [service_account("app", annotations={"eks.amazonaws.com/role-arn": ROLE}),
         service_account("plain")],
    )  # fmt: skip
    with running_webhook(
        tls_cert=certs.tls_cert,
        tls_key=certs.tls_key,
        ca_pem=certs.ca.cert_pem,
        objects=objects,
        log_path=tmp_path / "server.log",
        extra_args=(f"-v={verbosity}",),
    ) as server:
        with server.client() as client:
            for body in (
                review_of("app", name="web-1"),
                review_of("plain", name="web-2"),
                admission_review(pod(container(env="x"), sa="app", metadata={"name": "web-3"})),
            ):
                assert client.post("/mutate", json=body).status_code == 200

        def review_lines() -> list[str] | None:
            lines = [line for line in server.log_lines() if "logger=webhook.review" in line]
            # The denial answers the last request: once it is there, so is every earlier line.
            return lines if any("Pod was denied" in line for line in lines) else None

        lines = wait_until(review_lines, 5, "the denial's log line")
    denied = [line for line in lines if "Pod was denied" in line]
    mutated = [line for line in lines if "Pod was mutated" in line]
    assert len(denied) == 1 and "Pod=web-3, ServiceAccount=app, Namespace=default" in denied[0]
    assert len(mutated) == (1 if verbosity == 3 else 0)
    assert len(lines) == len(denied) + len(mutated)  # the pod without a role is -v=4 only
