"""What one review may cost: every body gets an answer, never an internal error."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import orjson
import pytest

from webhook.core import mutation
from webhook.core.mutation import MAX_CONTAINERS
from webhook.review import JSON_MAX_DEPTH, review

from .builders import ROLE, admission_review, patch_of, pod, respond, store_with

STORE = store_with(app={"eks.amazonaws.com/role-arn": ROLE})


@pytest.fixture
def default_recursion_limit() -> Iterator[None]:
    """Python's default, as the server runs (a library in this test process may raise it, and
    msgspec's typed decode then reads deeper)."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000)
    yield
    sys.setrecursionlimit(before)


def nested_in_an_unknown_field(depth: int) -> bytes:
    """A pod CREATE whose unknown field `x` holds `depth` nested arrays (the API server prunes
    such fields from pods: only replayed or hostile input looks like this)."""
    review = orjson.dumps(admission_review(pod(x="HERE")))
    return review.replace(b'"HERE"', b"[" * depth + b"]" * depth)


@pytest.mark.usefixtures("default_recursion_limit")
@pytest.mark.parametrize("depth", [500, 1_000, JSON_MAX_DEPTH - 10])
def test_a_deep_unknown_field_that_a_json_decoder_reads_still_gets_the_mutation(
    depth: int,
) -> None:
    # Past ~1,000 levels the typed decoder gives up (RecursionError); the full decode reads it.
    assert patch_of(respond(nested_in_an_unknown_field(depth), STORE))


@pytest.mark.usefixtures("default_recursion_limit")
@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH - 1, 5_000, 1_000_000])
def test_a_review_nested_deeper_than_the_json_decoders_limit_is_denied_clearly(
    depth: int,
) -> None:
    # The review itself adds levels around `x`: JSON_MAX_DEPTH - 1 inside it is already too deep.
    response = respond(nested_in_an_unknown_field(depth), STORE)["response"]
    assert response["allowed"] is False
    assert response["status"]["message"].startswith(
        f"cannot decode body as JSON: it nests more than {JSON_MAX_DEPTH} levels deep"
    )


def with_empty_containers(count: int, init: int = 0) -> bytes:
    """A pod CREATE whose spec lists `count` empty containers (and `init` initContainers)."""
    review = orjson.dumps(admission_review(pod(containers="C", initContainers="I")))
    review = review.replace(b'"C"', b"[" + b",".join([b"{}"] * count) + b"]")
    return review.replace(b'"I"', b"[" + b",".join([b"{}"] * init) + b"]")


def test_a_million_empty_containers_are_denied_at_once_with_a_clear_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="webhook.review")
    body = with_empty_containers(1_000_000)  # ~3 MB: 5-6 s and a 553 MB answer before the cap
    started = time.perf_counter()
    outcome = review(body, STORE, STORE.settings)
    elapsed = time.perf_counter() - started
    answer = orjson.loads(outcome.body)["response"]
    assert answer["allowed"] is False
    assert answer["status"]["message"] == (
        "cannot mutate pod: pod has 1000000 containers and initContainers, more than the "
        f"{MAX_CONTAINERS} one review may mutate (no pod the API server can store has that many)"
    )
    assert len(outcome.body) < 1_000
    assert elapsed < 3.0, f"{elapsed:.2f} s"  # decoding the 3 MB body; nothing is planned
    denial = [r for r in caplog.records if r.name == "webhook.review"]
    assert [r.levelno for r in denial] == [logging.WARNING]
    assert "Pod was denied. Reason: cannot mutate pod: pod has 1000000 containers" in (
        denial[0].getMessage()
    )
    assert "Pod=pod-1, ServiceAccount=app, Namespace=default" in denial[0].getMessage()


@pytest.mark.parametrize(("containers", "init"), [(3, 0), (1, 2)])
def test_up_to_the_ceiling_containers_and_init_containers_are_mutated(
    monkeypatch: pytest.MonkeyPatch, containers: int, init: int
) -> None:
    monkeypatch.setattr(mutation, "MAX_CONTAINERS", 3)
    assert len(patch_of(respond(with_empty_containers(containers, init), STORE))) == 1 + 2 * 3


@pytest.mark.parametrize(("containers", "init"), [(4, 0), (2, 2), (0, 4)])
def test_past_the_ceiling_containers_and_init_containers_count_together(
    monkeypatch: pytest.MonkeyPatch, containers: int, init: int
) -> None:
    monkeypatch.setattr(mutation, "MAX_CONTAINERS", 3)
    response = respond(with_empty_containers(containers, init), STORE)["response"]
    assert response["allowed"] is False
    assert (
        "pod has 4 containers and initContainers, more than the 3"
        in (response["status"]["message"])
    )


def test_a_pod_without_an_identity_is_allowed_unchanged_however_many_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mutation, "MAX_CONTAINERS", 3)
    response = respond(with_empty_containers(10), store_with(app={}))["response"]
    assert response == {"uid": "uid-1", "allowed": True}
