"""`replay --against URL`: send each review also to another running webhook (the upstream Go
webhook a team runs today, or an older version of ours), apply both answers to the pod, and
classify the difference (webhook.toolkit.differences).

The exchange is the API server's: one POST of the AdmissionReview, the answer must echo the
request's uid, and a v1 answer must carry apiVersion/kind. Webhooks that only speak v1beta1
(upstream v0.6.17 answers without apiVersion/kind) are detected on the first answer and from
then on sent v1beta1 reviews, as an API server registered with `admissionReviewVersions:
[v1beta1]` would.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson

from webhook.core.identity import Source, resolve_identity
from webhook.core.settings import MutationSettings
from webhook.review import V1, V1BETA1, IdentityLookup
from webhook.toolkit.differences import Answer, Facts, Pod, Verdict, classify

VERSIONS = ("auto", "v1", "v1beta1")
_VERSION_NAMES = {"v1": V1, "v1beta1": V1BETA1}


class AgainstError(Exception):
    """The other webhook could not be asked, or its answer is not one the API server takes."""


@dataclass(slots=True)
class OtherWebhook:
    url: str
    ca_file: str | None = None
    timeout: float = 10.0  # the API server's default timeoutSeconds
    version: str = "auto"
    note: Callable[[str], None] = field(default=lambda message: None)
    # The name the certificate must be for, when it is not the URL's host: the Service DNS
    # name the API server uses, while the URL is a port-forward to 127.0.0.1.
    server_name: str | None = None
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _target: urllib.parse.SplitResult = field(init=False, repr=False)
    _hinted: bool = field(default=False, init=False, repr=False)  # the certificate hint, once

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}")
        self._target = urllib.parse.urlsplit(self.url)
        if self._target.scheme == "https":
            try:
                self._context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise AgainstError(f"--against-ca {self.ca_file}: {err}") from None
        elif self._target.scheme != "http" or self.server_name:
            raise AgainstError(
                f"--against {self.url}: expected an https:// URL (or http:// without "
                "--against-server-name)"
            )
        if not self._target.hostname:
            raise AgainstError(f"--against {self.url}: no host")

    def ask(self, body: bytes) -> dict[str, Any]:
        """The other webhook's AdmissionReview answer to the review in `body`."""
        review = orjson.loads(body)
        if self.version != "auto":
            review["apiVersion"] = _VERSION_NAMES[self.version]
        answer = self._post(review)
        if review.get("apiVersion") == V1 and not _has_type(answer):
            if self.version != "auto":
                raise AgainstError(
                    "answered a v1 review without apiVersion/kind, which the API server "
                    "rejects (a v1beta1-only webhook? use --against-version=v1beta1)"
                )
            self.version = "v1beta1"
            self.note(
                f"{self.url} answers v1 reviews without apiVersion/kind, as v1beta1-only "
                "webhooks (upstream v0.6.x) do: sending it v1beta1 reviews from now on"
            )
            review["apiVersion"] = V1BETA1
            answer = self._post(review)
        response = answer.get("response")
        if not isinstance(response, dict):
            raise AgainstError("the answer has no response")
        uid = (review.get("request") or {}).get("uid", "")
        if response.get("uid", "") != uid:
            raise AgainstError(f"the answer's uid {response.get('uid')!r} is not the request's")
        return answer

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self._target.hostname or "", self._target.port
        if self._context is None:
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        return _Connection(host, port, self._context, self.server_name or host, self.timeout)

    def _post(self, review: dict[str, Any]) -> dict[str, Any]:
        path = self._target.path or "/"
        if self._target.query:
            path += "?" + self._target.query
        connection = self._connection()
        try:
            connection.request(
                "POST",
                path,
                body=orjson.dumps(review),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            reply = connection.getresponse()
            data = reply.read()
        except ssl.SSLCertVerificationError as err:
            hint = self._certificate_hint()
            if hint and not self._hinted:
                self._hinted = True
                self.note(hint)
            raise AgainstError(f"{self.url}: {err}") from None
        except (OSError, http.client.HTTPException) as err:
            raise AgainstError(f"{self.url}: {err}") from None
        finally:
            connection.close()
        if reply.status != 200:
            detail = data[:300].decode(errors="replace").strip()
            raise AgainstError(f"HTTP {reply.status}: {detail}")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise AgainstError(f"the answer is not JSON: {err}") from None
        if not isinstance(answer, dict):
            raise AgainstError("the answer is not a JSON object")
        return answer

    def _certificate_hint(self) -> str:
        if self.ca_file is None:
            return (
                f"{self.url}'s certificate is not from a CA this machine trusts, and no "
                "--against-ca was given: pass the webhook's CA, e.g. --against-ca <(kubectl get "
                "mutatingwebhookconfiguration NAME -o jsonpath='{.webhooks[0].clientConfig."
                "caBundle}' | base64 -d)"
            )
        if self.server_name is None and self._target.hostname in ("127.0.0.1", "::1", "localhost"):
            return (
                f"{self.url}'s certificate does not verify with --against-ca {self.ca_file} for "
                f"{self._target.hostname}: if it is for the Service's DNS name (a port-forward), "
                "pass --against-server-name SERVICE.NAMESPACE.svc"
            )
        return ""


class _Connection(http.client.HTTPSConnection):
    """HTTPS to host:port, verifying the certificate for `server_name` (also sent as SNI)."""

    def __init__(
        self,
        host: str,
        port: int | None,
        context: ssl.SSLContext,
        server_name: str,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


def _has_type(answer: dict[str, Any]) -> bool:
    return answer.get("kind") == "AdmissionReview" and answer.get("apiVersion") in (V1, V1BETA1)


def apply_answer(pod: Pod, answer: dict[str, Any]) -> Answer:
    """The pod the API server would store from this answer (its JSONPatch applied)."""
    response = answer.get("response") or {}
    warnings = tuple(w for w in response.get("warnings") or [] if isinstance(w, str))
    if not response.get("allowed"):
        message = (response.get("status") or {}).get("message") or ""
        return Answer(False, None, str(message), warnings)
    patch = response.get("patch")
    if not patch:
        return Answer(True, pod, warnings=warnings)
    if response.get("patchType", "JSONPatch") != "JSONPatch":
        raise AgainstError(f"patchType {response.get('patchType')!r}: only JSONPatch exists")
    try:
        operations = orjson.loads(base64.b64decode(patch))
        patched = jsonpatch.apply_patch(pod, operations, in_place=False)
    except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise AgainstError(f"the patch cannot be applied: {err}") from None
    return Answer(True, patched, warnings=warnings, rewritten=_rewritten(operations))


def _rewritten(operations: list[Any]) -> frozenset[str]:
    """The spec lists an operation sets as a whole (`add`/`replace` of /spec/containers)."""
    return frozenset(
        op["path"].removeprefix("/spec/")
        for op in operations
        if isinstance(op, dict)
        and op.get("op") in ("add", "replace")
        and isinstance(op.get("path"), str)
        and op["path"].count("/") == 2
        and op["path"].startswith("/spec/")
    )


def facts_for(review: dict[str, Any], store: IdentityLookup, settings: MutationSettings) -> Facts:
    request = review.get("request") or {}
    kind = request.get("kind") or {}
    pod = request.get("object") if isinstance(request.get("object"), dict) else {}
    pod_create = (
        kind.get("kind") == "Pod"
        and not kind.get("group")
        and request.get("operation") == "CREATE"
        and not request.get("subResource")
    )
    account = ((pod or {}).get("spec") or {}).get("serviceAccountName") or ""
    lookup = store.lookup(str(request.get("namespace") or ""), str(account))
    identity = resolve_identity(lookup, settings)
    source = identity.source if identity is not None else None
    pattern = source is Source.CONFIG_MAP and lookup.config_map_exact is None
    return Facts(
        original=pod or {},
        pod_create=pod_create,
        config_map_pattern=pattern,
        identity_source=source.value if source is not None else "",
    )


def compare(
    body: bytes,
    ours: dict[str, Any],
    other: OtherWebhook,
    store: IdentityLookup,
    settings: MutationSettings,
    diff: Callable[[Pod, Pod], str],
) -> tuple[Verdict, dict[str, Any] | None]:
    """Our answer against the other webhook's, for one review; also returns theirs."""
    review = orjson.loads(body)
    facts = facts_for(review, store, settings)
    try:
        theirs = other.ask(body)
        verdict = classify(
            apply_answer(facts.original, ours), apply_answer(facts.original, theirs), facts, diff
        )
    except AgainstError as err:
        return Verdict("error", detail=str(err)), None
    return verdict, theirs
