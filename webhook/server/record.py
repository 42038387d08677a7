"""`serve --record-dir`: keep each review (request and our answer) for `replay`, off the hot path.

The /mutate handler calls `Recorder.record` with the body it already read and its answer,
which offers them to a bounded queue; a full queue drops the review and counts it
(`pod_identity_webhook_record_dropped_total`), so recording can never block or slow /mutate.
A writer thread does everything else: decoding, redaction, JSON, file writes, rotation, gzip.

Files: DIR/reviews.jsonl is written; at a tenth of --record-max-bytes it is gzipped to
DIR/reviews-<UTC time>-<n>.jsonl.gz and the oldest rotations are removed while the directory's
record files exceed --record-max-bytes. Each line is one JSON object: `{"kind":
"RecordedReview", "time": ..., "request": <AdmissionReview>, "response": <AdmissionReview>}`.

Redaction (default on): every literal env `value` of the pod, and the
`kubectl.kubernetes.io/last-applied-configuration` annotation (which repeats them), become
`redacted:hmac-sha256:<16 hex>`, keyed by DIR/.redaction-key (created once, mode 0600): equal
values stay equal and different ones different, so replay still sees both, but a value cannot
be guessed from its hash without the key. `--record-env-values` keeps them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import logging
import os
import queue
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

RECORD_KIND = "RecordedReview"
CURRENT = "reviews.jsonl"
ROTATION_GLOB = "reviews-*.jsonl.gz"
KEY_FILE = ".redaction-key"
SEGMENTS = 10  # a file rotates at max_bytes / SEGMENTS
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_Item = tuple[float, bytes, bytes]  # (time.time(), request, response)


@dataclass(frozen=True, slots=True)
class RecordSettings:
    directory: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    sample: float = 1.0  # the fraction of reviews kept
    redact: bool = True
    queue_size: int = 1024
    queue_bytes: int = 64 * 1024 * 1024  # bounds memory too: reviews can be megabytes each


def _redaction_key(directory: Path) -> bytes:
    path = directory / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


class Redactor:
    """Literal env values to keyed hashes; everything else is kept."""

    def __init__(self, key: bytes) -> None:
        self.keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per value: no re-keying

    def hash(self, value: str) -> str:
        mac = self.keyed.copy()
        mac.update(value.encode())
        return f"redacted:hmac-sha256:{mac.hexdigest()[:16]}"

    def pod(self, pod: Any) -> None:
        if not isinstance(pod, dict):
            return
        meta = pod.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        if isinstance(annotations, dict) and isinstance(annotations.get(LAST_APPLIED), str):
            annotations[LAST_APPLIED] = self.hash(annotations[LAST_APPLIED])
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return
        for group in _CONTAINER_LISTS:
            for container in spec.get(group) or []:
                for var in (container.get("env") or []) if isinstance(container, dict) else []:
                    if isinstance(var, dict) and isinstance(var.get("value"), str):
                        var["value"] = self.hash(var["value"])

    def review(self, review: Any) -> None:
        request = review.get("request") if isinstance(review, dict) else None
        if isinstance(request, dict):
            self.pod(request.get("object"))
            self.pod(request.get("oldObject"))


class RotatingFile:
    """DIR/reviews.jsonl, gzipped into rotations within a total size budget."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment = max(1, max_bytes // SEGMENTS)
        self.path = directory / CURRENT
        self.file = self.path.open("ab")
        self.size = self.path.stat().st_size
        self.rotations = 0

    def write(self, line: bytes) -> None:
        self.file.write(line)
        self.size += len(line)
        if self.size >= self.segment:
            self.rotate()

    def flush(self) -> None:
        self.file.flush()

    def rotate(self) -> None:
        self.file.close()
        self.rotations += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = self.directory / f"reviews-{stamp}-{os.getpid()}-{self.rotations:04d}.jsonl.gz"
        with self.path.open("rb") as source, gzip.open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
        self.path.unlink()
        self.file = self.path.open("ab")
        self.size = 0
        self._prune()

    def _prune(self) -> None:
        rotated = sorted(self.directory.glob(ROTATION_GLOB), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in rotated) + self.size
        while rotated and total > self.max_bytes:
            oldest = rotated.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()

    def close(self) -> None:
        self.file.close()


class Recorder:
    """Bounded queue in, one writer thread out. `offer` never blocks."""

    def __init__(
        self,
        settings: RecordSettings,
        registry: CollectorRegistry | None = None,
        chance: Callable[[], float] = random.random,
    ) -> None:
        settings.directory.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.chance = chance
        self.queue: queue.Queue[_Item | None] = queue.Queue(settings.queue_size)  # None: stop
        self.queued_bytes = 0
        self.bytes_lock = threading.Lock()
        self.redactor = Redactor(_redaction_key(settings.directory)) if settings.redact else None
        self.file = RotatingFile(settings.directory, settings.max_bytes)
        self.recorded = Counter(
            "pod_identity_webhook_recorded",
            "Reviews written to --record-dir.",
            registry=registry,
        )
        self.dropped = Counter(
            "pod_identity_webhook_record_dropped",
            "Reviews not recorded because the recorder's queue was full.",
            registry=registry,
        )
        self.thread = threading.Thread(target=self._run, name="review-recorder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def sampled(self) -> bool:
        sample = self.settings.sample
        return sample >= 1.0 or (sample > 0.0 and self.chance() < sample)

    def record(self, request: bytes, response: bytes) -> None:
        """The hook /mutate calls with each review answered 200 (WebhookContext.record)."""
        if self.sampled():
            self.offer(request, response)

    def offer(self, request: bytes, response: bytes) -> None:
        size = len(request) + len(response)
        with self.bytes_lock:
            if self.queued_bytes + size > self.settings.queue_bytes:
                self.dropped.inc()
                return
            self.queued_bytes += size
        try:
            self.queue.put_nowait((time.time(), request, response))
        except queue.Full:
            with self.bytes_lock:
                self.queued_bytes -= size
            self.dropped.inc()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop; a stuck disk cannot hold up shutdown past timeout."""
        if not self.thread.is_alive():
            self.file.close()
            return
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)

    def line(self, when: float, request: bytes, response: bytes) -> bytes:
        review = orjson.loads(request)
        if self.redactor is not None:
            self.redactor.review(review)
        head = {
            "kind": RECORD_KIND,
            "time": datetime.fromtimestamp(when, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "request": review,
        }
        # Our answer is compact JSON from orjson: embedded as it is, not parsed again.
        return orjson.dumps(head)[:-1] + b',"response":' + response.strip() + b"}\n"

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            when, request, response = item
            with self.bytes_lock:
                self.queued_bytes -= len(request) + len(response)
            try:
                self.file.write(self.line(when, request, response))
                self.recorded.inc()
            except Exception as err:  # an unparsable body, a full disk: the writer lives on
                log.error("recording a review failed: %s", err)
            if self.queue.empty():
                self.file.flush()
        self.file.close()
