"""Live identity sources from the Kubernetes API: ServiceAccounts cluster-wide and, with
--watch-config-map, the pod-identity-webhook ConfigMap, kept in the IdentityStore.

List + watch over raw JSON (no client model classes: they cost memory and time and we keep
only names and prefixed annotations), resuming from the last resourceVersion, with bookmarks,
a relist only on 410 Gone or error, capped exponential backoff; --resync-period bounds each
watch request. Runs in daemon threads. The parts, one job each: kube_client.py (requests),
kube_lists.py (list decoders), kube_watch.py (the list + watch loop and its events),
kube_fetch.py (grace-period fetches); this module puts them together per resource.

Those threads share the GIL with the event loop that answers reviews, so a list must not hold
it for long at a time: the thread sleeps briefly after each page and each slice of YIELD_EVERY
ServiceAccounts, so a review arriving meanwhile waits for at most one slice (~0.2 ms).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from webhook.core.configmap import EMPTY_INDEX, ConfigMapError, parse_config
from webhook.core.settings import CONFIG_MAP_NAME
from webhook.sources.backoff import CAP_SECONDS
from webhook.sources.kube_client import (
    WATCH_TIMEOUT_SECONDS,
    KubeClient,
    KubeSourceError,
    kube_configuration,
)
from webhook.sources.kube_fetch import ServiceAccountFetcher
from webhook.sources.kube_lists import (
    Account,
    ListFormatError,
    PageMeta,
    split_service_account_page,
    stream_service_account_page,
)
from webhook.sources.kube_watch import (
    Clock,
    Sleep,
    lower_priority,
    run_with_backoff,
    watch_from,
)
from webhook.sources.store import IdentityStore

# KubeSourceError: what connecting and the sources raise (webhook.cli.serve catches it).
__all__ = ["PAGE_SIZE", "YIELD_EVERY", "KubeSource", "KubeSourceError"]

log = logging.getLogger("webhook.kube")

PAGE_SIZE = 500
MAX_BACKOFF_SECONDS = CAP_SECONDS
# While listing, give the GIL up for YIELD_SECONDS after fetching a page and after every
# YIELD_EVERY ServiceAccounts (decoded and stored): slices of ~0.2 ms of work, ~0.5 s more
# wall time per 100,000, mostly hidden by the QPS limiter, which spaces pages by 20 ms anyway.
YIELD_EVERY = 50
YIELD_SECONDS = 0.0002
SERVICE_ACCOUNTS = "/api/v1/serviceaccounts"


def _give_up_gil() -> None:
    """A short real sleep: unlike sleep(0), it lets a waiting event loop thread take the GIL
    even when both threads share one CPU."""
    time.sleep(YIELD_SECONDS)


class KubeSource:
    def __init__(
        self,
        store: IdentityStore,
        client: KubeClient,
        config_map_namespace: str | None,
        resync_seconds: float,
        *,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`sleep` (wait up to N seconds, True once stopping) and `clock` are how the retry
        loops see time: the stop event's wait and time.monotonic unless a test injects its own."""
        self.store = store
        self.client = client
        self.config_map_namespace = config_map_namespace
        self.resync_seconds = resync_seconds
        self._stop = threading.Event()
        self._sleep: Sleep = self._stop.wait if sleep is None else sleep
        self._clock = clock
        self._sa_synced = threading.Event()
        self._cm_synced = threading.Event()
        if config_map_namespace is None:
            self._cm_synced.set()
        self._fetcher = ServiceAccountFetcher(store, client)
        self.relists = 0
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
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
    ) -> KubeSource:
        """In-cluster config unless --kubeconfig or --kube-api is given (as upstream)."""
        from kubernetes import client

        try:
            configuration = kube_configuration(kubeconfig, api_url)
        except KubeSourceError as err:
            raise KubeSourceError(f"{err}; without a cluster, use --objects") from None
        configuration.connection_pool_maxsize = 8
        return cls(
            store,
            KubeClient(client.ApiClient(configuration)),
            config_map_namespace,
            resync_seconds,
            sleep=sleep,
            clock=clock,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(
            target=self.run,
            args=("serviceaccounts",),
            name="sa-watch",
            daemon=True,
        ).start()
        if self.config_map_namespace is not None:
            threading.Thread(
                target=self.run,
                args=("configmaps",),
                name="cm-watch",
                daemon=True,
            ).start()

    def run(self, resource: str) -> None:
        """List and watch `resource` until stopped, retrying after errors (a thread's body)."""
        once = (
            self._service_accounts_once if resource == "serviceaccounts" else self._config_map_once
        )
        run_with_backoff(once, resource, self._stop, self.reconnects, self._sleep, self._clock)

    def stop(self) -> None:
        self._stop.set()
        self._fetcher.stop()

    def synced(self) -> bool:
        return self._sa_synced.is_set() and self._cm_synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return self._sa_synced.wait(timeout) and self._cm_synced.wait(
            max(0.0, deadline - time.monotonic())
        )

    def refill(self) -> None:
        """Relist now (after a cache clear), retrying until it works; the watches run on."""
        lower_priority()  # the store's refill thread, which does nothing else
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._list_service_accounts()
                if self.config_map_namespace is not None:
                    self._apply_config_map(self._get_config_map()[0])
                return
            except Exception as err:
                log.warning("relist after a cache clear failed, retrying in %.1fs: %s", delay, err)
                if self._sleep(delay):
                    return
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def request_fetch(self, namespace: str, name: str) -> None:
        """Fetch one ServiceAccount now (grace period); see kube_fetch."""
        self._fetcher.request(namespace, name)

    # -- ServiceAccounts --------------------------------------------------------------------

    def _service_account_pages(self, stream: bool, meta: PageMeta) -> Iterator[Account]:
        """Every ServiceAccount, page by page, each page as it streams in (`stream`) or read
        whole; sets `meta.resource_version` to the last page's."""
        continue_token = ""
        while True:
            # resourceVersion=0: served from the API server's watch cache, not etcd (as
            # client-go's reflector lists); the watch then resumes from the list's version.
            query = [("limit", str(PAGE_SIZE)), ("resourceVersion", "0")]
            if continue_token:
                query = [("limit", str(PAGE_SIZE)), ("continue", continue_token)]
            page = PageMeta()
            if stream:
                chunks = self.client.get_chunks(SERVICE_ACCOUNTS, query)
                slices = stream_service_account_page(chunks, YIELD_EVERY, page)
            else:
                body = self.client.get_bytes(SERVICE_ACCOUNTS, query)
                token, version, slices = split_service_account_page(body, YIELD_EVERY)
                page = PageMeta(token, version)
                del body
            _give_up_gil()
            for chunk in slices:
                yield from chunk
                _give_up_gil()
            meta.resource_version = page.resource_version or meta.resource_version
            continue_token = page.continue_token
            if not continue_token:
                return

    def _list_service_accounts(self) -> str:
        """List every ServiceAccount and swap the cache in one assignment; the resourceVersion
        to watch from.

        Pages are consumed as they arrive, so only the stripped entries accumulate, not the
        decoded objects; the GIL is given up between slices (see YIELD_EVERY). A list that
        stops looking as the API server writes one halfway is listed again at once, each page
        read whole (nothing half-listed is swapped in).
        """
        meta = PageMeta()
        try:
            self.store.replace_service_accounts(self._service_account_pages(True, meta))
        except ListFormatError as err:
            log.warning("a ServiceAccount list looked odd halfway (%s); reading it whole", err)
            meta = PageMeta()
            self.store.replace_service_accounts(self._service_account_pages(False, meta))
        self.relists += 1
        self._sa_synced.set()
        if log.isEnabledFor(logging.INFO):  # counting identities walks the whole cache
            log.info(
                "listed %d service accounts (%d with an identity)",
                self.store.service_account_count,
                self.store.identity_count,
            )
        return meta.resource_version

    def _service_accounts_once(self) -> None:
        """One list, then watches resumed from the last resourceVersion for as long as they
        work; only an error or 410 Gone brings the next list (from run_with_backoff).

        Upstream's --resync-period is an informer resync: it replays the local store and sends
        nothing to the API server. Our cache has nothing to replay, so the period bounds each
        watch request instead; a periodic full LIST would cost large clusters an etcd read of
        every ServiceAccount per replica per period.
        """
        version = self._list_service_accounts()
        watch_seconds = WATCH_TIMEOUT_SECONDS
        if self.resync_seconds > 0:
            watch_seconds = int(min(WATCH_TIMEOUT_SECONDS, max(1.0, self.resync_seconds)))
        watch_from(
            self.client,
            SERVICE_ACCOUNTS,
            [],
            version,
            self._stop,
            self._put_service_account,
            self._delete_service_account,
            watch_seconds,
        )

    def _put_service_account(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.store.put_service_account(
            meta.get("namespace", ""), meta.get("name", ""), meta.get("annotations")
        )

    def _delete_service_account(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.store.delete_service_account(meta.get("namespace", ""), meta.get("name", ""))

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

    def _config_maps_path(self) -> str:
        namespace = quote(self.config_map_namespace or "", safe="")
        return f"/api/v1/namespaces/{namespace}/configmaps"

    def _get_config_map(self) -> tuple[dict[str, Any] | None, str]:
        """The ConfigMap (None when absent) and the list's resourceVersion."""
        selector = ("fieldSelector", f"metadata.name={CONFIG_MAP_NAME}")
        listing = self.client.get_json(
            self._config_maps_path(), [selector, ("resourceVersion", "0")]
        )
        items = listing.get("items") or []
        version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return (items[0] if items else None), version

    def _config_map_once(self) -> None:
        config_map, version = self._get_config_map()
        self._apply_config_map(config_map)
        self._cm_synced.set()
        watch_from(
            self.client,
            self._config_maps_path(),
            [("fieldSelector", f"metadata.name={CONFIG_MAP_NAME}")],
            version,
            self._stop,
            self._apply_config_map,
            lambda _deleted: self._apply_config_map(None),
        )
