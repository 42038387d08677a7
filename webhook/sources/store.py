"""The in-memory identity index every source writes into and every review reads from.

Writers (file reloads, Kubernetes watch and fetch threads) serialise on a short lock; readers
do plain dict lookups, which are atomic under the GIL, so the hot path takes no lock.
Iteration works on a copy (a C-level copy that no write can interleave with).
Only the ServiceAccount annotations under the configured prefix are kept, parsed once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from webhook.core.configmap import EMPTY_INDEX, ConfigMapIndex
from webhook.core.identity import IdentityEntry, Lookup, entry_from_annotations
from webhook.core.mutation import resolve
from webhook.core.settings import MutationSettings

log = logging.getLogger("webhook.store")

# Lookups kept for reuse: one per ServiceAccount that pods use, dropped all at once beyond this.
LOOKUP_CACHE_SIZE = 65_536

ArrivalCallback = Callable[[str], None]
Refill = Callable[[], None]


def sa_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class IdentityStore:
    def __init__(self, settings: MutationSettings) -> None:
        self.settings = settings
        self._prefix = settings.annotation_key_prefix
        # Most ServiceAccounts carry no identity annotation: they all share this one entry.
        self._plain = entry_from_annotations({}, settings)
        self._service_accounts: dict[str, IdentityEntry] = {}
        self._config_map: ConfigMapIndex = EMPTY_INDEX
        self._container_credentials: frozenset[tuple[str, str]] = frozenset()
        self._write_lock = threading.Lock()
        # While a full replacement is being built, single writes are also recorded here and
        # replayed on top of it, so a direct fetch racing a relist is not lost (None: deleted).
        self._replacing: dict[str, IdentityEntry | None] | None = None
        self._arrival_lock = threading.Lock()
        self._arrivals: dict[str, list[ArrivalCallback]] = {}
        # Full replacements are built one at a time (a relist after a clear may meet the
        # watch loop's own relist); `_replacing` belongs to the one in progress.
        self._replace_lock = threading.Lock()
        self._refills: list[tuple[str, Refill]] = []
        self._refill_lock = threading.Lock()
        self._used = False
        # The hot path hands out the same Lookup object until what it was built from changes,
        # with what a review derives from it alone (mutation.resolve under these settings: the
        # identity and its patch recipes) computed once, when the Lookup is built: the memo
        # lives here, per ServiceAccount entry, and goes with it. Each kept Lookup carries the
        # generation it was built in (bumped after every whole-cache change: a relist, the
        # ConfigMap, container credentials, a clear) and the ServiceAccount entry object it saw
        # (a write to that ServiceAccount replaces the object). Both are read before the data,
        # so a Lookup built from older data is never served again, however a read and a write
        # interleave, and a ServiceAccount update invalidates only its own Lookup.
        self._generation = 0
        self._lookups: dict[str, tuple[int, IdentityEntry | None, Lookup]] = {}

    # -- reads (hot path) -------------------------------------------------------------------

    def lookup(self, namespace: str, service_account: str) -> Lookup:
        key = f"{namespace}/{service_account}"
        generation = self._generation  # read before the data (see __init__)
        entry = self._service_accounts.get(key)
        cached = self._lookups.get(key)
        if cached is not None and cached[0] == generation and cached[1] is entry:
            return cached[2]
        config_map = self._config_map
        found = Lookup(
            service_account=entry,
            config_map=config_map.lookup(namespace, service_account) if config_map else None,
            config_map_exact=(
                config_map.lookup_exact(namespace, service_account) if config_map else None
            ),
            container_credentials=(namespace, service_account) in self._container_credentials,
        )
        lookup = replace(found, resolution=resolve(found, self.settings))
        lookups = self._lookups
        if len(lookups) >= LOOKUP_CACHE_SIZE:
            lookups.clear()
        lookups[key] = (generation, entry, lookup)
        return lookup

    def _changed(self) -> None:
        """After every whole-cache change to what lookups read (callers hold _write_lock)."""
        self._generation += 1

    @property
    def service_account_count(self) -> int:
        return len(self._service_accounts)

    @property
    def used(self) -> bool:
        """`pod_identity_webhook_used`: a ServiceAccount has been seen. Like upstream's gauge it
        is never reset, so a cache clear (emptied, then refilled) does not make it blink."""
        return self._used or bool(self._service_accounts)

    @property
    def identity_count(self) -> int:
        plain = self._plain
        return sum(1 for entry in list(self._service_accounts.values()) if entry is not plain)

    def snapshot(self) -> dict[str, object]:
        """The cache as JSON-able data, for the opt-in debug handler."""
        plain = self._plain
        return {
            "serviceAccounts": {
                key: {
                    "RoleARN": e.role_arn,
                    "Audience": e.audience,
                    "UseRegionalSTS": e.use_regional_sts,
                    "TokenExpiration": e.token_expiration,
                }
                for key, e in list(self._service_accounts.items())
                if e is not plain
            },
            "serviceAccountsWithoutRole": self.service_account_count - self.identity_count,
            "configMapEntries": len(self._config_map),
            "containerCredentials": sorted(f"{ns}/{sa}" for ns, sa in self._container_credentials),
        }

    # -- writes -----------------------------------------------------------------------------

    def entry_for(self, annotations: Mapping[str, str] | None) -> IdentityEntry:
        relevant = {k: v for k, v in (annotations or {}).items() if k.startswith(self._prefix)}
        return entry_from_annotations(relevant, self.settings) if relevant else self._plain

    def put_service_account(
        self, namespace: str, name: str, annotations: Mapping[str, str] | None
    ) -> None:
        key = sa_key(namespace, name)
        entry = self.entry_for(annotations)
        with self._write_lock:
            self._service_accounts[key] = entry  # a new object: its kept Lookup is stale
            if self._replacing is not None:
                self._replacing[key] = entry
        self._notify(key)

    def delete_service_account(self, namespace: str, name: str) -> None:
        key = sa_key(namespace, name)
        with self._write_lock:
            self._service_accounts.pop(key, None)
            if self._replacing is not None:
                self._replacing[key] = None

    def replace_service_accounts(
        self, accounts: Iterable[tuple[str, str, Mapping[str, str] | None]]
    ) -> None:
        """Swap in a complete set (a relist or a file reload) in one assignment."""
        with self._replace_lock:
            self._replace(accounts)

    def _replace(self, accounts: Iterable[tuple[str, str, Mapping[str, str] | None]]) -> None:
        with self._write_lock:
            self._replacing = {}
        try:
            fresh = {sa_key(ns, name): self.entry_for(ann) for ns, name, ann in accounts}
        except BaseException:
            with self._write_lock:
                self._replacing = None
            raise
        with self._write_lock:
            for key, entry in (self._replacing or {}).items():
                if entry is None:
                    fresh.pop(key, None)
                else:
                    fresh[key] = entry
            self._service_accounts = fresh
            self._replacing = None
            self._changed()
        with self._arrival_lock:
            waiting = [key for key in self._arrivals if key in fresh]
        for key in waiting:
            self._notify(key)

    def set_config_map(self, index: ConfigMapIndex) -> None:
        with self._write_lock:
            self._config_map = index
            self._changed()

    def set_container_credentials(self, identities: Iterable[tuple[str, str]]) -> None:
        fresh = frozenset(identities)
        with self._write_lock:
            self._container_credentials = fresh
            self._changed()

    def add_refill(self, what: str, refill: Refill) -> None:
        """Register how a source reloads everything it provides, for `clear`."""
        self._refills.append((what, refill))

    def clear(self) -> threading.Thread | None:
        """Forget every ServiceAccount and ConfigMap entry, then refill from the sources.

        Upstream's informer resync re-adds everything within a period; without a refill we
        would silently stop mutating. The refill runs in a thread (a large relist must not
        stall the caller, usually the event loop); the thread is returned for tests.
        """
        with self._write_lock:
            self._used = self.used
            self._service_accounts = {}
            self._config_map = EMPTY_INDEX
            self._changed()
        if not self._refills:
            return None
        thread = threading.Thread(target=self._refill, name="cache-refill", daemon=True)
        thread.start()
        return thread

    def _refill(self) -> None:
        with self._refill_lock:  # clears in quick succession refill one after the other
            for what, refill in self._refills:
                try:
                    refill()
                except Exception as err:  # the source's own retry loop still runs
                    log.error("refilling the cache from %s after a clear failed: %s", what, err)
                else:
                    log.info("cache cleared and refilled from %s", what)

    # -- arrival notifications (service-account lookup grace period) ------------------------

    def subscribe(self, key: str, callback: ArrivalCallback) -> None:
        with self._arrival_lock:
            self._arrivals.setdefault(key, []).append(callback)

    def unsubscribe(self, key: str, callback: ArrivalCallback) -> None:
        with self._arrival_lock:
            callbacks = self._arrivals.get(key)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._arrivals[key]

    def _notify(self, key: str) -> None:
        if not self._arrivals:  # unlocked fast check: no one waits on nearly every write
            return
        with self._arrival_lock:
            callbacks = self._arrivals.pop(key, [])
        for callback in callbacks:
            try:
                callback(key)
            except Exception:  # a waiter's failure must not break the writer (a watch thread)
                log.exception("service account arrival callback failed")
