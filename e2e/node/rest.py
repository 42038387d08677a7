"""Plain JSON requests to the API server as admin (stdlib only, dicts in and out).

Tests read better with manifests as dicts than with the client's model classes, and
they can assert on exactly what the API server stored.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ApiError", "Rest"]


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]!r}")
        self.status = status


class Rest:
    def __init__(self, url: str, ca: Path, cert: Path, key: Path) -> None:
        self.url = url
        self._files = (ca, cert, key)

    @functools.cached_property
    def _ssl(self) -> ssl.SSLContext:
        ca, cert, key = self._files
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        """(status, body); no raise on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, raw = self.request(method, path, body)
        if status // 100 != 2:
            raise ApiError(method, path, status, raw)
        return json.loads(raw)

    def get(self, path: str) -> Any:
        return self._json("GET", path)

    def create(self, collection_path: str, obj: dict[str, Any]) -> Any:
        """POSTs `obj`; returns what the API server stored (after admission)."""
        return self._json("POST", collection_path, obj)

    def delete(self, path: str) -> None:
        status, raw = self.request("DELETE", path)
        if status not in (200, 202, 404):
            raise ApiError("DELETE", path, status, raw)

    def wait_for(self, path: str, timeout: float = 30.0) -> Any:
        """GETs `path` until it exists (e.g. what a controller is expected to create)."""
        deadline = time.monotonic() + timeout
        while True:
            status, raw = self.request("GET", path)
            if status == 200:
                return json.loads(raw)
            if status != 404 or time.monotonic() > deadline:
                raise ApiError("GET", path, status, raw)
            time.sleep(0.2)
