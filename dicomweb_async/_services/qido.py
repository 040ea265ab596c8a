"""QIDO-RS: search for studies, series and instances."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from .._core.datasets import first_value
from .._core.exceptions import ProtocolError
from .._core.media import DICOM_JSON
from .._core.urls import build_query, search_path
from .._transport.transport import Transport

__all__ = ["SearchParams", "iter_search", "search"]

JSONDict = dict[str, Any]

logger = logging.getLogger("dicomweb_async")

# The attribute that identifies a result at each level, for dropping repeats when data
# arrives while paging (results come newest first on some servers).
_KEY_TAG = {
    "studies": "0020000D",
    "series": "0020000E",
    "instances": "00080018",
    "workitems": "00080018",
}


class SearchParams:
    """The parameters of one QIDO-RS search, shared by every page request."""

    def __init__(
        self,
        level: str,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        *,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ):
        self.path = search_path(level, study_instance_uid, series_instance_uid)
        self.level = level
        self.fuzzymatching = fuzzymatching
        self.limit = limit
        self.offset = offset or 0
        self.fields = fields
        self.search_filters = search_filters

    def query(self, offset: int) -> str:
        """The query string for the page that starts at ``offset``."""
        return build_query(
            self.search_filters,
            fuzzymatching=self.fuzzymatching,
            limit=self.limit,
            offset=offset or None,
            fields=self.fields,
        )


async def _page(transport: Transport, params: SearchParams, offset: int) -> list[JSONDict]:
    response, body = await transport.request(
        "GET",
        params.path,
        query=params.query(offset),
        headers={"Accept": DICOM_JSON},
        ok=(200, 204),
    )
    if response.status_code == 204 or not body.strip():
        return []
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"search response is not JSON: {exc}", method="GET", url=response.url
        ) from None
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise ProtocolError(
            "search response is not a DICOM JSON array", method="GET", url=response.url
        )
    return data


async def iter_search(
    transport: Transport, params: SearchParams, *, get_remaining: bool = True
) -> AsyncIterator[JSONDict]:
    """Yield results page by page.

    Paging stops on an empty page (or 204), on a page shorter than ``limit``, or on a
    page that brings nothing not seen before: a server that ignores ``offset`` answers
    every page with the first, and would otherwise be asked forever. Entries already
    yielded are skipped when a later page repeats them.
    """
    seen: set[str] = set()
    offset = params.offset
    while True:
        page = await _page(transport, params, offset)
        new = 0
        for item in page:
            key = first_value(item, _KEY_TAG[params.level])
            if key is None:  # no UID to tell entries apart: the whole entry does
                key = json.dumps(item, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            new += 1
            yield item
        if not get_remaining or not page:
            return
        if params.limit and len(page) < params.limit:
            return
        if not new:
            logger.warning(
                "GET %s: the page at offset %d repeats earlier results only; the server "
                "seems to ignore offset, so paging stops here",
                params.path,
                offset,
            )
            return
        offset += len(page)


async def search(
    transport: Transport, params: SearchParams, *, get_remaining: bool = False
) -> list[JSONDict]:
    """Collect the results of :func:`iter_search` into a list."""
    return [item async for item in iter_search(transport, params, get_remaining=get_remaining)]
