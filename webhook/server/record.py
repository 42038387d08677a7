"""`serve --record-dir`: keep each review (request and our answer) for `replay`, off the hot path.

The /mutate handler calls `Recorder.record` with the body it already read and its answer,
which offers them to a bounded queue; a full queue drops the review and counts it
(`pod_identity_webhook_record_dropped_total`), so recording can never block or slow /mutate.
A writer thread does everything else: decoding, redaction, JSON, file writes, rotation, gzip.

Files: DIR/reviews.jsonl is written; at a tenth of --record-max-bytes it is gzipped to
DIR/reviews-<UTC time>-<n>.jsonl.gz and the oldest rotations are removed while the directory's
record files exceed --record-max-bytes. Each line is one JSON object: `{"kind":
"RecordedReview", "time": ..., "request": <AdmissionReview>, "response": <AdmissionReview>}`.

Redaction (default on): every literal env `value` of the pod, every element of each
container's `command` and `args`, and the `kubectl.kubernetes.io/last-applied-configuration`
annotation (which repeats them), become `redacted:hmac-sha256:<16 hex>`: equal values stay equal
and different ones different, so replay still sees both, but a value cannot be tested against
its hash without the key. The key is never written into DIR (whoever gets a copy of DIR must not
hold it): it is read from `--record-redaction-key-file` (a mounted Secret: stable across restarts
and replicas), or else drawn at start and kept in the process only (hashes then match within one
run). `--record-env-values` keeps everything as it was.
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
LEGACY_KEY_FILE = ".redaction-key"  # where earlier versions kept the key, inside DIR
MIN_KEY_BYTES = 16
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
    key_file: Path | None = None  # None: a key that lives only in this process


class RedactionKeyError(ValueError):
    """The redaction key file is unusable: one line naming the file and why."""


def read_redaction_key(path: Path) -> bytes:
    """The key in `path` (a Secret's file: raw bytes or text; a trailing newline is dropped)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise RedactionKeyError(f"{path}: the file does not exist") from None
    except OSError as err:
        raise RedactionKeyError(f"{path}: {err.strerror or err}") from None
    key = key.rstrip(b"\r\n")
    if len(key) < MIN_KEY_BYTES:
        raise RedactionKeyError(
            f"{path}: {len(key)} bytes; a redaction key needs at least {MIN_KEY_BYTES} "
            "(e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key


def redaction_key(settings: RecordSettings) -> bytes:
    """The key from settings.key_file, or a fresh one kept only in memory. Never from DIR."""
    if (settings.directory / LEGACY_KEY_FILE).exists():
        log.warning(
            "%s holds a redaction key written by an earlier version; it is no longer used "
            "(a key inside the directory lets whoever copies it test guesses): delete it",
            settings.directory / LEGACY_KEY_FILE,
        )
    if settings.key_file is not None:
        return read_redaction_key(settings.key_file)
    return secrets.token_bytes(32)


class Redactor:
    """Literal env values, command and args to keyed hashes; everything else is kept."""

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
            containers = spec.get(group)
            for container in containers if isinstance(containers, list) else []:
                if isinstance(container, dict):
                    self.container(container)

    def container(self, container: dict[str, Any]) -> None:
        env = container.get("env")
        for var in env if isinstance(env, list) else []:
            if isinstance(var, dict) and isinstance(var.get("value"), str):
                var["value"] = self.hash(var["value"])
        for field in ("command", "args"):
            words = container.get(field)
            if isinstance(words, list):
                container[field] = [
                    self.hash(word) if isinstance(word, str) else word for word in words
                ]

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
        self.redactor = Redactor(redaction_key(settings)) if settings.redact else None
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
