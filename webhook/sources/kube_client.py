"""The Kubernetes API client the sources and the toolkit share: raw JSON requests, chunked
bodies and watch streams through the kubernetes client's configuration (auth, TLS), rate
limited as upstream's client (QPS and burst 50), with the API server's Status messages decoded
into errors a person can read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import urllib3

QPS = 50  # upstream's client QPS and burst
WATCH_TIMEOUT_SECONDS = 300


class KubeSourceError(RuntimeError):
    pass


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                delay = (1 - self.tokens) / self.rate
            time.sleep(delay)


def kube_configuration(kubeconfig: str = "", api_url: str = "") -> Any:
    """A kubernetes.client.Configuration: in-cluster unless --kubeconfig or --kube-api."""
    from kubernetes import client, config

    try:
        if kubeconfig or api_url:
            configuration = client.Configuration()
            if kubeconfig:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=configuration
                )
            if api_url:
                configuration.host = api_url
            return configuration
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.Configuration.get_default_copy()
    except Exception as err:
        where = kubeconfig or api_url or "the in-cluster service account"
        raise KubeSourceError(
            f"cannot configure the Kubernetes client from {where}: {str(err).rstrip('.')}. "
            "Out of cluster, pass --kubeconfig or --kube-api"
        ) from None


class KubeAPIError(KubeSourceError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_message(body: bytes) -> str:
    """What a person needs from an error body: a metav1.Status's message (and reason), or
    the start of the text — never escaped JSON."""
    try:
        status = orjson.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        message = str(status.get("message") or "").strip()
        reason = str(status.get("reason") or "").strip()
        if message and reason:
            return f"{message} (reason {reason})"
        if message or reason:
            return message or reason
    text = body[:300].decode(errors="replace").strip()
    return " ".join(text.split()) or "(empty body)"


class KubeClient:
    """Raw JSON requests and watch streams through the kubernetes client's auth and TLS."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client
        self.limiter = TokenBucket(QPS, QPS)

    def close(self) -> None:
        """Close the kubernetes client's connection pool (`ApiClient.close`)."""
        self.api.close()

    def open(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        timeout: float | tuple[float, float],
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """An unread urllib3 response the caller releases; KubeAPIError for HTTP >= 400."""
        self.limiter.wait()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        # param_serialize applies the configured auth (bearer token, refreshed when the
        # configuration has a refresh hook); client certificates live in the pool manager.
        _, url, headers, _, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        response = self.api.rest_client.pool_manager.request(
            method,
            url,
            headers=headers,
            body=body,
            preload_content=False,
            timeout=urllib3.Timeout(connect=connect, read=read),
            # Our loops retry (with backoff, one log line each); urllib3's own silent
            # retries would triple every outage's wait and log their own warnings.
            retries=False,
        )
        if response.status >= 400:
            try:
                detail = status_message(response.read(64 * 1024))
            finally:
                response.release_conn()
            raise KubeAPIError(
                response.status, f"{method} {path}: HTTP {response.status}: {detail}"
            )
        return response

    def request_json(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        data = None if body is None else orjson.dumps(body)
        response = self.open(method, path, query or [], timeout, data, content_type)
        try:
            return orjson.loads(response.read())
        finally:
            response.release_conn()

    def get_json(
        self, path: str, query: list[tuple[str, str]] | None = None, timeout: float = 30.0
    ) -> Any:
        return self.request_json("GET", path, query, timeout=timeout)

    def get_bytes(
        self, path: str, query: list[tuple[str, str]] | None = None, timeout: float = 30.0
    ) -> bytes:
        """The raw body of a GET, for callers that decode it themselves."""
        response = self.open("GET", path, query or [], timeout)
        try:
            return bytes(response.read())
        finally:
            response.release_conn()

    def get_chunks(
        self, path: str, query: list[tuple[str, str]] | None = None, timeout: float = 30.0
    ) -> Iterator[bytes]:
        """The body of a GET as it arrives, in chunks of up to 256 KB."""
        response = self.open("GET", path, query or [], timeout)
        complete = False
        try:
            yield from response.stream(256 * 1024, decode_content=True)
            complete = True
        finally:
            if not complete:
                response.close()  # not back into the pool with half a body unread
            response.release_conn()

    def watch(
        self, path: str, query: list[tuple[str, str]], stop: threading.Event
    ) -> Iterator[dict[str, Any]]:
        response = self.open(
            "GET", path, [*query, ("watch", "true")], (10.0, WATCH_TIMEOUT_SECONDS + 30.0)
        )
        buffer = b""
        try:
            for chunk in response.stream(64 * 1024, decode_content=True):
                if stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
        finally:
            response.release_conn()


def status_code(error: Exception) -> int | None:
    """The HTTP status an error carries (KubeAPIError), if any."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None
