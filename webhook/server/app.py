"""The two HTTP applications: HTTPS webhook (`/mutate`, `/healthz`, `/readyz`) and plain-HTTP
metrics (`/metrics`). Debug handlers exist only with --enable-debugging-handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

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


async def run_review(ctx: WebhookContext, body: bytes) -> Outcome:
    pending = parse_review(body)
    if not isinstance(pending, PendingReview):
        return pending
    lookup = await ctx.lookup.lookup(pending.namespace, pending.service_account)
    return finish_review(pending, lookup, ctx.settings)


class MutateEndpoint:
    """`/mutate` as a bare ASGI handler in front of the FastAPI app.

    Every pod creation in the cluster goes through here; FastAPI's routing and request
    objects cost about a third of our CPU per review (bench/stack.py), so the hot path
    skips them. Every other path is FastAPI's. Like upstream, any method reaches the
    handler and the Content-Type decides.
    """

    def __init__(self, ctx: WebhookContext, app: ASGIApp) -> None:
        self.ctx = ctx
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/mutate":
            await self.app(scope, receive, send)
            return
        ctx = self.ctx
        started = time.perf_counter()
        status = 200
        try:
            content_type = _header(scope, b"content-type")
            if not _is_json(content_type):
                status = 415
                log.error(
                    "Content-Type=%s, expected application/json",
                    (content_type or b"").decode("latin-1"),
                )
                await _send(
                    send, 415, b"Invalid Content-Type, expected `application/json`\n", _TEXT
                )
                return
            body = await _read_limited(scope, receive, ctx.max_request_bytes)
            if body is None:
                status = 413
                message = f"request body over {ctx.max_request_bytes} bytes (--max-request-bytes)\n"
                log.error("Request body too large: answered 413, %s", message.strip())
                await _send(send, 413, message.encode(), _TEXT)
                return
            try:
                outcome = await run_review(ctx, body)
            except Exception as err:  # a bug must never take the server down
                # A 500 lets the API server apply the configured failurePolicy; an answer
                # built without the request's uid and version would be rejected anyway.
                log_internal_error(body, err)
                status = 500
                await _send(send, 500, f"internal error while reviewing: {err}\n".encode(), _TEXT)
                return
            if outcome.method is not None:
                ctx.metrics.pod_identity_applied(outcome.method)
            elif outcome.missing_service_account:
                ctx.metrics.service_account_missing()
            await _send(send, 200, outcome.body, _JSON_TYPE)
        finally:
            ctx.metrics.observe_request(
                scope["method"], "/mutate", status, time.perf_counter() - started
            )


def create_webhook_app(ctx: WebhookContext) -> ASGIApp:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    metrics = ctx.metrics

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

    return MutateEndpoint(ctx, app)


def reject_response(message: str) -> Response:
    return Response(reject(message).body, media_type=_JSON)


def create_metrics_app(ctx: WebhookContext) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

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
