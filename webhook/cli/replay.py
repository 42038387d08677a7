"""`pod-identity-webhook replay`: run captured admission requests through the same pipeline
as the server, offline, to see or check what a change would do before it reaches a cluster.

INPUT: AdmissionReview files (JSON or YAML, one or several documents), directories of them,
`-` for stdin, or Kubernetes audit logs (JSON lines; pod `create` events with `requestObject`).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from webhook.cli import UsageError, flags, logs
from webhook.core.configmap import ConfigMapError
from webhook.review import V1, review
from webhook.sources.container_credentials import ContainerCredentialsError, parse_identities
from webhook.sources.objects import ObjectsError, ObjectsSource
from webhook.sources.store import IdentityStore

HELP = "replay captured AdmissionReviews or audit logs offline, through the server's code path"
_SUFFIXES = (".json", ".yaml", ".yml", ".jsonl", ".log")


@dataclass(slots=True)
class Case:
    name: str  # stable identifier used for --expect file names
    body: bytes


def normalize_argv(argv: Sequence[str]) -> list[str]:
    return flags.normalize_argv(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False
    flags.add_mutation_flags(parser)
    flags.add_klog_flags(parser)
    parser.add_argument(
        "--output",
        choices=("response", "pod", "diff"),
        default="response",
        help="response: AdmissionReview JSON lines; pod: mutated pods; diff: unified diffs",
    )
    parser.add_argument(
        "--expect",
        metavar="DIR",
        help="compare responses with DIR/<case>.json; exit 1 on any difference",
    )
    parser.add_argument(
        "--update-expected",
        action="store_true",
        help="with --expect: (re)write the expected files instead of comparing",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="review file, directory, audit log, or - for stdin",
    )


# -- reading inputs -------------------------------------------------------------------------


def _audit_event_review(event: dict[str, Any]) -> dict[str, Any] | None:
    ref = event.get("objectRef") or {}
    if (
        event.get("verb") != "create"
        or ref.get("resource") != "pods"
        or ref.get("subresource")
        or not isinstance(event.get("requestObject"), dict)
    ):
        return None
    pod = event["requestObject"]
    spec = pod.get("spec")
    if isinstance(spec, dict) and not spec.get("serviceAccountName"):
        # Audit logs record the object before admission; the ServiceAccount admission plugin
        # (which runs before webhooks) would have filled in "default".
        pod = {**pod, "spec": {**spec, "serviceAccountName": "default"}}
    return {
        "apiVersion": V1,
        "kind": "AdmissionReview",
        "request": {
            "uid": event.get("auditID", ""),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ref.get("namespace", ""),
            "operation": "CREATE",
            "object": pod,
        },
    }


def _reviews_in(document: Any) -> Iterator[tuple[dict[str, Any] | None, bytes | None]]:
    """(review, None) for parsed documents; audit events become synthetic v1 reviews."""
    if isinstance(document, list):
        for item in document:
            yield from _reviews_in(item)
    elif isinstance(document, dict):
        kind = document.get("kind")
        if kind == "AdmissionReview":
            yield document, None
        elif kind == "Event" and "auditID" in document:
            converted = _audit_event_review(document)
            if converted is not None:
                yield converted, None
        elif kind in ("EventList", "List") and isinstance(document.get("items"), list):
            yield from _reviews_in(document["items"])
        else:
            yield document, None  # not a review: the pipeline answers with a clear error


def _cases_from_text(label: str, data: bytes, stem: str) -> Iterator[Case]:
    """`stem` names the cases: unique per input file, so --expect files never collide."""
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    documents: list[Any]
    if whole is not None:
        if isinstance(whole, dict) and whole.get("kind") == "AdmissionReview":
            yield Case(stem, data)  # exact bytes, as the API server would send them
            return
        documents = [whole]
    else:
        lines = [line for line in data.splitlines() if line.strip()]
        try:
            documents = [orjson.loads(line) for line in lines]  # audit log: JSON lines
        except orjson.JSONDecodeError:
            try:
                documents = list(yaml.safe_load_all(data))
            except yaml.YAMLError as err:
                raise UsageError(f"{label}: neither JSON, JSON lines nor YAML: {err}") from None
    reviews = [r for doc in documents for r, _ in _reviews_in(doc)]
    for index, item in enumerate(reviews):
        name = stem if len(reviews) == 1 else f"{stem}-{index + 1:04d}"
        yield Case(name, orjson.dumps(item))


def read_cases(inputs: Sequence[str]) -> Iterator[Case]:
    for item in inputs:
        if item == "-":
            yield from _cases_from_text("-", sys.stdin.buffer.read(), "stdin")
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
            for file in files:
                # Relative to the directory: a/review.json and b/review.json stay distinct.
                stem = file.relative_to(path).with_suffix("").as_posix()
                yield from _cases_from_text(str(file), file.read_bytes(), stem)
        elif path.is_file():
            yield from _cases_from_text(str(path), path.read_bytes(), path.stem)
        else:
            raise UsageError(f"{item}: no such file or directory")


# -- rendering ------------------------------------------------------------------------------


def _pods(case: Case, response: dict[str, Any]) -> tuple[Any, Any]:
    request = orjson.loads(case.body).get("request") or {}
    before = request.get("object")
    patch = (response.get("response") or {}).get("patch")
    if not patch or before is None:
        return before, before
    operations = orjson.loads(base64.b64decode(patch))
    return before, jsonpatch.apply_patch(before, operations, in_place=False)


def _diff(case: Case, before: Any, after: Any) -> str:
    def lines(pod: Any) -> list[str]:
        return yaml.safe_dump(pod, sort_keys=False, default_flow_style=False).splitlines(
            keepends=True
        )

    diff = "".join(
        difflib.unified_diff(
            lines(before), lines(after), f"{case.name} (original)", f"{case.name} (mutated)"
        )
    )
    if not diff:
        return f"# {case.name}: unchanged\n"
    return diff if diff.endswith("\n") else diff + "\n"


def _readable(response: dict[str, Any]) -> list[str]:
    """Pretty lines with the patch decoded, so a mismatch shows which operation differs."""
    shown = dict(response)
    inner = dict(shown.get("response") or {})
    if isinstance(inner.get("patch"), str):
        try:
            inner["patch"] = orjson.loads(base64.b64decode(inner["patch"]))
        except ValueError:
            pass
    shown["response"] = inner
    return (
        orjson.dumps(shown, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()
    )


def build_store(args: argparse.Namespace) -> IdentityStore:
    settings = flags.settings_from_args(args)
    store = IdentityStore(settings)
    if args.objects:
        try:
            ObjectsSource(
                args.objects, store, args.namespace if args.watch_config_map else None
            ).load()
        except (ObjectsError, ConfigMapError) as err:
            raise UsageError(f"--objects: {err}") from None
    if args.watch_container_credentials_config:
        path = Path(args.watch_container_credentials_config)
        try:
            store.set_container_credentials(parse_identities(path.read_bytes()))
        except (OSError, ContainerCredentialsError) as err:
            raise UsageError(f"--watch-container-credentials-config {path}: {err}") from None
    return store


def run(args: argparse.Namespace) -> int:
    logs.configure(args.verbosity, args.log_format, quiet=True)
    if args.update_expected and not args.expect:
        raise UsageError("--update-expected needs --expect DIR")
    store = build_store(args)
    expect_dir = Path(args.expect) if args.expect else None
    if expect_dir is not None and args.update_expected:
        expect_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    count = 0
    out = sys.stdout
    seen: set[str] = set()
    for case in read_cases(args.inputs):
        count += 1
        if expect_dir is not None:
            if case.name in seen:
                raise UsageError(
                    f"two inputs are both named {case.name!r} for --expect; "
                    "pass the directory that holds them instead"
                )
            seen.add(case.name)
        outcome = review(case.body, store, store.settings)
        response = orjson.loads(outcome.body)
        if args.output == "response":
            out.write(outcome.body.decode() + "\n")
        else:
            before, after = _pods(case, response)
            if args.output == "pod":
                out.write(orjson.dumps(after).decode() + "\n")
            else:
                out.write(_diff(case, before, after))
        if expect_dir is None:
            continue
        expected_file = expect_dir / f"{case.name}.json"
        if args.update_expected:
            expected_file.parent.mkdir(parents=True, exist_ok=True)
            expected_file.write_bytes(orjson.dumps(response, option=orjson.OPT_INDENT_2) + b"\n")
            continue
        if not expected_file.exists():
            failures += 1
            print(f"MISSING {case.name}: no {expected_file}", file=sys.stderr)
            continue
        expected = orjson.loads(expected_file.read_bytes())
        if expected != response:
            failures += 1
            exp, got = _readable(expected), _readable(response)
            diff = "\n".join(difflib.unified_diff(exp, got, "expected", "actual", lineterm=""))
            print(f"DIFFERENT {case.name}:\n{diff}", file=sys.stderr)
    if count == 0:
        raise UsageError("no admission reviews found in the inputs")
    if expect_dir is not None and not args.update_expected:
        print(f"replay: {count - failures} of {count} matched {expect_dir}", file=sys.stderr)
    return 1 if failures else 0
