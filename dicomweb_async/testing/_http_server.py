"""The HTTP/1.1 server side shared by the test servers: requests in, raw responses out.

The emulator's loopback server and the test suite's loopback DICOMweb server both speak
HTTP/1.1 on :func:`asyncio.start_server`. This module reads what clients send (the request
head, a Content-Length or chunked body), decides whether a connection may carry another
request, and writes responses as raw bytes: a status line with headers, then a body that can
be cut after a byte allowance. Responses stay raw on purpose: the fault knobs need to send
what no HTTP library would (a body shorter than its Content-Length, a chunk announced but
not delivered, a close-delimited body) and the socket must be closed right there.

Request heads are parsed here by hand rather than with h11 (which httpcore brings along):
h11 refuses an HTTP/1.1 request without Host, where these servers fall back to their own
address; it unfolds obsolete line folding, which these servers refuse; and it would be a
dependency the package does not declare. The head is small and its grammar short, and h11
would see nothing else: bodies are read straight from the :class:`asyncio.StreamReader` in
pieces of up to a megabyte, so that the servers keep up with the client under test.
"""

from __future__ import annotations

import asyncio
import re
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = [
    "CONNECTION_ENDED",
    "CONTINUE",
    "BodyReader",
    "BodyWriter",
    "ClientGone",
    "Dropped",
    "MalformedRequest",
    "RequestHead",
    "parse_head",
    "read_head",
    "reason_phrase",
    "response_head",
    "serve_connection",
]

#: The interim answer to ``Expect: 100-continue``.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_IO_SIZE = 1024 * 1024
# RFC 9110 token characters, for methods and field names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_DIGITS = re.compile(r"[0-9]+")
_VERSION = re.compile(r"HTTP/1\.[0-9]")
# Phrases that RFC 9110 renamed; older Pythons' http.HTTPStatus still has the RFC 7231 ones.
_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


class MalformedRequest(Exception):
    """The request breaks HTTP/1.1 syntax or framing.

    The server answers :attr:`status` and closes the connection: after a framing error it
    cannot tell where the next request would start.

    Parameters
    ----------
    status : int
        400, or 431 for a request head over the size limit.
    message : str
        What was wrong, for the answer's body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The peer closed the connection in the middle of a request."""


class Dropped(Exception):
    """The server cut the connection on purpose (a fault injection)."""


#: Exceptions that end a connection without anything to answer or report.
CONNECTION_ENDED: tuple[type[Exception], ...] = (ClientGone, Dropped, ConnectionError)


@dataclass
class RequestHead:
    """A parsed request line and header section.

    Attributes
    ----------
    method : str
        Upper-case method.
    target : str
        The request target as sent.
    path : str
        The target before ``?``, still percent-encoded; for an absolute-form target
        (``http://host/path``, as sent to a proxy) the part after the authority.
    query : str
        The target after ``?`` (empty without one).
    version : str
        ``HTTP/1.`` and a minor version digit, usually ``HTTP/1.1`` or ``HTTP/1.0``.
    headers : list of (str, str)
        Header fields in the order received, names as sent, values stripped.
    """

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection carry another request.

        HTTP/1.1 connections persist unless a ``Connection`` header lists ``close``
        (RFC 9112, section 9.3). HTTP/1.0 ones end after the response: neither server
        implements the 1.0 keep-alive extension.
        """
        if self.version != "HTTP/1.1":
            return False
        options = {
            option.strip().lower()
            for value in self.get_all("Connection")
            for option in value.split(",")
        }
        return "close" not in options

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for :data:`CONTINUE` before sending the body."""
        return (self.get("Expect") or "").lower() == "100-continue"


def parse_head(raw: bytes) -> RequestHead:
    """Parse a request head, up to and including its blank line.

    Parameters
    ----------
    raw : bytes
        The request line and header lines, each ending in CRLF, then CRLF.

    Returns
    -------
    RequestHead

    Raises
    ------
    MalformedRequest
        With status 400 for an empty or malformed request line, a header line without
        a colon, a field name that is not a token or has whitespace before its colon,
        obsolete line folding, or a control character in a field value.
    """
    lines = raw.decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # RFC 9112 lets a client send empty lines before the request line
    if not lines:
        raise MalformedRequest(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _VERSION.fullmatch(parts[2]) or not _TOKEN.fullmatch(parts[0]):
        raise MalformedRequest(400, "malformed request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            # Folding is obsolete and a known request-smuggling vector: refuse, not unfold.
            raise MalformedRequest(400, "obsolete header folding")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise MalformedRequest(400, "malformed header line")
        if "\r" in value or "\n" in value or "\x00" in value:
            raise MalformedRequest(400, f"control character in header {name}")
        headers.append((name, value.strip()))
    path, _, query = target.partition("?")
    # A server must accept the absolute form as well (RFC 9112, section 3.2.2).
    scheme, sep, rest = path.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        path = "/" + rest.partition("/")[2]
    return RequestHead(method.upper(), target, path, query, version, headers)


async def read_head(reader: asyncio.StreamReader, max_size: int) -> RequestHead | None:
    """Read and parse the next request head on a connection.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The connection. A head longer than the reader's own limit is refused as well.
    max_size : int
        The most bytes a head may have, its blank line included.

    Returns
    -------
    RequestHead or None
        None when the client closed the connection between requests.

    Raises
    ------
    MalformedRequest
        431 for a head over the limit, 400 for one :func:`parse_head` refuses.
    ClientGone
        The connection closed inside a head.
    """
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ClientGone("connection closed inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise MalformedRequest(431, "request head too large") from None
    if len(raw) > max_size:
        raise MalformedRequest(431, "request head too large")
    return parse_head(raw)


class BodyReader:
    """The body of one request, read from the connection as the handler asks for it.

    The framing is chunked when the last transfer coding is ``chunked``, otherwise the
    Content-Length (no body without one). Chunk extensions and trailer fields are read and
    ignored. Iterating gives pieces of at most ``piece_size`` bytes.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The connection, positioned after the head. Its limit bounds chunk-size and
        trailer lines.
    head : RequestHead
        The request's head.
    piece_size : int, optional
        The most bytes one iteration step or :meth:`drain` step reads.

    Raises
    ------
    MalformedRequest
        400 for a Content-Length that is not a decimal number, Content-Length fields that
        disagree, or a Transfer-Encoding whose last coding is not ``chunked`` (the body's
        end could not be found).
    """

    def __init__(
        self, reader: asyncio.StreamReader, head: RequestHead, *, piece_size: int = _IO_SIZE
    ) -> None:
        self._reader = reader
        self._piece_size = piece_size
        codings = [
            coding.strip().lower()
            for value in head.get_all("Transfer-Encoding")
            for coding in value.split(",")
            if coding.strip()
        ]
        if codings and codings[-1] != "chunked":
            raise MalformedRequest(400, "unsupported Transfer-Encoding")
        self.chunked = bool(codings)
        self._remaining = 0
        lengths = set(head.get_all("Content-Length"))
        if not self.chunked and lengths:
            # isdigit() alone would let through digits of other scripts, which int() refuses.
            if not all(_DIGITS.fullmatch(length) for length in lengths):
                raise MalformedRequest(400, "invalid Content-Length")
            if len({int(length) for length in lengths}) > 1:
                raise MalformedRequest(400, "conflicting Content-Length fields")
            self._remaining = int(lengths.pop())
        self._done = not self.chunked and self._remaining == 0

    @property
    def done(self) -> bool:
        """Whether the whole body has been read."""
        return self._done

    def __aiter__(self) -> BodyReader:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read(self._piece_size)
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body; ``b""`` once it is complete.

        Raises
        ------
        MalformedRequest
            400 for a chunk size that is not hexadecimal, a chunk not followed by CRLF, or
            a chunk-size or trailer line longer than the reader's limit.
        ClientGone
            The connection closed before the body was complete.
        """
        if self._done or limit <= 0:
            return b""
        if self.chunked and self._remaining == 0:
            await self._next_chunk()
            if self._done:
                return b""
        data = await self._reader.read(min(limit, self._remaining))
        if not data:
            raise ClientGone("connection closed inside the request body")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self.chunked:
                try:
                    end = await self._reader.readexactly(2)
                except asyncio.IncompleteReadError:
                    raise ClientGone("connection closed inside the request body") from None
                if end != b"\r\n":
                    raise MalformedRequest(400, "chunk not followed by CRLF")
            else:
                self._done = True
        return data

    async def drain(self) -> None:
        """Read and drop whatever the handler left unread."""
        while await self.read(self._piece_size):
            pass

    async def _line(self) -> bytes:
        try:
            return await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise ClientGone("connection closed inside the request body") from None
        except asyncio.LimitOverrunError:
            raise MalformedRequest(400, "chunk size or trailer line too long") from None

    async def _next_chunk(self) -> None:
        line = await self._line()
        # Chunk extensions carry nothing these servers use.
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        # int(..., 16) alone would take "-1", "0x10" and "1_0".
        if not _HEX.fullmatch(size_text):
            raise MalformedRequest(400, "invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            while await self._line() != b"\r\n":
                pass  # trailer fields are ignored
            self._done = True
        self._remaining = size


def reason_phrase(status: int) -> str:
    """The reason phrase for ``status`` (RFC 9110's wording), or ``"Status"`` if unknown."""
    if status in _PHRASES:
        return _PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A status line and header section, ready to write.

    Parameters
    ----------
    status : int
        The status code.
    headers : list of (str, str)
        Header fields, written in this order and as given: framing headers
        (Content-Length, Transfer-Encoding, Connection) are the caller's to include.

    Returns
    -------
    bytes
        Latin-1 encoded, ending in the blank line.
    """
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BodyWriter:
    """Writes a response body, raw or chunked, and can cut it after a byte allowance.

    A cut raises :class:`Dropped` once ``allowance`` body bytes are written, even when
    that is the whole body (then the response's end never arrives: no last chunk, no
    further request on the connection). What was written stays buffered: the caller
    closes the connection, and :meth:`asyncio.StreamWriter.close` sends it before the FIN.

    Parameters
    ----------
    writer : asyncio.StreamWriter
        The connection, after the response head was written.
    chunked : bool, optional
        Frame the pieces as chunks.
    allowance : int or None, optional
        Payload bytes to send before cutting the connection; None never cuts. In chunked
        framing a cut chunk's size line announces the whole piece, as a server that died
        while writing it would have.

    Attributes
    ----------
    sent : int
        Payload bytes written so far.
    """

    def __init__(
        self, writer: asyncio.StreamWriter, *, chunked: bool = False, allowance: int | None = None
    ) -> None:
        self._writer = writer
        self._chunked = chunked
        self._allowance = allowance
        self.sent = 0

    async def start(self) -> None:
        """Cut at once if the allowance is zero, before any piece is produced."""
        if self._allowance == 0:
            raise Dropped

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write one piece (empty pieces write nothing) and wait for the buffer to drain.

        Raises
        ------
        Dropped
            The allowance ran out inside or at the end of this piece.
        """
        total = len(data)
        if not total:
            return
        count = total
        if self._allowance is not None:
            count = max(0, min(total, self._allowance - self.sent))
        if self._chunked:
            self._writer.write(b"%x\r\n" % total)
        self._writer.write(data[:count] if count < total else data)
        self.sent += count
        if count < total or (self._allowance is not None and self.sent >= self._allowance):
            raise Dropped
        if self._chunked:
            self._writer.write(b"\r\n")
        await self._writer.drain()

    async def finish(self) -> None:
        """End the body (the last chunk, when chunked) and drain."""
        if self._chunked:
            self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()


async def serve_connection(
    writer: asyncio.StreamWriter,
    exchange: Callable[[], Awaitable[bool]],
    *,
    on_bug: Callable[[str], None],
    tasks: set[asyncio.Task[None]],
) -> None:
    """Run request exchanges on one connection until one says it was the last.

    The connection ends quietly when the peer goes away or a fault cut it
    (:data:`CONNECTION_ENDED`) and when the server cancels the task; any other exception
    is a bug in the server, whose traceback goes to ``on_bug``. The writer is closed in
    every case, which flushes what was written before the FIN.

    Parameters
    ----------
    writer : asyncio.StreamWriter
        The connection.
    exchange : callable
        Reads one request and answers it; returns whether the connection may carry
        another. It answers malformed requests itself.
    on_bug : callable
        Receives the formatted traceback of an unexpected exception.
    tasks : set of asyncio.Task
        The running connection tasks, for the server to cancel on stop; this task is
        in it while it runs.
    """
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
    try:
        while await exchange():
            pass
    except CONNECTION_ENDED:
        pass
    except asyncio.CancelledError:
        # Only the server's stop cancels these tasks. asyncio's stream protocol reads the
        # result of the connection task, and would report a cancelled one as an error.
        pass
    except Exception:
        on_bug(traceback.format_exc())
    finally:
        if task is not None:
            tasks.discard(task)
        writer.close()
