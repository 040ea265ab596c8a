"""WADO-RS: retrieve instances, frames, rendered images, bulk data and metadata."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._core.datasets import ChunksFile, read_dataset
from .._core.exceptions import NotAcceptableError, ProtocolError
from .._core.external_metadata import REQUEST_META_HEADER
from .._core.media import DICOM, DICOM_JSON, OCTET_STREAM, MediaTypeSpec, accept_header
from .._core.multipart_reader import make_reader
from .._core.urls import build_query
from .._transport.parts import Part, PartStream
from .._transport.transport import Transport

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "Frame",
    "Metadata",
    "fetch_metadata",
    "ReaderLimits",
    "dataset_from_part",
    "frames_path",
    "iter_frames",
    "open_parts",
    "read_bytes",
    "retrieve_metadata",
]

logger = logging.getLogger("dicomweb_async")

ANY_SYNTAX = "*"
DEFAULT_INSTANCE_TYPE: MediaTypeSpec = (DICOM, ANY_SYNTAX)
DEFAULT_FRAME_TYPE: MediaTypeSpec = (OCTET_STREAM, ANY_SYNTAX)

#: Parts up to this size are decoded into Datasets on the event loop; larger ones in a
#: worker thread. Handing a part to a thread costs more than decoding a small one: the
#: thread and the event loop, which keeps receiving, contend for the GIL. Measured on
#: 512 x 2 MiB from a loopback server, decoding on the loop used about 30% less CPU.
INLINE_DECODE_BYTES = 4 * 1024 * 1024


class ReaderLimits:
    """Limits applied when parsing multipart responses.

    Parameters
    ----------
    max_header_size : int
        Longest accepted part header line in bytes.
    max_header_count : int
        Most headers in one part.
    max_parts : int or None
        Most parts in one response.
    """

    def __init__(
        self,
        max_header_size: int = 16 * 1024,
        max_header_count: int = 32,
        max_parts: int | None = None,
    ):
        self.max_header_size = max_header_size
        self.max_header_count = max_header_count
        self.max_parts = max_parts


class Frame(bytes):
    """The bytes of one frame, with the media type and transfer syntax it came in.

    A ``bytes`` subclass, so code that expects plain bytes keeps working.
    """

    media_type: str
    transfer_syntax: str | None
    content_location: str | None

    def __new__(
        cls,
        data: bytes,
        media_type: str = OCTET_STREAM,
        transfer_syntax: str | None = None,
        content_location: str | None = None,
    ) -> Frame:
        obj = super().__new__(cls, data)
        obj.media_type = media_type
        obj.transfer_syntax = transfer_syntax
        obj.content_location = content_location
        return obj


@asynccontextmanager
async def open_parts(
    transport: Transport,
    path: str,
    accept: str,
    *,
    limits: ReaderLimits,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    ok: Collection[int] = (200,),
    fallback_accept: str | None = None,
) -> AsyncIterator[PartStream]:
    """Send a GET and yield its body as a :class:`PartStream`.

    With ``fallback_accept``, a 406 answer (the server cannot produce the requested
    transfer syntax) is followed by one more request with that Accept header instead.
    """
    request_headers = {"Accept": accept, **(headers or {})}
    async with AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(
                transport.stream("GET", path, query=query, headers=request_headers, ok=ok)
            )
        except NotAcceptableError:
            if not fallback_accept or fallback_accept == accept:
                raise
            logger.info("%s: 406 for %r; asking for %r instead", path, accept, fallback_accept)
            request_headers["Accept"] = fallback_accept
            response = await stack.enter_async_context(
                transport.stream("GET", path, query=query, headers=request_headers, ok=ok)
            )
        try:
            reader = make_reader(
                response.content_type,
                content_length=response.content_length,
                headers=response.raw_headers,
                max_header_size=limits.max_header_size,
                max_header_count=limits.max_header_count,
                max_parts=limits.max_parts,
            )
        except ProtocolError as exc:
            exc.method, exc.url = "GET", response.url
            raise
        yield PartStream(response.iter_bytes(), reader, method="GET", url=response.url)


async def dataset_from_part(part: Part, stream: PartStream) -> Dataset:
    """Read a part whole and decode it as a DICOM file.

    The part's chunks are decoded as they came (see :class:`ChunksFile`), not joined
    first: joining would copy the whole instance once more before pydicom copies its
    values out. Parts up to :data:`INLINE_DECODE_BYTES` are decoded on the event loop
    (a millisecond or two of work), larger ones in a worker thread.
    """
    chunks = [chunk async for chunk in part.aiter_bytes()]
    size = sum(len(chunk) for chunk in chunks)
    what = f"part {part.index} ({part.media_type or 'no Content-Type'}, {size} bytes)"
    decode = functools.partial(read_dataset, method=stream.method, url=stream.url)
    if size <= INLINE_DECODE_BYTES:
        return decode(ChunksFile(chunks), what)
    return await anyio.to_thread.run_sync(decode, ChunksFile(chunks), what)


def frames_path(instance: str, frame_numbers: Sequence[int]) -> str:
    """``{instance}/frames/1,2,...`` after checking the numbers are 1-based."""
    if isinstance(frame_numbers, str | bytes) or not isinstance(frame_numbers, Sequence):
        raise TypeError(f"frame_numbers must be a sequence of int, not {frame_numbers!r}")
    if not frame_numbers:
        raise ValueError("frame_numbers must not be empty")
    for n in frame_numbers:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"frame numbers are int, not {type(n).__name__}: {n!r}")
        if n < 1:
            raise ValueError(f"frame numbers are 1-based, got {n!r}")
    return f"{instance}/frames/{','.join(str(n) for n in frame_numbers)}"


async def iter_frames(
    transport: Transport,
    path: str,
    media_types: Sequence[MediaTypeSpec] | None,
    limits: ReaderLimits,
    fallback_accept: str | None = None,
) -> AsyncIterator[Frame]:
    """Yield frames (or bulk data parts) one at a time as :class:`Frame`."""
    accept = accept_header(media_types, default=DEFAULT_FRAME_TYPE, multipart=True)
    async with open_parts(
        transport, path, accept, limits=limits, fallback_accept=fallback_accept
    ) as parts:
        async for part in parts:
            data = await part.read()
            yield Frame(
                data,
                part.media_type or OCTET_STREAM,
                part.transfer_syntax,
                part.headers.content_location,
            )


async def read_bytes(
    transport: Transport,
    path: str,
    accept: str,
    *,
    query: str = "",
) -> bytes:
    """GET a single-part resource (rendered image) and return its body."""
    _, body = await transport.request("GET", path, query=query, headers={"Accept": accept})
    return body


@dataclass(frozen=True)
class Metadata:
    """Metadata with its entity tag, for conditional requests.

    Attributes
    ----------
    items : list of dict
        DICOM JSON datasets (empty when ``not_modified``).
    etag : str or None
        The server's ETag; pass it back as ``if_none_match`` to ask only for changes.
    not_modified : bool
        True when the server answered 304: the metadata has not changed.
    """

    items: list[dict[str, Any]]
    etag: str | None
    not_modified: bool = False


ORIGINAL_VERSION_HEADER = "msdicom-request-original"


async def fetch_metadata(
    transport: Transport,
    path: str,
    *,
    if_none_match: str | None = None,
    request_original: bool = False,
    external: bool = False,
) -> Metadata:
    """GET ``{path}/metadata``, conditionally, optionally the pre-update version (Azure)."""
    headers = {"Accept": DICOM_JSON}
    if if_none_match:
        headers["If-None-Match"] = if_none_match
    if request_original:
        headers[ORIGINAL_VERSION_HEADER] = "true"
    if external:
        headers[REQUEST_META_HEADER] = "true"
    response, body = await transport.request(
        "GET", f"{path}/metadata", headers=headers, ok=(200, 304)
    )
    etag = response.headers.get("etag")
    if response.status_code == 304:
        return Metadata([], etag or if_none_match, not_modified=True)
    return Metadata(_metadata_items(response.url, body), etag)


async def retrieve_metadata(
    transport: Transport, path: str, *, request_original: bool = False, external: bool = False
) -> list[dict[str, Any]]:
    """GET ``{path}/metadata`` as a list of DICOM JSON datasets."""
    fetched = await fetch_metadata(
        transport, path, request_original=request_original, external=external
    )
    return fetched.items


def _metadata_items(url: str, body: bytes) -> list[dict[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"metadata response is not JSON: {exc}", method="GET", url=url
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ProtocolError("metadata response is not a DICOM JSON array", method="GET", url=url)
    return data


_WINDOW_FUNCTIONS = frozenset({"linear", "linear-exact", "sigmoid"})


def _numbers(name: str, value: Any, counts: tuple[int, ...]) -> list[Any]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or len(items) not in counts:
        wanted = " or ".join(str(n) for n in counts)
        raise ValueError(f"{name} takes {wanted} values, not {value!r}")
    return list(items)


def rendered_query(params: Mapping[str, Any] | None) -> str:
    """Query string for rendered and thumbnail resources (PS3.18 8.3.5.1).

    ``quality`` (1-100), ``viewport`` ((vw, vh) or (vw, vh, sx, sy, sw, sh)), ``window``
    ((center, width, function), the function one of linear, linear-exact, sigmoid) and
    ``annotation`` (``"patient"``, ``"technique"`` or both) are checked and written as
    the standard spells them (comma-separated); other parameters go as they are.

    Raises
    ------
    ValueError
        If a standard parameter has a value the standard does not allow.
    """
    params = dict(params or {})
    if "quality" in params:
        quality = params["quality"]
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality is an int from 1 to 100, not {quality!r}")
    if "viewport" in params:
        params["viewport"] = _numbers("viewport", params["viewport"], (2, 6))
    if "window" in params:
        window = _numbers("window", params["window"], (3,))
        if str(window[2]).strip().lower() not in _WINDOW_FUNCTIONS:
            raise ValueError(
                f"the window function is one of {', '.join(sorted(_WINDOW_FUNCTIONS))}, "
                f"not {window[2]!r}"
            )
        params["window"] = window
    if "annotation" in params:
        annotation = params["annotation"]
        items = annotation.split(",") if isinstance(annotation, str) else list(annotation)
        if not items or any(str(a).strip() not in ("patient", "technique") for a in items):
            raise ValueError(f"annotation is patient, technique or both, not {annotation!r}")
        params["annotation"] = items
    return build_query(params)
