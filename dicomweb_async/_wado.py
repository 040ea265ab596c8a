"""WADO-RS: retrieve instances, frames, rendered images, bulk data and metadata."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import ProtocolError
from ._media import DICOM, DICOM_JSON, OCTET_STREAM, MediaTypeSpec, accept_header
from ._multipart import make_reader
from ._parts import Part, PartStream
from ._transport import Transport
from ._urls import build_query

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "Frame",
    "ReaderLimits",
    "dataset_from_part",
    "frames_path",
    "iter_frames",
    "open_parts",
    "read_bytes",
    "retrieve_metadata",
]

ANY_SYNTAX = "*"
DEFAULT_INSTANCE_TYPE: MediaTypeSpec = (DICOM, ANY_SYNTAX)
DEFAULT_FRAME_TYPE: MediaTypeSpec = (OCTET_STREAM, ANY_SYNTAX)


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
) -> AsyncIterator[PartStream]:
    """Send a GET and yield its body as a :class:`PartStream`."""
    request_headers = {"Accept": accept, **(headers or {})}
    async with transport.stream(
        "GET", path, query=query, headers=request_headers, ok=ok
    ) as response:
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


def _parse_dataset(data: bytes) -> Dataset:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


async def dataset_from_part(part: Part, stream: PartStream) -> Dataset:
    """Read a part whole and decode it as a DICOM file (in a worker thread)."""
    data = await part.read()
    try:
        return await anyio.to_thread.run_sync(_parse_dataset, data)
    except Exception as exc:  # pydicom raises many types for bad input
        raise ProtocolError(
            f"part {part.index} ({part.media_type or 'no Content-Type'}, {len(data)} bytes) "
            f"is not a DICOM file: {exc}",
            method=stream.method,
            url=stream.url,
        ) from None


def frames_path(instance: str, frame_numbers: Sequence[int]) -> str:
    """``{instance}/frames/1,2,...`` after checking the numbers are 1-based."""
    if not frame_numbers:
        raise ValueError("frame_numbers must not be empty")
    for n in frame_numbers:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"frame numbers are 1-based integers, got {n!r}")
    return f"{instance}/frames/{','.join(str(n) for n in frame_numbers)}"


async def iter_frames(
    transport: Transport,
    path: str,
    media_types: Sequence[MediaTypeSpec] | None,
    limits: ReaderLimits,
) -> AsyncIterator[Frame]:
    """Yield frames (or bulk data parts) one at a time as :class:`Frame`."""
    accept = accept_header(media_types, default=DEFAULT_FRAME_TYPE, multipart=True)
    async with open_parts(transport, path, accept, limits=limits) as parts:
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


async def retrieve_metadata(transport: Transport, path: str) -> list[dict[str, Any]]:
    """GET ``{path}/metadata`` as a list of DICOM JSON datasets."""
    response, body = await transport.request(
        "GET", f"{path}/metadata", headers={"Accept": DICOM_JSON}
    )
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"metadata response is not JSON: {exc}", method="GET", url=response.url
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ProtocolError(
            "metadata response is not a DICOM JSON array", method="GET", url=response.url
        )
    return data


def rendered_query(params: Mapping[str, Any] | None) -> str:
    """Query string for rendered resources (quality, window, viewport...)."""
    return build_query(params or {})
