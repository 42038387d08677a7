"""The store hands out the same Lookup (with its Resolution: identity and recipes) while nothing
changes, and never an outdated one after any source writes."""

from __future__ import annotations

import json
import threading

from webhook.core.configmap import parse_config
from webhook.core.settings import MutationSettings
from webhook.sources.store import LOOKUP_CACHE_SIZE, IdentityStore

ROLE = "eks.amazonaws.com/role-arn"
ARN_A = "arn:aws:iam::111122223333:role/a"
ARN_B = "arn:aws:iam::111122223333:role/b"


def _role(store: IdentityStore, namespace: str = "ns", name: str = "sa") -> str | None:
    entry = store.lookup(namespace, name).service_account
    return None if entry is None else entry.role_arn


def test_the_same_lookup_is_handed_out_while_nothing_changes() -> None:
    store = IdentityStore(MutationSettings())
    store.put_service_account("ns", "sa", {ROLE: ARN_A})
    assert store.lookup("ns", "sa") is store.lookup("ns", "sa")


def test_every_kind_of_write_is_seen_by_the_next_lookup() -> None:
    store = IdentityStore(MutationSettings())
    assert _role(store) is None
    store.put_service_account("ns", "sa", {ROLE: ARN_A})
    assert _role(store) == ARN_A
    store.put_service_account("ns", "sa", {ROLE: ARN_B})
    assert _role(store) == ARN_B
    store.delete_service_account("ns", "sa")
    assert _role(store) is None
    store.replace_service_accounts([("ns", "sa", {ROLE: ARN_A})])
    assert _role(store) == ARN_A
    store.clear()
    assert _role(store) is None

    assert store.lookup("ns", "sa").config_map is None
    index = parse_config(json.dumps({"ns/sa": {"RoleARN": ARN_B}}), MutationSettings())
    store.set_config_map(index)
    config_map = store.lookup("ns", "sa").config_map
    assert config_map is not None and config_map.role_arn == ARN_B

    assert store.lookup("ns", "sa").container_credentials is False
    store.set_container_credentials([("ns", "sa")])
    assert store.lookup("ns", "sa").container_credentials is True


def test_the_cache_stays_bounded() -> None:
    store = IdentityStore(MutationSettings())
    for i in range(LOOKUP_CACHE_SIZE + 10):
        store.lookup("ns", f"sa-{i}")
    assert len(store._lookups) <= LOOKUP_CACHE_SIZE


def test_reads_racing_writes_end_on_the_last_write() -> None:
    """A watch thread flips a role while readers look it up; once the writes stop, every
    reader sees the last one (a lookup built from older data is never served again)."""
    store = IdentityStore(MutationSettings())
    store.put_service_account("ns", "sa", {ROLE: ARN_A})
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            store.lookup("ns", "sa")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for i in range(5_000):
        store.put_service_account("ns", "sa", {ROLE: ARN_A if i % 2 else ARN_B})
    last = ARN_A if 4_999 % 2 else ARN_B
    stop.set()
    for reader in readers:
        reader.join()
    assert _role(store) == last


def test_an_update_to_one_service_account_keeps_every_other_lookup() -> None:
    """Churn on a few ServiceAccounts (50 updates/s is common) must not make every review
    rebuild its lookup."""
    store = IdentityStore(MutationSettings())
    store.put_service_account("ns", "busy", {ROLE: ARN_A})
    store.put_service_account("ns", "calm", {ROLE: ARN_A})
    calm = store.lookup("ns", "calm")
    store.lookup("ns", "busy")
    store.put_service_account("ns", "busy", {ROLE: ARN_B})
    assert store.lookup("ns", "calm") is calm
    assert _role(store, name="busy") == ARN_B


def test_a_service_account_that_goes_plain_and_back_is_seen_each_time() -> None:
    store = IdentityStore(MutationSettings())
    store.put_service_account("ns", "sa", None)
    assert _role(store) == ""
    store.put_service_account("ns", "sa", {ROLE: ARN_A})
    store.put_service_account("ns", "sa", None)
    assert _role(store) == ""
    store.delete_service_account("ns", "sa")
    assert _role(store) is None
    store.put_service_account("ns", "sa", None)
    assert _role(store) == ""
