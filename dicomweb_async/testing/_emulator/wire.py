"""Requests, responses and small HTTP helpers shared by the emulator's handlers.

The handlers see a front-end neutral :class:`Request` (its body an async iterator of
pieces, read as it arrives) and return a :class:`Response` whose body is either small
bytes or a factory of an async stream with a known length. The in-process httpx transport
and the loopback HTTP/1.1 server both translate to and from these.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..._core.media import MediaType, parse_media_type

__all__ = [
    "REASONS",
    "Chunk",
    "ClientDisconnected",
    "Context",
    "HttpError",
    "Request",
    "Response",
    "accept_ranges",
    "error_response",
    "json_response",
    "read_body",
    "read_json",
]

#: A piece of a response body.
Chunk = bytes | memoryview

DICOM_JSON = "application/dicom+json"
_MAX_JSON_BODY = 1024 * 1024

REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


@dataclass
class Request:
    """A request as the handlers see it.

    Attributes
    ----------
    method : str
        Upper-case method.
    path : str
        The path, still percent-encoded.
    query : str
        The raw query string (without ``?``).
    headers : list of (str, str)
        Request headers in the order received.
    body : async iterator of bytes
        The body, piece by piece as it arrives; read at most once.
    origin : str
        ``scheme://host[:port]`` the client addressed, for absolute URLs in answers.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    origin: str

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Response:
    """An answer: small ``body`` bytes, or ``stream`` producing ``length`` bytes.

    ``cut_after`` makes the front end break the connection after that many body bytes
    (the ``drop_next_response_after`` fault).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: Callable[[], AsyncGenerator[Chunk, None]] | None = None
    length: int = 0
    cut_after: int | None = None

    @property
    def content_length(self) -> int:
        """Length of the body in bytes."""
        return self.length if self.stream is not None else len(self.body)

    async def iter_body(self) -> AsyncGenerator[Chunk, None]:
        """The body in pieces, whichever form it has."""
        if self.stream is None:
            if self.body:
                yield self.body
            return
        async with contextlib.aclosing(self.stream()) as chunks:
            async for chunk in chunks:
                yield chunk


class HttpError(Exception):
    """Raised by handlers to answer with an error status."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass(frozen=True)
class Context:
    """Where a request was addressed: API version, partition and URL roots.

    Attributes
    ----------
    api_version : int
        1 or 2.
    partition : str
        The data partition (``Microsoft.Default`` unless the path names one).
    service_url : str
        ``{origin}/v{N}``: the root of partition-independent resources.
    base_url : str
        ``service_url`` plus ``/partitions/{name}`` when the path named a partition.
    """

    api_version: int
    partition: str
    service_url: str
    base_url: str


def json_response(
    status: int,
    data: Any,
    content_type: str = "application/json; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A JSON answer."""
    body = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return Response(status, [("Content-Type", content_type), *headers], body)


def error_response(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """An error answer with a small JSON body naming the problem."""
    code = REASONS.get(status, "Error").replace(" ", "")
    return json_response(status, {"error": {"code": code, "message": message}}, headers=headers)


def accept_ranges(accept: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, most preferred first (q=0 left out)."""
    if not accept or not accept.strip():
        return []
    ranges: list[tuple[float, int, MediaType]] = []
    depth = 0
    start = 0
    pieces: list[str] = []
    # Commas inside a quoted ``type="..."`` parameter do not separate ranges.
    for index, char in enumerate(accept):
        if char == '"':
            depth ^= 1
        elif char == "," and not depth:
            pieces.append(accept[start:index])
            start = index + 1
    pieces.append(accept[start:])
    for position, piece in enumerate(pieces):
        if not piece.strip():
            continue
        media = parse_media_type(piece)
        try:
            quality = float(media.params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            ranges.append((-quality, position, media))
    ranges.sort(key=lambda item: (item[0], item[1]))
    return [media for _, _, media in ranges]


async def read_body(request: Request, limit: int = _MAX_JSON_BODY) -> bytes:
    """The whole (small) body of ``request``; 413 when it is larger than ``limit``."""
    collected = bytearray()
    async for chunk in request.body:
        collected += chunk
        if len(collected) > limit:
            raise HttpError(413, f"the request body is larger than {limit} bytes")
    return bytes(collected)


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON; 415 for other content types, 400 when invalid."""
    content_type = parse_media_type(request.header("content-type") or "").mime
    if content_type and content_type not in ("application/json", DICOM_JSON, "text/json"):
        raise HttpError(415, f"expected a JSON body, got Content-Type {content_type!r}")
    data = await read_body(request)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
