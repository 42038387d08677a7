"""What `replay` reads: AdmissionReview files, directories of them, stdin, audit logs,
manifests (Pods and workloads, as `kubectl apply -f` or `helm template` output has them), and
`serve --record-dir` files (with their `.gz` rotations).

Each review becomes a `Case` with two names: `key`, stable and unique per input (the file stem,
or the auditID within an audit log), which names its `--expect` file; and `label`, the pod it
is about (`namespace/pod`, plus the auditID or the workload), which every message shows.
Inputs that are not reviews are reported with the file (and line) they came from instead of
being replayed; Kubernetes objects that hold no pod (Services, ConfigMaps, ...) are skipped.
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from webhook.cli import UsageError
from webhook.review import V1
from webhook.server.record import RECORD_KIND
from webhook.toolkit.manifests import ManifestError, is_pod_source, pod_review

SUFFIXES = (".json", ".yaml", ".yml", ".jsonl", ".log", ".gz")
Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Case:
    key: str  # names DIR/<key>.json for --expect
    label: str  # the pod, for people
    body: bytes
    recorded: bytes | None = None  # the answer `serve --record-dir` stored with the request


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def pod_label(review: Any) -> str:
    """`namespace/pod` (generateName for pods the API server will name), as kubectl shows."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict):
        return "?"
    pod = request.get("object")
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = _text(meta.get("name")) or _text(meta.get("generateName")) or "?"
    return f"{_text(request.get('namespace')) or '?'}/{name}"


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


@dataclass(frozen=True, slots=True)
class ManifestOptions:
    namespace: str = "default"  # for manifests without metadata.namespace
    now: datetime | None = None  # names CronJobs' Jobs; None: the current time


@dataclass(slots=True)
class _Found:
    review: dict[str, Any]
    audit_id: str | None = None
    exact: bool = False  # the input's bytes are this review, as the API server sent them
    origin: str | None = None  # the manifest it was built from: "Deployment ns/name"
    recorded: dict[str, Any] | None = None  # the server's answer, from a record file


def _is_kube_object(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and isinstance(document.get("apiVersion"), str)
        and isinstance(document.get("kind"), str)
        and isinstance(document.get("metadata"), dict)
    )


def _describe(document: Any) -> str:
    if isinstance(document, dict):
        kind = document.get("kind")
        return f"a {kind}" if isinstance(kind, str) and kind else "an object without kind"
    return "null" if document is None else f"a {type(document).__name__}"


class _Reader:
    """Reads one input, collecting the reviews and reporting what is not one."""

    def __init__(self, label: str, error: Report, warn: Report, manifests: ManifestOptions) -> None:
        self.label = label
        self.error = error
        self.warn = warn
        self.manifests = manifests
        self.events = 0  # audit events seen, to explain an audit log without pod creates
        self.skipped: Counter[str] = Counter()  # objects without a pod, by kind

    def documents(self, document: Any, where: str) -> Iterator[_Found]:
        if isinstance(document, list):
            for index, item in enumerate(document):
                item_where = f"item {index + 1} of {where}" if where else f"item {index + 1}"
                yield from self.documents(item, item_where)
            return
        kind = document.get("kind") if isinstance(document, dict) else None
        if kind == "AdmissionReview":
            yield _Found(document)
        elif kind == "Event" and "auditID" in document:
            self.events += 1
            converted = _audit_event_review(document)
            if converted is not None:
                yield _Found(converted, _text(document.get("auditID")))
        elif kind in ("EventList", "List") and isinstance(document.get("items"), list):
            yield from self.documents(document["items"], where)
        elif kind == RECORD_KIND and isinstance(document.get("request"), dict):
            response = document.get("response")
            yield _Found(
                document["request"], recorded=response if isinstance(response, dict) else None
            )
        elif is_pod_source(document):
            try:
                built = pod_review(document, self.manifests.namespace, self.manifests.now)
            except ManifestError as err:
                self.error(f"{self.label}: {where or 'the input'}: {err}")
                return
            yield _Found(built.review, origin=built.origin)
        elif _is_kube_object(document):
            self.skipped[str(kind)] += 1
        else:
            self.error(
                f"{self.label}: {where or 'the input'} is {_describe(document)}, "
                "not an AdmissionReview, a Kubernetes audit event, or a Kubernetes object "
                "(Pods and workloads are replayed, other objects skipped)"
            )

    def json_lines(self, lines: list[tuple[int, bytes]]) -> Iterator[_Found]:
        last = lines[-1][0]
        for number, line in lines:
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                if number == last:
                    self.warn(
                        f"{self.label}: line {number} is not complete JSON (a log still being "
                        "written?); replayed the lines before it"
                    )
                else:
                    self.error(f"{self.label}: line {number} is not JSON: {err}")
                continue
            yield from self.documents(document, f"line {number}")

    def read(self, data: bytes) -> Iterator[_Found]:
        try:
            whole = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(whole, dict) and whole.get("kind") == "AdmissionReview":
                yield _Found(whole, exact=True)
            else:
                yield from self.documents(whole, "")
            return
        numbered = [(i + 1, line) for i, line in enumerate(data.splitlines()) if line.strip()]
        if not numbered:
            self.error(f"{self.label}: empty")
            return
        try:
            orjson.loads(numbered[0][1])
        except orjson.JSONDecodeError:
            pass
        else:
            yield from self.json_lines(numbered)  # JSON lines: an audit log
            return
        try:
            documents = list(yaml.safe_load_all(data))
        except yaml.YAMLError as err:
            raise UsageError(f"{self.label}: neither JSON, JSON lines nor YAML: {err}") from None
        many = len(documents) > 1
        for index, document in enumerate(documents):
            if document is None and many:
                continue  # an empty document between `---` lines, as helm template writes
            yield from self.documents(document, f"document {index + 1}" if many else "")


def _manifest_key(stem: str, origin: str) -> str:
    kind, _, where = origin.partition(" ")
    return f"{stem}/{kind.lower()}-{where.replace('/', '-')}"


def _cases(
    label: str, data: bytes, stem: str, error: Report, warn: Report, manifests: ManifestOptions
) -> Iterator[Case]:
    """`stem` makes keys unique per input file, so --expect files never collide."""
    reader = _Reader(label, error, warn, manifests)
    found = list(reader.read(data))
    if reader.skipped and not found:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(reader.skipped.items()))
        warn(f"{label}: no pod or workload, only objects that hold no pod ({kinds})")
    if reader.events and not found:
        warn(
            f"{label}: {reader.events} audit event(s), none a pod create with its requestObject "
            "(the audit policy must log pods at level Request or RequestResponse)"
        )
    single = len(found) == 1
    for index, item in enumerate(found):
        who = pod_label(item.review)
        if item.origin is not None:
            key = _manifest_key(stem, item.origin)
            display = f"{who} ({item.origin})"
        elif item.recorded is not None:
            uid = _text((item.review.get("request") or {}).get("uid"))
            key = stem if single else f"{stem}/{uid or f'{index + 1:04d}'}"
            display = f"{who} (uid {uid})" if uid else who
        elif item.audit_id is not None:
            key = stem if single else f"{stem}/{item.audit_id or f'{index + 1:04d}'}"
            display = f"{who} (auditID {item.audit_id})" if item.audit_id else who
        else:
            key = stem if single else f"{stem}-{index + 1:04d}"
            display = who
        try:
            recorded = orjson.dumps(item.recorded) if item.recorded is not None else None
            body = data if item.exact else orjson.dumps(item.review)
        except orjson.JSONEncodeError:
            # A lone UTF-16 surrogate escape (\ud800 without its pair): no Unicode text, and
            # the API server would not have sent it.
            error(
                f"{label}: {display}: a string holds a lone UTF-16 surrogate escape "
                "(\\ud800-\\udfff without its pair), which is not valid Unicode; not replayed"
            )
            continue
        yield Case(key, display, body, recorded)


def _stem(path: Path) -> Path:
    """reviews.jsonl.gz and reviews.jsonl both name `reviews`."""
    path = path.with_suffix("") if path.suffix == ".gz" else path
    return path.with_suffix("")


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:  # a rotation still being written, or not gzip at all
        raise UsageError(f"{path}: not a complete gzip file: {err}") from None


def read_cases(
    inputs: Sequence[str],
    error: Report,
    warn: Report,
    manifests: ManifestOptions | None = None,
) -> Iterator[Case]:
    """Every review in the inputs; `error` and `warn` receive what could not be replayed."""
    manifests = manifests or ManifestOptions()
    for item in inputs:
        if item == "-":
            yield from _cases("-", sys.stdin.buffer.read(), "stdin", error, warn, manifests)
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            for file in files:
                # Relative to the directory: a/review.json and b/review.json stay distinct.
                stem = _stem(file.relative_to(path)).as_posix()
                yield from _cases(str(file), _read(file), stem, error, warn, manifests)
        elif path.is_file():
            yield from _cases(str(path), _read(path), _stem(path).name, error, warn, manifests)
        else:
            raise UsageError(f"{item}: no such file or directory")
