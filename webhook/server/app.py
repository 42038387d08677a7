"""The two HTTP applications: HTTPS webhook (`/mutate`, `/healthz`, `/readyz`) and plain-HTTP
metrics (`/metrics`). Debug handlers exist only with --enable-debugging-handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.telemetry import TelemetryConfig
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook.core.settings import MutationSettings
from webhook.review import (
    Outcome,
    PendingReview,
    finish_review,
    log_internal_error,
    parse_review,
    reject,
)
from webhook.server.grace import GraceLookup
from webhook.server.metrics import CONTENT_TYPE, Metrics
from webhook.sources.store import IdentityStore

log = logging.getLogger("webhook.requests")

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# FastAPI's native OpenTelemetry: off. Spans and logs of reviews would carry pod data
# nobody asked to export, and checking for configured providers costs every request.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
_JSON = "application/json"
_JSON_TYPE = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


@dataclass(slots=True)
class WebhookContext:
    settings: MutationSettings
    store: IdentityStore
    lookup: GraceLookup
    metrics: Metrics
    ready: Callable[[], bool]
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    debug_handlers: bool = False
    shutting_down: Callable[[], bool] = lambda: False
    # --record-dir: (request body, answer) of each review answered 200 (record.py)
    record: Callable[[bytes, bytes], None] | None = None


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_limited(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit`."""
    declared = _header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to /mutate: what to send, and the review's outcome when there was one."""

    status: int
    body: bytes
    content_type: bytes = _JSON_TYPE


class MutateHandler:
    """What /mutate does with a request: steps return a Reply; only a lookup that must wait
    for a ServiceAccount (the grace period) returns an awaitable instead."""

    def __init__(self, ctx: WebhookContext) -> None:
        self.ctx = ctx
        self.max_request_bytes = ctx.max_request_bytes

    def refuse(self, content_type: bytes | None, declared_length: bytes | None) -> Reply | None:
        """A 415 or 413 decided from the head alone, before any of the body is read."""
        if not _is_json(content_type):
            log.error(
                "Content-Type=%s, expected application/json",
                (content_type or b"").decode("latin-1"),
            )
            return Reply(415, b"Invalid Content-Type, expected `application/json`\n", _TEXT)
        too_long = declared_length is not None and declared_length.isdigit()
        if too_long and int(declared_length or b"0") > self.max_request_bytes:
            return self.too_large()
        return None

    def too_large(self) -> Reply:
        limit = self.max_request_bytes
        message = f"request body over {limit} bytes (--max-request-bytes)\n"
        log.error("Request body too large: answered 413, %s", message.strip())
        return Reply(413, message.encode(), _TEXT)

    def review(self, body: bytes) -> Reply | Coroutine[Any, Any, Reply]:
        try:
            pending = parse_review(body)
            if not isinstance(pending, PendingReview):
                return self._reviewed(pending)
            found = self.ctx.lookup.lookup_now(pending.namespace, pending.service_account)
            if found is None:
                return self._review_later(body, pending)
            return self._reviewed(finish_review(pending, found, self.ctx.settings))
        except Exception as err:  # a bug must never take the server down
            return self._failed(body, err)

    async def _review_later(self, body: bytes, pending: PendingReview) -> Reply:
        try:
            found = await self.ctx.lookup.lookup(pending.namespace, pending.service_account)
            return self._reviewed(finish_review(pending, found, self.ctx.settings))
        except Exception as err:
            return self._failed(body, err)

    def _reviewed(self, outcome: Outcome) -> Reply:
        if outcome.method is not None:
            self.ctx.metrics.pod_identity_applied(outcome.method)
        elif outcome.missing_service_account:
            self.ctx.metrics.service_account_missing()
        return Reply(200, outcome.body)

    def _failed(self, body: bytes, err: Exception) -> Reply:
        # A 500 lets the API server apply the configured failurePolicy; an answer built
        # without the request's uid and version would be rejected anyway.
        log_internal_error(body, err)
        return Reply(500, f"internal error while reviewing: {err}\n".encode(), _TEXT)

    def observe(self, method: str, status: int, started: float) -> None:
        self.ctx.metrics.observe_request(method, "/mutate", status, time.perf_counter() - started)


class MutateEndpoint:
    """`/mutate`, a raw ASGI endpoint on the FastAPI app's router (no request model: the
    review decoder reads the body itself). Like upstream, any method reaches it and the
    Content-Type decides. `record`, when set (`--record-dir`), is handed each request body
    and the answer of every review answered 200; when unset it costs one test."""

    def __init__(self, ctx: WebhookContext) -> None:
        self.ctx = ctx
        self.handler = MutateHandler(ctx)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handler
        started = time.perf_counter()
        status = 200
        try:
            reply = handler.refuse(
                _header(scope, b"content-type"), _header(scope, b"content-length")
            )
            if reply is None:
                body = await _read_limited(scope, receive, handler.max_request_bytes)
                if body is None:
                    reply = handler.too_large()
                else:
                    answer = handler.review(body)
                    reply = answer if isinstance(answer, Reply) else await answer
                    record = self.ctx.record
                    if record is not None and reply.status == 200:
                        record(body, reply.body)
            status = reply.status
            await _send(send, reply.status, reply.body, reply.content_type)
        finally:
            handler.observe(scope["method"], status, started)


class CloseWhileDraining:
    """From SIGTERM on, every answer says `Connection: close` (uvicorn then closes the
    connection after it), so a pooling client stops reusing it after an answer, never under
    a request it is sending."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.draining():
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


def create_webhook_app(ctx: WebhookContext) -> FastAPI:
    """The HTTPS application: `serve`, the in-process tests and the recorder all use it."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, telemetry=NO_TELEMETRY)
    app.add_middleware(CloseWhileDraining, draining=ctx.shutting_down)
    metrics = ctx.metrics
    # First on the router: every pod creation in the cluster comes here.
    # A class instance as a Route's endpoint is served as raw ASGI; no methods: any method.
    app.router.routes.append(Route("/mutate", MutateEndpoint(ctx), include_in_schema=False))

    @app.get("/healthz")
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> Response:
        if ctx.shutting_down():
            return PlainTextResponse("shutting down\n", 503)
        if ctx.ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("identity caches not synced yet\n", 503)

    if ctx.debug_handlers:

        @app.api_route("/debug/alpha/deny", methods=["GET", "POST"])
        async def deny() -> Response:
            metrics.observe_request("POST", "/debug/alpha/deny", 200, 0.0)
            return reject_response("Test deny message")

        @app.api_route("/debug/alpha/500", methods=["GET", "POST"])
        async def internal_error() -> Response:
            metrics.observe_request("POST", "/debug/alpha/500", 500, 0.0)
            return PlainTextResponse("test error\n", 500)

    return app


def reject_response(message: str) -> Response:
    return Response(reject(message).body, media_type=_JSON)


def create_metrics_app(ctx: WebhookContext) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, telemetry=NO_TELEMETRY)
    app.add_middleware(CloseWhileDraining, draining=ctx.shutting_down)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE)

    if ctx.debug_handlers:

        @app.get("/debug/alpha/cache")
        async def cache() -> Response:
            return Response(
                orjson.dumps(ctx.store.snapshot(), option=orjson.OPT_INDENT_2), media_type=_JSON
            )

        @app.api_route("/debug/alpha/cache/clear", methods=["GET", "POST"])
        async def clear() -> Response:
            refill = ctx.store.clear()  # relists in the background, as upstream's resync would
            return JSONResponse({"cleared": True, "refilling": refill is not None})

    return app
