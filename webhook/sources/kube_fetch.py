"""Direct ServiceAccount fetches during the lookup grace period
(--service-account-lookup-grace-period): a review for a ServiceAccount the cache does not know
yet asks for it directly, while the watch may still deliver it first.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from webhook.sources.kube_client import KubeClient, TokenBucket, status_code
from webhook.sources.store import IdentityStore, sa_key

log = logging.getLogger("webhook.kube")

FETCH_RATE_PER_SECOND = 10.0  # upstream's limiter for grace-period lookups: 10/s, burst 20
FETCH_BURST = 20


class ServiceAccountFetcher:
    """Fetches one ServiceAccount into the store on request: one request in flight per key,
    at most FETCH_RATE_PER_SECOND (burst FETCH_BURST), on a small pool of threads."""

    def __init__(self, store: IdentityStore, client: KubeClient) -> None:
        self.store = store
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sa-fetch")
        self._limiter = TokenBucket(FETCH_RATE_PER_SECOND, FETCH_BURST)
        self._fetching: set[str] = set()
        self._lock = threading.Lock()

    def request(self, namespace: str, name: str) -> None:
        """Fetch one ServiceAccount now, unless a fetch of it is in flight already."""
        key = sa_key(namespace, name)
        with self._lock:
            if key in self._fetching:
                return
            self._fetching.add(key)
        try:
            self._pool.submit(self._fetch, namespace, name, key)
        except RuntimeError:  # shutting down
            with self._lock:
                self._fetching.discard(key)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, namespace: str, name: str, key: str) -> None:
        try:
            self._limiter.wait()
            ns, sa = quote(namespace, safe=""), quote(name, safe="")
            path = f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}"
            obj = self.client.get_json(path, timeout=1.0)
            if obj.get("kind") == "ServiceAccount":
                meta = obj.get("metadata") or {}
                self.store.put_service_account(namespace, name, meta.get("annotations"))
        except Exception as err:
            if status_code(err) != 404:
                log.warning("direct fetch of service account %s failed: %s", key, err)
        finally:
            with self._lock:
                self._fetching.discard(key)
