"""`--service-account-lookup-grace-period`: wait briefly for a ServiceAccount that the cache
has not seen yet (a pod created right after its ServiceAccount), while a direct GET is fetched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from webhook.core.identity import Lookup
from webhook.sources.store import IdentityStore, sa_key

Fetch = Callable[[str, str], None]


class GraceLookup:
    def __init__(self, store: IdentityStore, grace_seconds: float, fetch: Fetch | None) -> None:
        self.store = store
        self.grace_seconds = grace_seconds
        self.fetch = fetch

    @property
    def enabled(self) -> bool:
        return self.grace_seconds > 0

    @staticmethod
    def _known(lookup: Lookup) -> bool:
        # As upstream: a ConfigMap entry or container credentials also count as "found".
        return (
            lookup.service_account is not None
            or lookup.config_map is not None
            or lookup.container_credentials
        )

    def lookup_now(self, namespace: str, service_account: str) -> Lookup | None:
        """The lookup when it needs no waiting (nearly always); None when `lookup` must wait."""
        found = self.store.lookup(namespace, service_account)
        if not self.enabled or self._known(found):
            return found
        return None

    async def lookup(self, namespace: str, service_account: str) -> Lookup:
        found = self.store.lookup(namespace, service_account)
        if not self.enabled or self._known(found):
            return found
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def on_arrival(_key: str) -> None:
            loop.call_soon_threadsafe(arrived.set)

        key = sa_key(namespace, service_account)
        self.store.subscribe(key, on_arrival)
        try:
            found = self.store.lookup(namespace, service_account)  # it may have just arrived
            if self._known(found):
                return found
            if self.fetch is not None:
                self.fetch(namespace, service_account)
            try:
                await asyncio.wait_for(arrived.wait(), self.grace_seconds)
            except TimeoutError:
                pass
            return self.store.lookup(namespace, service_account)
        finally:
            self.store.unsubscribe(key, on_arrival)
