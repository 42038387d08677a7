"""Live identity sources from the Kubernetes API: ServiceAccounts cluster-wide and, with
--watch-config-map, the pod-identity-webhook ConfigMap.

List + watch over raw JSON (no client model classes: they cost memory and time and we keep
only names and prefixed annotations), resuming from the last resourceVersion, with bookmarks,
a relist only on 410 Gone or error, capped exponential backoff; --resync-period bounds each
watch request. Runs in daemon threads; writes go into the IdentityStore.

Those threads share the GIL with the event loop that answers reviews, so a list must not hold
it for long at a time: list pages are decoded by msgspec into just the fields we keep (4x
faster than a full decode, and no garbage for the cycle collector to walk), YIELD_EVERY items
at a time, and the thread sleeps briefly after each such slice, so a review arriving meanwhile
waits for at most one slice (~0.2 ms), not for a 500-item page (bench/churn.py measures it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec
import orjson
import urllib3

from webhook.core.configmap import EMPTY_INDEX, ConfigMapError, parse_config
from webhook.core.settings import CONFIG_MAP_NAME
from webhook.sources.backoff import CAP_SECONDS, Backoff
from webhook.sources.store import IdentityStore, sa_key

log = logging.getLogger("webhook.kube")

PAGE_SIZE = 500
WATCH_TIMEOUT_SECONDS = 300
MAX_BACKOFF_SECONDS = CAP_SECONDS
FETCH_RATE_PER_SECOND = 10.0  # upstream's limiter for grace-period lookups: 10/s, burst 20
FETCH_BURST = 20
QPS = 50  # upstream's client QPS and burst
# While listing, give the GIL up for YIELD_SECONDS after fetching a page and after every
# YIELD_EVERY ServiceAccounts (decoded and stored): slices of ~0.2 ms of work, ~0.5 s more
# wall time per 100,000, mostly hidden by the QPS limiter, which spaces pages by 20 ms anyway.
YIELD_EVERY = 50
YIELD_SECONDS = 0.0002
# The list and watch threads run this much nicer than the process (Linux: per thread).
THREAD_NICENESS = 10


class KubeSourceError(RuntimeError):
    pass


# A ServiceAccount list page, decoded into only what the cache keeps. Untracked by the cycle
# collector (gc=False: they hold no references back); unknown fields are skipped unparsed.
class _Meta(msgspec.Struct, gc=False):
    namespace: str = ""
    name: str = ""
    annotations: dict[str, str] | None = None


class _Item(msgspec.Struct, gc=False):
    metadata: _Meta | None = None


class _ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str = ""
    continue_: str | None = msgspec.field(default=None, name="continue")


class _Page(msgspec.Struct, gc=False):
    items: list[_Item] | None = None
    metadata: _ListMeta | None = None


_PAGE_DECODER = msgspec.json.Decoder(_Page)
_ITEMS_DECODER = msgspec.json.Decoder(list[_Item])
_NO_META = _Meta()
# As the API server writes a list (Go's encoding/json: compact, items last, each item's first
# field metadata). A quote cannot occur unescaped inside a JSON string, so these bytes are
# never inside one; anywhere else than between two items they would split an item into
# unbalanced halves, which fail to decode, and the page is then decoded whole.
_ITEMS_KEY = b',"items":['
_ITEM_SEPARATOR = b'},{"metadata":'

Account = tuple[str, str, dict[str, str] | None]


def _lower_priority() -> None:
    """Make the calling thread nicer, so that when it and the event loop's thread both want the
    CPU the kernel runs the loop first: reading and decrypting a 100 MB list needs no GIL but
    would otherwise take half of a one-CPU pod while reviews wait. Where it cannot (another OS),
    nothing changes; nor on the main thread, the event loop's."""
    if threading.current_thread() is threading.main_thread():
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + THREAD_NICENESS)
        )
    except (AttributeError, OSError):
        pass


def _give_up_gil() -> None:
    """A short real sleep: unlike sleep(0), it lets a waiting event loop thread take the GIL
    even when both threads share one CPU."""
    time.sleep(YIELD_SECONDS)


def _accounts(items: list[_Item] | None) -> list[Account]:
    return [
        (m.namespace, m.name, m.annotations)
        for m in (item.metadata or _NO_META for item in items or ())
    ]


def decode_service_account_page(body: bytes) -> tuple[list[Account], str, str]:
    """(namespace, name, annotations) of each item, the continue token and the resourceVersion
    of a ServiceAccountList page, in one decode. A page msgspec's schema refuses (a non-string
    annotation, which the API server would not store) is decoded by orjson instead."""
    try:
        page = _PAGE_DECODER.decode(body)
    except msgspec.ValidationError:
        raw = orjson.loads(body)
        meta = raw.get("metadata") or {}
        accounts = []
        for item in raw.get("items") or ():
            item_meta = item.get("metadata") or {}
            accounts.append(
                (
                    item_meta.get("namespace", ""),
                    item_meta.get("name", ""),
                    item_meta.get("annotations"),
                )
            )
        return accounts, meta.get("continue") or "", str(meta.get("resourceVersion", ""))
    meta = page.metadata or _ListMeta()
    return _accounts(page.items), meta.continue_ or "", meta.resourceVersion


def split_service_account_page(body: bytes, size: int) -> tuple[str, str, Iterator[list[Account]]]:
    """The continue token and resourceVersion of a ServiceAccountList page, and its accounts
    in slices of `size`, each decoded only when the iterator is advanced: decoding a 500-item
    page at once holds the GIL for ~0.5-1 ms, a slice for a tenth of that. Whatever does not
    look as the API server writes it is decoded whole (decode_service_account_page)."""
    at = body.find(_ITEMS_KEY)
    end = len(body)
    while end and body[end - 1] in b" \t\r\n":  # rstrip() would copy a 100 MB list
        end -= 1
    header = None
    if at > 0 and body[end - 2 : end] == b"]}":
        try:
            header = _PAGE_DECODER.decode(body[:at] + b"}")
        except msgspec.DecodeError:
            header = None
    if header is None or header.items is not None:
        accounts, token, version = decode_service_account_page(body)
        return token, version, iter([accounts])
    meta = header.metadata or _ListMeta()
    slices = _slices(body, at + len(_ITEMS_KEY), end - 2, size)
    return meta.continue_ or "", meta.resourceVersion, slices


class ListFormatError(KubeSourceError):
    """A list response that stopped looking as the API server writes it halfway through."""


@dataclass
class PageMeta:
    continue_token: str = ""
    resource_version: str = ""


_HEADER_LIMIT = 1 << 20  # a list's kind, apiVersion and metadata come first, and are small
_TRIM_BYTES = 1 << 18


def _decode_slice(part: bytes) -> list[Account]:
    try:
        return _accounts(_ITEMS_DECODER.decode(b"[" + part + b"]"))
    except msgspec.DecodeError as err:
        raise ListFormatError(f"undecodable ServiceAccount list: {err}") from None


def stream_service_account_page(
    chunks: Iterable[bytes], size: int, meta: PageMeta
) -> Iterator[list[Account]]:
    """The accounts of a ServiceAccountList response in slices of `size`, decoded as its bytes
    arrive: only the undecoded remainder is kept, never the whole body. That matters because
    the API server ignores `limit` when it lists from its watch cache (resourceVersion=0, the
    first list, as client-go's): 100,000 ServiceAccounts are one ~100 MB response. Sets `meta`
    from the list's metadata, which comes before the items. A response that does not start as
    the API server writes one is read whole and split (split_service_account_page); one that
    stops looking like it after slices were given out raises ListFormatError."""
    chunks = iter(chunks)
    buf = b""
    at = -1
    for chunk in chunks:
        buf += chunk
        at = buf.find(_ITEMS_KEY)
        if at >= 0 or len(buf) > _HEADER_LIMIT:
            break
    header = None
    if at > 0:
        try:
            header = _PAGE_DECODER.decode(buf[:at] + b"}")
        except msgspec.DecodeError:
            header = None
    if header is None or header.items is not None:
        token, version, slices = split_service_account_page(buf + b"".join(chunks), size)
        meta.continue_token, meta.resource_version = token, version
        yield from slices
        return
    list_meta = header.metadata or _ListMeta()
    meta.continue_token, meta.resource_version = (
        list_meta.continue_ or "",
        list_meta.resourceVersion,
    )
    pos = scan = at + len(_ITEMS_KEY)
    found = 0
    while True:
        cut = buf.find(_ITEM_SEPARATOR, scan)
        while cut >= 0:
            found, scan = found + 1, cut + 1
            if found == size:
                yield _decode_slice(buf[pos : cut + 1])
                pos, found = cut + 2, 0
            cut = buf.find(_ITEM_SEPARATOR, scan)
        more = next(chunks, None)
        if more is None:
            break
        if pos > _TRIM_BYTES:
            buf, scan, pos = buf[pos:], scan - pos, 0
        # A separator may straddle the two chunks.
        scan = max(scan, pos, len(buf) - len(_ITEM_SEPARATOR) + 1)
        buf += more
    tail = buf[pos:].rstrip()
    if not tail.endswith(b"]}"):
        raise ListFormatError("a ServiceAccount list ended without closing its items")
    if len(tail) > 2:
        yield _decode_slice(tail[:-2])


def _slices(body: bytes, start: int, stop: int, size: int) -> Iterator[list[Account]]:
    done = 0
    while start < stop:
        cut = start
        for _ in range(size):
            cut = body.find(_ITEM_SEPARATOR, cut + 1, stop)
            if cut < 0:
                break
        end = stop if cut < 0 else cut + 1
        try:
            accounts = _accounts(_ITEMS_DECODER.decode(b"[" + body[start:end] + b"]"))
        except msgspec.DecodeError:
            yield decode_service_account_page(body)[0][done:]
            return
        done += len(accounts)
        yield accounts
        start = end + 1  # past the comma


class _Gone(Exception):
    """410: our resourceVersion is too old; relist."""


class _TokenBucket:
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
        self.limiter = _TokenBucket(QPS, QPS)

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


def _status_code(error: Exception) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


class KubeSource:
    def __init__(
        self,
        store: IdentityStore,
        client: KubeClient,
        config_map_namespace: str | None,
        resync_seconds: float,
    ) -> None:
        self.store = store
        self.client = client
        self.config_map_namespace = config_map_namespace
        self.resync_seconds = resync_seconds
        self._stop = threading.Event()
        self._sa_synced = threading.Event()
        self._cm_synced = threading.Event()
        if config_map_namespace is None:
            self._cm_synced.set()
        self._fetch_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sa-fetch")
        self._fetch_limiter = _TokenBucket(FETCH_RATE_PER_SECOND, FETCH_BURST)
        self._fetching: set[str] = set()
        self._fetch_lock = threading.Lock()
        self.relists = 0
        # Lists are decoded as they stream in, unless one looked odd (then whole, from then on).
        self._stream_lists = True
        store.add_refill("the Kubernetes API", self.refill)
        # Retries after an error, per resource (pod_identity_webhook_kube_reconnects_total).
        self.reconnects = {"serviceaccounts": 0}
        if config_map_namespace is not None:
            self.reconnects["configmaps"] = 0

    @classmethod
    def connect(
        cls,
        store: IdentityStore,
        *,
        kubeconfig: str,
        api_url: str,
        config_map_namespace: str | None,
        resync_seconds: float,
    ) -> KubeSource:
        """In-cluster config unless --kubeconfig or --kube-api is given (as upstream)."""
        from kubernetes import client

        try:
            configuration = kube_configuration(kubeconfig, api_url)
        except KubeSourceError as err:
            raise KubeSourceError(f"{err}; without a cluster, use --objects") from None
        configuration.connection_pool_maxsize = 8
        return cls(
            store, KubeClient(client.ApiClient(configuration)), config_map_namespace, resync_seconds
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(
            target=self._run_loop,
            args=(self._service_accounts_once, "serviceaccounts"),
            name="sa-watch",
            daemon=True,
        ).start()
        if self.config_map_namespace is not None:
            threading.Thread(
                target=self._run_loop,
                args=(self._config_map_once, "configmaps"),
                name="cm-watch",
                daemon=True,
            ).start()

    def stop(self) -> None:
        self._stop.set()
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    def synced(self) -> bool:
        return self._sa_synced.is_set() and self._cm_synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return self._sa_synced.wait(timeout) and self._cm_synced.wait(
            max(0.0, deadline - time.monotonic())
        )

    def _run_loop(self, once: Callable[[], None], resource: str) -> None:
        _lower_priority()
        backoff = Backoff()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                once()
                backoff.reset()
            except _Gone:
                log.info("watch expired (410 Gone), relisting")
                continue
            except Exception as err:
                if time.monotonic() - started > 30:
                    backoff.reset()  # it worked for a while: start the backoff afresh
                delay = backoff.next_delay()
                log.warning("kubernetes watch failed, retrying in %.1fs: %s", delay, err)
                self._stop.wait(delay)
                self.reconnects[resource] += 1

    def refill(self) -> None:
        """Relist now (after a cache clear), retrying until it works; the watches run on."""
        _lower_priority()  # the store's refill thread, which does nothing else
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._list_service_accounts()
                if self.config_map_namespace is not None:
                    self._apply_config_map(self._get_config_map()[0])
                return
            except Exception as err:
                log.warning("relist after a cache clear failed, retrying in %.1fs: %s", delay, err)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    # -- ServiceAccounts --------------------------------------------------------------------

    def _list_service_accounts(self) -> str:
        """List every ServiceAccount page by page and swap the cache in one assignment.

        Pages are consumed as they arrive, so only the stripped entries accumulate, not the
        decoded objects; the GIL is given up between slices (see YIELD_EVERY).
        """
        version = ""

        def accounts() -> Iterator[tuple[str, str, dict[str, str] | None]]:
            nonlocal version
            continue_token = ""
            while True:
                # resourceVersion=0: served from the API server's watch cache, not etcd (as
                # client-go's reflector lists); the watch then resumes from the list's version.
                query = [("limit", str(PAGE_SIZE)), ("resourceVersion", "0")]
                if continue_token:
                    query = [("limit", str(PAGE_SIZE)), ("continue", continue_token)]
                if self._stream_lists:
                    meta = PageMeta()
                    chunks = self.client.get_chunks("/api/v1/serviceaccounts", query)
                    slices = stream_service_account_page(chunks, YIELD_EVERY, meta)
                else:
                    body = self.client.get_bytes("/api/v1/serviceaccounts", query)
                    token, page_version, slices = split_service_account_page(body, YIELD_EVERY)
                    meta = PageMeta(token, page_version)
                    del body
                _give_up_gil()
                for chunk in slices:
                    yield from chunk
                    _give_up_gil()
                version = meta.resource_version or version
                continue_token = meta.continue_token
                if not continue_token:
                    return

        try:
            self.store.replace_service_accounts(accounts())
        except ListFormatError:
            if self._stream_lists:
                log.warning("a ServiceAccount list looked odd halfway; reading lists whole")
                self._stream_lists = False
            raise
        self.relists += 1
        self._sa_synced.set()
        if log.isEnabledFor(logging.INFO):  # counting identities walks the whole cache
            log.info(
                "listed %d service accounts (%d with an identity)",
                self.store.service_account_count,
                self.store.identity_count,
            )
        return version

    def _service_accounts_once(self) -> None:
        """One list, then watches resumed from the last resourceVersion for as long as they
        work; only an error or 410 Gone brings the next list (from _run_loop).

        Upstream's --resync-period is an informer resync: it replays the local store and sends
        nothing to the API server. Our cache has nothing to replay, so the period bounds each
        watch request instead; a periodic full LIST would cost large clusters an etcd read of
        every ServiceAccount per replica per period.
        """
        version = self._list_service_accounts()
        watch_seconds = WATCH_TIMEOUT_SECONDS
        if self.resync_seconds > 0:
            watch_seconds = int(min(WATCH_TIMEOUT_SECONDS, max(1.0, self.resync_seconds)))
        while not self._stop.is_set():
            query = [
                ("resourceVersion", version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(watch_seconds)),
            ]
            for event in self.client.watch("/api/v1/serviceaccounts", query, self._stop):
                version = self._apply_service_account_event(event) or version

    def _apply_service_account_event(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise KubeSourceError(f"watch error: {obj.get('message', obj)}")
        meta = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            self.store.put_service_account(
                meta.get("namespace", ""), meta.get("name", ""), meta.get("annotations")
            )
        elif kind == "DELETED":
            self.store.delete_service_account(meta.get("namespace", ""), meta.get("name", ""))
        version = meta.get("resourceVersion")
        return str(version) if version else None

    # -- the pod-identity-webhook ConfigMap -------------------------------------------------

    def _apply_config_map(self, config_map: dict[str, Any] | None) -> None:
        if config_map is None:
            self.store.set_config_map(EMPTY_INDEX)  # deleted: forget every entry
            return
        data = config_map.get("data") or {}
        try:
            index = parse_config(data.get("config"), self.store.settings)
        except ConfigMapError as err:
            log.error(
                "ConfigMap %s/%s rejected, keeping the previous entries: %s",
                self.config_map_namespace,
                CONFIG_MAP_NAME,
                err,
            )
            return
        for warning in index.warnings:
            log.warning(warning)
        self.store.set_config_map(index)

    def _get_config_map(self) -> tuple[dict[str, Any] | None, str]:
        """The ConfigMap (None when absent) and the list's resourceVersion."""
        namespace = quote(self.config_map_namespace or "", safe="")
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        selector = ("fieldSelector", f"metadata.name={CONFIG_MAP_NAME}")
        listing = self.client.get_json(path, [selector, ("resourceVersion", "0")])
        items = listing.get("items") or []
        version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return (items[0] if items else None), version

    def _config_map_once(self) -> None:
        namespace = quote(self.config_map_namespace or "", safe="")
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        selector = ("fieldSelector", f"metadata.name={CONFIG_MAP_NAME}")
        config_map, version = self._get_config_map()
        self._apply_config_map(config_map)
        self._cm_synced.set()
        while not self._stop.is_set():
            query = [
                selector,
                ("resourceVersion", version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(WATCH_TIMEOUT_SECONDS)),
            ]
            for event in self.client.watch(path, query, self._stop):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise KubeSourceError(f"watch error: {obj.get('message', obj)}")
                if kind in ("ADDED", "MODIFIED"):
                    self._apply_config_map(obj)
                elif kind == "DELETED":
                    self._apply_config_map(None)
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)

    # -- direct lookups during the grace period ---------------------------------------------

    def request_fetch(self, namespace: str, name: str) -> None:
        """Fetch one ServiceAccount now; one request in flight per key, rate limited."""
        key = sa_key(namespace, name)
        with self._fetch_lock:
            if key in self._fetching:
                return
            self._fetching.add(key)
        try:
            self._fetch_pool.submit(self._fetch, namespace, name, key)
        except RuntimeError:  # shutting down
            with self._fetch_lock:
                self._fetching.discard(key)

    def _fetch(self, namespace: str, name: str, key: str) -> None:
        try:
            self._fetch_limiter.wait()
            ns, sa = quote(namespace, safe=""), quote(name, safe="")
            path = f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}"
            obj = self.client.get_json(path, timeout=1.0)
            if obj.get("kind") == "ServiceAccount":
                meta = obj.get("metadata") or {}
                self.store.put_service_account(namespace, name, meta.get("annotations"))
        except Exception as err:
            if _status_code(err) != 404:
                log.warning("direct fetch of service account %s failed: %s", key, err)
        finally:
            with self._fetch_lock:
                self._fetching.discard(key)
