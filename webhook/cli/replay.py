"""`pod-identity-webhook replay`: run captured admission requests through the same pipeline
as the server, offline, to see or check what a change would do before it reaches a cluster.

INPUT: AdmissionReview files (JSON or YAML, one or several documents), directories of them,
`-` for stdin, Kubernetes audit logs (JSON lines; pod `create` events with `requestObject`), or
manifests: Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets,
Jobs and CronJobs (`helm template ... | replay --objects sa.yaml -`), each replayed as the pod
CREATE its controller would send.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from webhook.cli import PROG, UsageError, flags, logs, replay_cluster, replay_results
from webhook.cli.common import add_output_flag
from webhook.cli.replay_inputs import Case, ManifestOptions, read_cases
from webhook.cli.replay_recorded import RecordedExpectations
from webhook.cli.replay_select import not_sent_response, selection_from
from webhook.core.configmap import ConfigMapError
from webhook.core.settings import CONFIG_MAP_NAME
from webhook.review import review
from webhook.sources.container_credentials import ContainerCredentialsError, parse_identities
from webhook.sources.objects import READ_KINDS, ObjectsError, ObjectsSource, load_objects
from webhook.sources.store import IdentityStore

HELP = "replay captured AdmissionReviews or audit logs offline, through the server's code path"


def normalize_argv(argv: Sequence[str]) -> list[str]:
    return flags.normalize_argv(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        dest="scope_namespaces",
        metavar="NS",
        help="replay only the reviews of pods in this namespace, and with --from-cluster read "
        "only it (repeatable; default: all). As in audit and kubectl; the server's --namespace "
        "(the ConfigMap's) is --webhook-namespace here",
    )
    flags.add_mutation_flags(parser, config_map_namespace_flag="--webhook-namespace")
    # klog's other flags are accepted (a server's flag list replays as is) but not listed.
    flags.add_klog_flags(parser, list_compat=False)
    add_output_flag(
        parser,
        ("response", "pod", "diff", *replay_results.TABLE_OUTPUTS),
        help_text="response: AdmissionReview JSON lines (default; with --expect or "
        "--expect-recorded none: only the differences and the summary); pod: mutated pods; "
        "diff: unified diffs; wide: a table per review and per namespace; json: one "
        "document with every review and the counts",
    )
    parser.set_defaults(output=None)  # not given: see _output
    replay_results.add_arguments(parser)
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
        "--expect-recorded",
        action="store_true",
        help="compare responses with those stored by `serve --record-dir`; exit 1 on any "
        "difference",
    )
    parser.add_argument(
        "--manifest-namespace",
        default="default",
        metavar="NS",
        help="namespace for manifests without metadata.namespace (default: default, as kubectl)",
    )
    parser.add_argument(
        "--webhook-config",
        metavar="FILE",
        help="a MutatingWebhookConfiguration (the chart's): apply its rules, selectors and "
        "matchConditions as the API server would, and report the reviews it would not send",
    )
    replay_cluster.add_arguments(parser)
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="review file, directory, audit log, manifest, record file, or - for stdin "
        "(none needed with --from-cluster)",
    )


def warn(message: str) -> None:
    print(f"{PROG} replay: warning: {message}", file=sys.stderr)


class Problems:
    """Inputs that could not be replayed: reported at once, and they make the exit code 2."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        print(f"{PROG} replay: error: {message}", file=sys.stderr)


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
            lines(before), lines(after), f"{case.label} (original)", f"{case.label} (mutated)"
        )
    )
    if not diff:
        return f"# {case.label}: unchanged\n"
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


def _objects_hints(args: argparse.Namespace) -> None:
    """Warn about each --objects document that is not read (a mistyped kind would otherwise
    show up only as every ServiceAccount missing), and when --objects holds the webhook's
    ConfigMap but ConfigMap mode is off."""
    try:
        objects = load_objects(args.objects, args.webhook_namespace)
    except ObjectsError:
        return  # only the ConfigMap itself is unreadable, and it is not used
    for kind, where in objects.skipped:
        close = difflib.get_close_matches(kind, READ_KINDS, n=1, cutoff=0.6)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        warn(
            f"--objects {where}: kind {kind!r} skipped, only ServiceAccount and ConfigMap "
            f"are read{hint}"
        )
    if args.watch_config_map:
        return
    if objects.config_map_document is not None:
        warn(
            f"--objects has the {args.webhook_namespace}/{CONFIG_MAP_NAME} ConfigMap, but it is "
            "ignored without --watch-config-map"
        )


def build_store(args: argparse.Namespace) -> IdentityStore:
    settings = flags.settings_from_args(args)
    store = IdentityStore(settings)
    if args.objects:
        try:
            ObjectsSource(
                args.objects, store, args.webhook_namespace if args.watch_config_map else None
            ).load()
        except (ObjectsError, ConfigMapError) as err:
            raise UsageError(f"--objects: {err}") from None
        _objects_hints(args)
    elif not args.watch_container_credentials_config:
        warn(
            "no --objects: no ServiceAccount is known, so no pod gets a role "
            "(capture them with `kubectl get sa,cm -A -o yaml > objects.yaml`)"
        )
    if args.watch_container_credentials_config:
        path = Path(args.watch_container_credentials_config)
        try:
            store.set_container_credentials(parse_identities(path.read_bytes()))
        except (OSError, ContainerCredentialsError) as err:
            raise UsageError(f"--watch-container-credentials-config {path}: {err}") from None
    return store


class Expectations:
    """--expect DIR: compare each response with DIR/<key>.json, or (re)write them."""

    def __init__(self, directory: Path, update: bool) -> None:
        self.directory = directory
        self.update = update
        self.failures = 0
        self.written: Counter[str] = Counter()  # new, changed, unchanged
        self.keys: set[str] = set()
        if update:
            directory.mkdir(parents=True, exist_ok=True)

    def check(self, case: Case, response: dict[str, Any]) -> None:
        if case.key in self.keys:
            raise UsageError(
                f"two inputs are both named {case.key!r} for --expect; "
                "pass the directory that holds them instead"
            )
        self.keys.add(case.key)
        file = self.directory / f"{case.key}.json"
        if self.update:
            encoded = orjson.dumps(response, option=orjson.OPT_INDENT_2) + b"\n"
            old = file.read_bytes() if file.exists() else None
            self.written[
                "new" if old is None else "unchanged" if old == encoded else "changed"
            ] += 1
            if old != encoded:
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(encoded)
            return
        if not file.exists():
            self.failures += 1
            print(f"MISSING {case.label}: no {file}", file=sys.stderr)
            return
        expected = orjson.loads(file.read_bytes())
        if expected != response:
            self.failures += 1
            exp, got = _readable(expected), _readable(response)
            diff = "\n".join(difflib.unified_diff(exp, got, "expected", "actual", lineterm=""))
            print(f"DIFFERENT {case.label} ({file}):\n{diff}", file=sys.stderr)

    def summary(self, count: int) -> str:
        if not self.update:
            return f"replay: {count - self.failures} of {count} matched {self.directory}"
        counts = ", ".join(f"{self.written[k]} {k}" for k in ("new", "changed", "unchanged"))
        return f"replay: wrote {count} expected response(s) to {self.directory} ({counts})"


def _output(args: argparse.Namespace) -> str:
    """-o as given; else "none" when checking (--expect, --expect-recorded: the differences
    and the summary are the result), "response" otherwise."""
    if args.output is not None:
        return str(args.output)
    checking = (args.expect and not args.update_expected) or args.expect_recorded
    return "none" if checking else "response"


def _write_not_sent(output: str, case: Case, description: str) -> None:
    """The API server keeps the review: no response exists, the pod is created as it is."""
    if output == "none":
        return
    if output == "pod":
        before, _ = _pods(case, {})
        sys.stdout.write(orjson.dumps(before).decode() + "\n")
    elif output == "diff":
        sys.stdout.write(f"# {case.label}: {description}\n")
    if output != "diff":
        print(f"{PROG} replay: {case.label}: {description}", file=sys.stderr)


def _offline_reason(reason: str, args: argparse.Namespace) -> str:
    """The server's words for a ServiceAccount it does not know name its cache; offline, the
    accounts are what --objects (or the cluster read by --from-cluster) held."""
    if "not in the cache" not in reason:
        return reason
    where = "not among the cluster's ServiceAccounts" if args.from_cluster else "not in --objects"
    return reason.replace("not in the cache", where)


def _nothing_mutated(reasons: Counter[str]) -> str:
    """Why none of the reviews got a patch, most common reason first."""
    listed = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(5))
    more = len(reasons) - 5
    return f"no review was mutated: {listed}" + (f"; {more} other reason(s)" if more > 0 else "")


def _without_review_notices(record: logging.LogRecord) -> bool:
    """Drop webhook.review's lines below ERROR (its denials); keep everything else."""
    review_line = record.name == "webhook.review" or record.name.startswith("webhook.review.")
    return not review_line or record.levelno >= logging.ERROR


def run(args: argparse.Namespace) -> int:
    logs.configure(args.verbosity, args.log_format, quiet=True)
    if args.verbosity == 0:
        # Every answer is on stdout already; the server's denial log lines would repeat them.
        # A filter on the handler configure() just installed, not a level on the logger: a
        # level would outlive this run and silence webhook.review for the rest of the process.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_without_review_notices)
    if args.update_expected and not args.expect:
        raise UsageError("--update-expected needs --expect DIR")
    args.output = _output(args)
    replay_cluster.prepare(args, warn)
    store = build_store(args)
    expectations = Expectations(Path(args.expect), args.update_expected) if args.expect else None
    recorded = RecordedExpectations() if args.expect_recorded else None
    problems = Problems()
    recorder = replay_results.Recorder(args, store, store.settings)
    selection = selection_from(args.webhook_config, args.objects or [], warn)
    out = sys.stdout
    count = 0
    unmutated: Counter[str] = Counter()
    manifests = ManifestOptions(namespace=args.manifest_namespace)
    scope = set(args.scope_namespaces or ())
    out_of_scope: Counter[str] = Counter()
    for case in read_cases(args.inputs, problems, warn, manifests):
        if scope and (namespace := replay_results.namespace_of(case.body)) not in scope:
            out_of_scope[namespace or "(none)"] += 1
            continue
        count += 1
        decision = selection.decide(case) if selection is not None else None
        if decision is not None and not decision.sent:
            unmutated[decision.describe()] += 1
            _write_not_sent(args.output, case, decision.describe())
            recorder.not_sent(
                case.key, case.label, replay_results.namespace_of(case.body), decision.describe()
            )
            if expectations is not None:
                expectations.check(case, not_sent_response(decision))
            continue
        outcome = review(case.body, store, store.settings)
        outcome.reason = _offline_reason(outcome.reason, args)
        if not outcome.mutated:
            unmutated[outcome.reason] += 1
        response = orjson.loads(outcome.body)
        before, after = _pods(case, response)
        if args.output == "response":
            out.write(outcome.body.decode() + "\n")
        elif args.output == "pod":
            out.write(orjson.dumps(after).decode() + "\n")
        elif args.output == "diff":
            out.write(_diff(case, before, after))
        recorder.record(case.key, case.label, case.body, outcome, before, after)
        if expectations is not None:
            expectations.check(case, response)
        if recorded is not None:
            recorded.check(case, response)
    if count == 0:
        if problems.count:
            return 2
        if out_of_scope:
            seen = ", ".join(f"{n} in {ns}" for ns, n in sorted(out_of_scope.items()))
            raise UsageError(
                f"-n/--namespace {','.join(sorted(scope))}: no review in that scope "
                f"(the inputs hold {seen}); -n is the pods' namespace, as in audit and kubectl: "
                "the server's --namespace (the ConfigMap's) is --webhook-namespace here"
            )
        raise UsageError("no admission reviews found in the inputs")
    if out_of_scope:
        warn(
            f"-n/--namespace: skipped {sum(out_of_scope.values())} review(s) of pods in other "
            "namespaces"
        )
    if unmutated and sum(unmutated.values()) == count:
        warn(_nothing_mutated(unmutated))
    if expectations is not None:
        print(expectations.summary(count), file=sys.stderr)
    if recorded is not None:
        print(recorded.summary(), file=sys.stderr)
    undocumented = recorder.finish(args.output, problems.count)
    if problems.count:
        return 2
    if recorded is not None and recorded.failures:
        return 1
    return 1 if undocumented or (expectations is not None and expectations.failures) else 0
