"""`replay --against`'s "other webhook against ours" diff, by structure (issue 19 §4)."""

from __future__ import annotations

from typing import Any

from webhook.toolkit.replay_report import unified
from webhook.toolkit.structdiff import structural_diff


def pod(*env: tuple[str, str], image: str = "example.com/app:1") -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "app", "env": [{"name": n, "value": v} for n, v in env], "image": image},
                {"name": "sidecar", "image": "example.com/sidecar:1"},
            ]
        },
    }


def diff(theirs: Any, ours: Any) -> str:
    return structural_diff(theirs, ours, "p (--against)", "p (ours)")


def test_an_inserted_env_entry_shows_only_that_entry_not_the_unchanged_image() -> None:
    theirs = pod(("AWS_REGION", "eu-west-1"), ("A", "1"))
    ours = pod(("A", "1"))
    text = diff(theirs, ours)
    assert text == (
        "--- p (--against)\n+++ p (ours)\n"
        "@@ spec.containers[app].env[AWS_REGION]\n-name: AWS_REGION\n-value: eu-west-1\n"
    )
    # What a text diff of the YAML dumps says about the same two pods:
    assert "image" in unified(theirs, ours, "a", "b", sort_keys=True) and "image" not in text


def test_a_changed_value_is_named_by_its_path() -> None:
    text = diff(pod(("A", "1")), pod(("A", "2"), image="example.com/app:2"))
    assert "@@ spec.containers[app].env[A].value\n-'1'\n+'2'\n" in text
    assert "@@ spec.containers[app].image\n-example.com/app:1\n+example.com/app:2\n" in text
    assert "sidecar" not in text


def test_the_same_names_in_another_order_are_reported_as_an_order() -> None:
    text = diff(pod(("A", "1"), ("B", "2")), pod(("B", "2"), ("A", "1")))
    assert text.endswith("@@ spec.containers[app].env (order)\n-['A', 'B']\n+['B', 'A']\n")


def test_lists_without_names_compare_by_position_or_whole() -> None:
    assert "@@ args[1]\n-b\n+c\n" in diff({"args": ["a", "b"]}, {"args": ["a", "c"]})
    assert "@@ args\n-- a\n+- a\n+- b\n" in diff({"args": ["a"]}, {"args": ["a", "b"]})


def test_equal_objects_have_no_diff() -> None:
    assert diff(pod(("A", "1")), pod(("A", "1"))) == ""
