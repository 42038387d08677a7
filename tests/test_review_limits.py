"""What one review may cost: every body gets an answer, never an internal error."""

from __future__ import annotations

import orjson
import pytest

from webhook.review import JSON_MAX_DEPTH

from .builders import ROLE, admission_review, patch_of, pod, respond, store_with

STORE = store_with(app={"eks.amazonaws.com/role-arn": ROLE})


def nested_in_an_unknown_field(depth: int) -> bytes:
    """A pod CREATE whose unknown field `x` holds `depth` nested arrays (the API server prunes
    such fields from pods: only replayed or hostile input looks like this)."""
    review = orjson.dumps(admission_review(pod(x="HERE")))
    return review.replace(b'"HERE"', b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("depth", [500, 1_000, JSON_MAX_DEPTH - 10])
def test_a_deep_unknown_field_that_a_json_decoder_reads_still_gets_the_mutation(
    depth: int,
) -> None:
    # Past ~1,000 levels the typed decoder gives up (RecursionError); the full decode reads it.
    assert patch_of(respond(nested_in_an_unknown_field(depth), STORE))


@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH - 1, 1_023, 5_000, 1_000_000])
def test_a_review_nested_deeper_than_the_json_decoders_limit_is_denied_clearly(
    depth: int,
) -> None:
    # The review itself adds levels around `x`: JSON_MAX_DEPTH - 1 inside it is already too deep.
    response = respond(nested_in_an_unknown_field(depth), STORE)["response"]
    assert response["allowed"] is False
    assert response["status"]["message"].startswith(
        f"cannot decode body as JSON: it nests more than {JSON_MAX_DEPTH} levels deep"
    )
