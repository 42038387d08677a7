"""Decoders for ServiceAccount lists: each page into only what the cache keeps.

List pages are decoded by msgspec into just the fields we keep (4x faster than a full
decode, and no garbage for the cycle collector to walk), in slices of a few items, so that the
thread listing can give the GIL up between slices (kube.py): a review arriving meanwhile waits
for at most one slice (~0.2 ms), not for a 500-item page (bench/churn.py measures it). A list
is decoded as its bytes stream in when it looks as the API server writes it, else whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec
import orjson

from webhook.sources.kube_client import KubeSourceError


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
