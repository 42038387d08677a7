"""Listing ServiceAccounts: pages decoded into only what the cache keeps, the GIL given up
between slices of a page, and the same entries as a full decode would give."""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from webhook.core.settings import MutationSettings
from webhook.sources import kube, kube_lists, kube_watch
from webhook.sources.kube import KubeSource
from webhook.sources.kube_lists import (
    ListFormatError,
    PageMeta,
    decode_service_account_page,
    stream_service_account_page,
)
from webhook.sources.store import IdentityStore

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
ROLE = "arn:aws:iam::111122223333:role/app"


def account(index: int) -> dict[str, Any]:
    """A ServiceAccount as the API server lists it: plenty of fields the cache never reads."""
    annotations = {"meta.helm.sh/release-name": f"r{index}"}
    if index % 3 == 0:
        annotations[ROLE_ANNOTATION] = f"{ROLE}-{index}"
    return {
        "metadata": {
            "name": f"sa-{index}",
            "namespace": f"ns-{index % 7}",
            "uid": f"uid-{index}",
            "resourceVersion": str(100 + index),
            "labels": {"app": "x"},
            "annotations": annotations,
            "managedFields": [{"manager": "helm", "fieldsV1": {"f:metadata": {}}}],
        },
        "secrets": [{"name": f"sa-{index}-token"}],
    }


def page(items: list[dict[str, Any]], continue_token: str = "", version: str = "77") -> bytes:
    metadata: dict[str, Any] = {"resourceVersion": version}
    if continue_token:
        metadata["continue"] = continue_token
        metadata["remainingItemCount"] = 5
    return orjson.dumps(
        {"kind": "ServiceAccountList", "apiVersion": "v1", "metadata": metadata, "items": items}
    )


def test_a_page_decodes_to_namespace_name_and_annotations_with_its_continue_token() -> None:
    items = [account(i) for i in range(4)]
    accounts, token, version = decode_service_account_page(page(items, "next-page", "91"))
    assert token == "next-page" and version == "91"
    assert accounts == [
        (i["metadata"]["namespace"], i["metadata"]["name"], i["metadata"]["annotations"])
        for i in items
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind":"ServiceAccountList","metadata":{},"items":null}',
        b'{"kind":"ServiceAccountList","items":[]}',
        b'{"metadata":null}',
    ],
)
def test_an_empty_page_in_any_spelling_has_no_accounts_and_no_continue(body: bytes) -> None:
    assert decode_service_account_page(body) == ([], "", "")


def test_missing_or_null_metadata_and_annotations_decode_as_empty() -> None:
    body = (
        b'{"metadata":{"resourceVersion":"5","continue":null},"items":['
        b'{"metadata":{"name":"a","namespace":"n","annotations":null}},{"metadata":null},{}]}'
    )
    assert decode_service_account_page(body) == (
        [("n", "a", None), ("", "", None), ("", "", None)],
        "",
        "5",
    )


def test_a_page_the_schema_refuses_is_decoded_in_full_instead() -> None:
    # The API server stores annotations as strings only; should a page say otherwise, the
    # list goes on as it did before the typed decoder, rather than failing (and retrying).
    item = account(3)
    item["metadata"]["annotations"]["odd"] = 12
    accounts, token, version = decode_service_account_page(page([item], "t"))
    assert accounts == [("ns-3", "sa-3", item["metadata"]["annotations"])]
    assert (token, version) == ("t", "77")


class PagedAPI:
    """`count` ServiceAccounts in pages of kube.PAGE_SIZE, continue tokens as the API server's."""

    def __init__(self, count: int) -> None:
        self.items = [account(i) for i in range(count)]
        self.queries: list[dict[str, str]] = []

    def get_bytes(self, path: str, query: Any = None, timeout: float = 30.0) -> bytes:
        assert path == "/api/v1/serviceaccounts"
        params = dict(query or [])
        self.queries.append(params)
        start = int(base64.b64decode(params["continue"])) if "continue" in params else 0
        end = min(len(self.items), start + int(params["limit"]))
        token = base64.b64encode(str(end).encode()).decode() if end < len(self.items) else ""
        return page(self.items[start:end], token, version=str(1000 + end))

    def get_chunks(self, path: str, query: Any = None, timeout: float = 30.0) -> Iterator[bytes]:
        body = self.get_bytes(path, query, timeout)
        return iter([body[i : i + 1000] for i in range(0, len(body), 1000)])


def test_a_list_fills_the_store_from_every_page_and_gives_the_gil_up_between_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[int] = []
    store = IdentityStore(MutationSettings())
    monkeypatch.setattr(kube, "_give_up_gil", lambda: pauses.append(store.service_account_count))
    count = 2 * kube.PAGE_SIZE + 70
    api = PagedAPI(count)
    source = KubeSource(store, api, config_map_namespace=None, resync_seconds=0)  # type: ignore[arg-type]

    version = source._list_service_accounts()

    assert version == str(1000 + count)  # the last page's: the watch resumes from it
    assert [q.get("resourceVersion") for q in api.queries] == ["0", None, None]
    assert store.service_account_count == count
    assert store.identity_count == len(range(0, count, 3))
    entry = store.lookup("ns-3", "sa-3").service_account
    assert entry is not None and entry.role_arn == f"{ROLE}-3"
    assert store.lookup("ns-1", "sa-1").service_account is not None  # listed, no role
    # After each page's decode and after every YIELD_EVERY accounts of it.
    slices = sum(-(-n // kube.YIELD_EVERY) for n in (kube.PAGE_SIZE, kube.PAGE_SIZE, 70))
    assert len(pauses) == 3 + slices


def test_a_page_split_into_slices_gives_exactly_the_accounts_of_a_whole_decode() -> None:
    items = [account(i) for i in range(123)]
    # Text that looks like an item boundary inside a string: JSON escapes its quotes.
    items[7]["metadata"]["annotations"]["note"] = '},{"metadata":{"name":"fake"}}'
    body = page(items, "more", "12")
    token, version, slices = kube_lists.split_service_account_page(body, 50)
    chunks = list(slices)
    assert (token, version) == ("more", "12")
    assert [len(c) for c in chunks] == [50, 50, 23]
    assert [a for c in chunks for a in c] == decode_service_account_page(body)[0]


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(
            orjson.loads(page([account(i) for i in range(5)], "t")), option=orjson.OPT_INDENT_2
        ),
        orjson.dumps({"items": [account(i) for i in range(5)], "metadata": {"continue": "t"}}),
        page([account(i) for i in range(5)], "t") + b"\n",
    ],
    ids=["indented", "items first", "trailing newline"],
)
def test_any_other_layout_of_the_page_is_decoded_whole_or_sliced_alike(body: bytes) -> None:
    token, _, slices = kube_lists.split_service_account_page(body, 2)
    assert token == "t"
    assert [a for c in slices for a in c] == decode_service_account_page(body)[0]
    assert len(decode_service_account_page(body)[0]) == 5


def test_a_slice_that_fails_to_decode_falls_back_to_the_whole_page_for_the_rest() -> None:
    # An item whose own array holds objects starting with "metadata" (not a ServiceAccount
    # field, but possible in principle): the split lands inside it, the halves do not decode.
    items = [account(i) for i in range(6)]
    items[3]["extra"] = [{"metadata": {"a": "b"}}, {"metadata": {"c": "d"}}]
    body = page(items)
    _, _, slices = kube_lists.split_service_account_page(body, 2)
    assert [a for c in slices for a in c] == decode_service_account_page(body)[0]


def streamed(body: bytes, chunk: int, size: int = 50) -> tuple[list[Any], PageMeta]:
    meta = PageMeta()
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return [a for c in stream_service_account_page(pieces, size, meta) for a in c], meta


@pytest.mark.parametrize("chunk", [1, 13, 14, 15, 1000, 1 << 20])
def test_a_list_decoded_as_it_streams_in_gives_the_accounts_of_a_whole_decode(chunk: int) -> None:
    items = [account(i) for i in range(60)]
    items[7]["metadata"]["annotations"]["note"] = '},{"metadata":{"name":"fake"}}'
    body = page(items, "next", "33") + b"\n"  # as the API server ends it
    accounts, meta = streamed(body, chunk, size=7)
    assert accounts == decode_service_account_page(body)[0]
    assert (meta.continue_token, meta.resource_version) == ("next", "33")


@pytest.mark.parametrize(
    "body",
    [
        page([]),
        orjson.dumps(
            orjson.loads(page([account(i) for i in range(5)])), option=orjson.OPT_INDENT_2
        ),
        orjson.dumps({"items": [account(i) for i in range(5)], "metadata": {"continue": "t"}}),
    ],
    ids=["no items", "indented", "items first"],
)
def test_a_streamed_list_in_another_layout_is_read_whole_and_decoded_alike(body: bytes) -> None:
    accounts, meta = streamed(body, 64)
    assert accounts == decode_service_account_page(body)[0]
    assert meta.continue_token == decode_service_account_page(body)[1]


def test_a_streamed_list_that_turns_odd_halfway_is_listed_again_at_once_read_whole(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    items = [account(i) for i in range(120)]
    # The first slice cut (the 50th separator) lands inside item 49, on a lookalike.
    items[49]["extra"] = [{"metadata": {"a": "b"}}, {"metadata": {"c": "d"}}]
    body = page(items)
    with pytest.raises(ListFormatError):
        streamed(body, 4096)

    monkeypatch.setattr(kube, "_give_up_gil", lambda: None)
    store = IdentityStore(MutationSettings())
    api = PagedAPI(0)
    api.items = items
    swaps: list[int] = []
    replace = store.replace_service_accounts

    def counted(accounts: Any) -> None:
        replace(accounts)
        swaps.append(store.service_account_count)

    monkeypatch.setattr(store, "replace_service_accounts", counted)
    source = KubeSource(store, api, config_map_namespace=None, resync_seconds=0)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="webhook.kube")
    assert source._list_service_accounts() == str(1000 + 120)
    assert swaps == [120]  # nothing half-listed was swapped in, then the whole list
    assert len(api.queries) == 2  # streamed, then read whole
    assert caplog.records[0].getMessage().startswith("a ServiceAccount list looked odd halfway")
    source._list_service_accounts()  # the next list streams again (no sticky mode)
    assert len(api.queries) == 4 and swaps == [120, 120]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_list_and_watch_threads_run_nicer_than_the_event_loop_thread() -> None:
    seen: list[int] = []

    def thread() -> None:
        kube_watch.lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    kube_watch.lower_priority()  # on the main thread: no effect
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
    assert seen == [min(19, main_before + kube_watch.THREAD_NICENESS)]
