"""The HTTP/1.1 server front end shared by the emulator and the loopback test server."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, cast

import pytest

from dicomweb_async.testing import AzureDicomEmulator
from dicomweb_async.testing._http_server import (
    CONTINUE,
    BodyReader,
    BodyWriter,
    ClientGone,
    Dropped,
    MalformedRequest,
    RequestHead,
    parse_head,
    read_head,
    reason_phrase,
    response_head,
    serve_connection,
)
from tests.loopback_server import LoopbackServer

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def head_with(*headers: str, version: str = "HTTP/1.1") -> RequestHead:
    lines = "".join(f"{line}\r\n" for line in headers)
    return parse_head(f"POST /studies {version}\r\n{lines}\r\n".encode("latin-1"))


async def feeding(pieces: Sequence[bytes], *, eof: bool = True, limit: int = 1 << 16) -> Any:
    """A StreamReader that receives ``pieces`` one event-loop turn apart."""
    reader = asyncio.StreamReader(limit=limit)

    async def feed() -> None:
        for piece in pieces:
            if piece:
                reader.feed_data(piece)
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    task = asyncio.ensure_future(feed())
    return reader, task


async def read_body(
    pieces: Sequence[bytes], headers: Sequence[str], *, limit: int = 7, eof: bool = True
) -> tuple[bytes, bytes]:
    """(body, what the reader still holds after it) for a stream cut into ``pieces``."""
    reader, task = await feeding(pieces, eof=eof)
    body = BodyReader(reader, head_with(*headers))
    data = bytearray()
    while piece := await body.read(limit):
        assert len(piece) <= limit
        data += piece
    assert body.done
    await task
    rest = await reader.read() if eof else b""
    return bytes(data), rest


def splits(raw: bytes) -> list[list[bytes]]:
    """``raw`` cut in two at every byte, and cut into single bytes."""
    return [[raw[:i], raw[i:]] for i in range(len(raw) + 1)] + [
        [raw[i : i + 1] for i in range(len(raw))]
    ]


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x;name=value\r\n%s\r\n" % (len(c), c) for c in chunks) + (
        b"0\r\n" + trailers + b"\r\n"
    )


# ---- request heads ---------------------------------------------------------------------------


def test_parse_head() -> None:
    head = parse_head(
        b"\r\n\r\nget /studies/1.2?limit=5&offset=0 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8042\r\nX-Custom:   padded value \t\r\nx-custom: second\r\n\r\n"
    )
    assert (head.method, head.target, head.path, head.query, head.version) == (
        "GET",
        "/studies/1.2?limit=5&offset=0",
        "/studies/1.2",
        "limit=5&offset=0",
        "HTTP/1.1",
    )
    assert head.headers == [
        ("Host", "127.0.0.1:8042"),
        ("X-Custom", "padded value"),
        ("x-custom", "second"),
    ]
    assert head.get("X-CUSTOM") == "padded value"
    assert head.get_all("x-custom") == ["padded value", "second"]
    assert head.get("Missing") is None
    assert head.get_all("Missing") == []
    assert parse_head(b"GET / HTTP/1.0\r\nEmpty:\r\n\r\n").headers == [("Empty", "")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\r\n\r\n", "empty request"),
        (b"GET /\r\n\r\n", "malformed request line"),
        (b"GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/2.0\r\n\r\n", "malformed request line"),
        (b"GET / http/1.1\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/1.x\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/1.10\r\n\r\n", "malformed request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "malformed header line"),
        (b"GET / HTTP/1.1\r\n: no name\r\n\r\n", "malformed header line"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "malformed header line"),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "malformed header line"),
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", "obsolete header folding"),
        (b"GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n", "obsolete header folding"),
        (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", "control character in header X"),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control character in header X"),
    ],
)
def test_malformed_heads_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_head(raw)
    assert (caught.value.status, caught.value.message, str(caught.value)) == (
        400,
        message,
        message,
    )


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", [], True),
        ("HTTP/1.1", ["keep-alive"], True),
        ("HTTP/1.1", ["close"], False),
        ("HTTP/1.1", ["Close"], False),
        ("HTTP/1.1", ["keep-alive, close"], False),
        ("HTTP/1.1", ["TE ,CLOSE"], False),
        ("HTTP/1.1", ["TE", "close"], False),
        ("HTTP/1.1", ["closed"], True),  # a token, not a substring
        ("HTTP/1.1", ["x-close"], True),
        ("HTTP/1.0", [], False),
        ("HTTP/1.0", ["keep-alive"], False),
    ],
)
def test_keep_alive(version: str, connection: list[str], keep_alive: bool) -> None:
    head = head_with(*(f"Connection: {value}" for value in connection), version=version)
    assert head.keep_alive is keep_alive


def test_expects_continue() -> None:
    assert head_with("Expect: 100-Continue").expects_continue
    assert not head_with().expects_continue
    assert not head_with("Expect: something-else").expects_continue
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_read_head_reads_one_head_at_a_time() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT_REQUEST
    for pieces in splits(raw):
        reader, task = await feeding(pieces)
        first = await read_head(reader, 1024)
        second = await read_head(reader, 1024)
        assert first is not None and second is not None
        assert (first.path, second.path) == ("/a", "/next")
        assert await read_head(reader, 1024) is None  # closed between requests
        await task


async def test_read_head_limits_and_eof() -> None:
    raw = b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    reader, _ = await feeding([raw])
    assert await read_head(reader, len(raw)) is not None
    reader, _ = await feeding([raw])
    with pytest.raises(MalformedRequest) as caught:
        await read_head(reader, len(raw) - 1)
    assert (caught.value.status, caught.value.message) == (431, "request head too large")
    # Past the reader's own limit the head is not even buffered whole.
    reader, _ = await feeding([raw], limit=64)
    with pytest.raises(MalformedRequest) as caught:
        await read_head(reader, 1 << 20)
    assert caught.value.status == 431

    reader, _ = await feeding([b"\r\n"])
    assert await read_head(reader, 1024) is None  # only blank noise before the close
    reader, _ = await feeding([b"GET / HTTP/1.1\r\nHo"])
    with pytest.raises(ClientGone):
        await read_head(reader, 1024)


# ---- request bodies --------------------------------------------------------------------------


async def test_content_length_body_at_every_split() -> None:
    body = b"0123456789abcdefghij"
    for pieces in splits(body + NEXT_REQUEST):
        assert await read_body(pieces, [f"Content-Length: {len(body)}"]) == (body, NEXT_REQUEST)


async def test_chunked_body_at_every_split() -> None:
    chunks = [b"first chunk", b"x", b"0123456789abcdef" * 2]
    raw = chunked(*chunks, trailers=b"X-Trailer: yes\r\nOther: 1\r\n")
    for pieces in splits(raw + NEXT_REQUEST):
        got = await read_body(pieces, ["Transfer-Encoding: chunked"], limit=5)
        assert got == (b"".join(chunks), NEXT_REQUEST)


async def test_body_framing_choices() -> None:
    # No framing header: no body, and the next request is left alone.
    assert await read_body([NEXT_REQUEST], []) == (b"", NEXT_REQUEST)
    assert await read_body([NEXT_REQUEST], ["Content-Length: 0"]) == (b"", NEXT_REQUEST)
    # Transfer-Encoding wins over Content-Length; codings before chunked are passed on.
    raw = chunked(b"abc")
    assert await read_body([raw], ["Content-Length: 1", "Transfer-Encoding: chunked"]) == (
        b"abc",
        b"",
    )
    assert await read_body([raw], ["Transfer-Encoding: gzip, Chunked"]) == (b"abc", b"")
    assert await read_body([raw], ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"]) == (
        b"abc",
        b"",
    )
    # Repeated Content-Length fields that agree are one length.
    assert await read_body([b"abcdef"], ["Content-Length: 3", "Content-Length: 3"]) == (
        b"abc",
        b"def",
    )
    assert await read_body([b"ab"], ["Content-Length: 002"]) == (b"ab", b"")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (["Content-Length: abc"], "invalid Content-Length"),
        (["Content-Length: -1"], "invalid Content-Length"),
        (["Content-Length: +1"], "invalid Content-Length"),
        (["Content-Length: 1.0"], "invalid Content-Length"),
        (["Content-Length: 1 2"], "invalid Content-Length"),
        (["Content-Length: 5, 5"], "invalid Content-Length"),
        (["Content-Length: \xb2"], "invalid Content-Length"),  # a digit to str.isdigit()
        (["Content-Length: 5", "Content-Length: 6"], "conflicting Content-Length fields"),
        (["Transfer-Encoding: gzip"], "unsupported Transfer-Encoding"),
        (["Transfer-Encoding: chunked, gzip"], "unsupported Transfer-Encoding"),
        (
            ["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"],
            "unsupported Transfer-Encoding",
        ),
    ],
)
async def test_bad_framing_headers_are_refused(headers: list[str], message: str) -> None:
    reader, _ = await feeding([b"12345"])
    with pytest.raises(MalformedRequest) as caught:
        BodyReader(reader, head_with(*headers))
    assert (caught.value.status, caught.value.message) == (400, message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"+5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n", "invalid chunk size"),
        (b"5\r\nhelloXX0\r\n\r\n", "chunk not followed by CRLF"),
        (b"5\r\nhello\n0\r\n\r\n", "chunk not followed by CRLF"),
        (b"5" * 100 + b"\r\n", "chunk size or trailer line too long"),
        (b"0\r\nX-Trailer: " + b"t" * 100 + b"\r\n\r\n", "chunk size or trailer line too long"),
    ],
)
async def test_malformed_chunks_are_refused(raw: bytes, message: str) -> None:
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        reader, _ = await feeding(pieces, limit=64)
        body = BodyReader(reader, head_with("Transfer-Encoding: chunked"))
        with pytest.raises(MalformedRequest) as caught:
            while await body.read(100):
                pass
        assert (caught.value.status, caught.value.message) == (400, message)


@pytest.mark.parametrize(
    ("headers", "raw"),
    [
        (["Content-Length: 10"], b"12345"),
        (["Transfer-Encoding: chunked"], b""),
        (["Transfer-Encoding: chunked"], b"5\r\nhel"),
        (["Transfer-Encoding: chunked"], b"5\r\nhello"),
        (["Transfer-Encoding: chunked"], b"5\r\nhello\r"),
        (["Transfer-Encoding: chunked"], b"5\r\nhello\r\n"),
        (["Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n"),
    ],
)
async def test_eof_inside_a_body_is_client_gone(headers: list[str], raw: bytes) -> None:
    reader, _ = await feeding([raw])
    body = BodyReader(reader, head_with(*headers))
    with pytest.raises(ClientGone):
        while await body.read(100):
            pass


async def test_iteration_drain_and_zero_reads() -> None:
    reader, _ = await feeding([b"x" * 10 + NEXT_REQUEST])
    body = BodyReader(reader, head_with("Content-Length: 10"), piece_size=4)
    assert await body.read(0) == b""
    assert [piece async for piece in body] == [b"xxxx", b"xxxx", b"xx"]
    assert await body.read(4) == b""

    raw = chunked(b"a" * 10, b"b" * 3)
    reader, _ = await feeding([raw + NEXT_REQUEST])
    body = BodyReader(reader, head_with("Transfer-Encoding: chunked"), piece_size=4)
    assert await body.read(2) == b"aa"
    await body.drain()
    assert body.done
    assert await read_head(reader, 1024) == parse_head(NEXT_REQUEST)


# ---- responses -------------------------------------------------------------------------------


def test_response_head() -> None:
    assert response_head(200, [("Content-Length", "2"), ("X-A", "b")]) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n"
    )
    assert response_head(204, []) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert reason_phrase(413) == "Content Too Large"
    assert reason_phrase(431) == "Request Header Fields Too Large"
    assert reason_phrase(503) == "Service Unavailable"
    assert reason_phrase(299) == "Status"


class _Wire:
    """Stands in for a StreamWriter: what was written, and how often drain() ran."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.drains = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    async def drain(self) -> None:
        self.drains += 1


async def send(
    pieces: Sequence[bytes], *, chunked: bool = False, allowance: int | None = None
) -> tuple[bytes, int, bool]:
    """(bytes on the wire, payload bytes counted as sent, whether it was cut)."""
    wire = _Wire()
    body = BodyWriter(cast(asyncio.StreamWriter, wire), chunked=chunked, allowance=allowance)
    try:
        await body.start()
        for piece in pieces:
            await body.write(memoryview(piece))
        await body.finish()
    except Dropped:
        return bytes(wire.data), body.sent, True
    return bytes(wire.data), body.sent, False


async def test_body_writer_whole_bodies() -> None:
    assert await send([b"abc", b"", b"de"]) == (b"abcde", 5, False)
    assert await send([b"abc", b"", b"de"], chunked=True) == (
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        5,
        False,
    )
    assert await send([], chunked=True) == (b"0\r\n\r\n", 0, False)
    assert await send([b"abc", b"de"], allowance=6) == (b"abcde", 5, False)


async def test_body_writer_cuts() -> None:
    pieces = [b"abc", b"defg"]
    assert await send(pieces, allowance=0) == (b"", 0, True)
    assert await send(pieces, allowance=0, chunked=True) == (b"", 0, True)
    assert await send(pieces, allowance=2) == (b"ab", 2, True)
    assert await send(pieces, allowance=5) == (b"abcde", 5, True)
    # A cut chunk is announced whole, as a server dying in the middle of it would have.
    assert await send(pieces, allowance=5, chunked=True) == (b"3\r\nabc\r\n4\r\nde", 5, True)
    # An allowance that ends with a piece cuts there too: the end of the body never comes.
    assert await send(pieces, allowance=3, chunked=True) == (b"3\r\nabc", 3, True)
    assert await send(pieces, allowance=7) == (b"abcdefg", 7, True)
    assert await send(pieces, allowance=7, chunked=True) == (b"3\r\nabc\r\n4\r\ndefg", 7, True)


# ---- connections -----------------------------------------------------------------------------


async def exchange_over_loopback(
    exchange: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]],
    request: bytes,
    *,
    half_close: bool = False,
) -> tuple[bytes, list[str], set[asyncio.Task[None]]]:
    """Serve one connection with ``exchange``; (what the client read, bugs, tasks left).

    The client reads until the server closes, so a server that kept the connection open
    would fail the test by timing out.
    """
    bugs: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    finished = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_connection(
                writer, lambda: exchange(reader, writer), on_bug=bugs.append, tasks=tasks
            )
        finally:
            finished.set()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if half_close:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
    writer.close()
    await asyncio.wait_for(finished.wait(), 10)
    server.close()
    await server.wait_closed()
    return reply, bugs, tasks


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    head = await read_head(reader, 1024)
    if head is None:
        return False
    body = BodyReader(reader, head)
    data = b"".join([piece async for piece in body])
    connection = "keep-alive" if head.keep_alive else "close"
    headers = [("Content-Length", str(len(data))), ("Connection", connection)]
    writer.write(response_head(200, headers) + data)
    await writer.drain()
    return head.keep_alive


async def test_serve_connection_keeps_alive_until_close() -> None:
    request = (
        b"POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunked(b"de")
    )
    reply, bugs, tasks = await exchange_over_loopback(echo, request)
    assert reply == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nde"
    )
    assert (bugs, tasks) == ([], set())


async def test_serve_connection_ends_quietly_when_the_client_goes() -> None:
    reply, bugs, tasks = await exchange_over_loopback(
        echo, b"POST / HTTP/1.1\r\nContent-", half_close=True
    )
    assert (reply, bugs, tasks) == (b"", [], set())


async def test_serve_connection_reports_bugs() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await read_head(reader, 1024)
        writer.write(b"partial")
        raise KeyError("no such thing")

    reply, bugs, tasks = await exchange_over_loopback(broken, NEXT_REQUEST)
    assert reply == b"partial"  # what was written still goes out before the close
    assert len(bugs) == 1 and "KeyError: 'no such thing'" in bugs[0]
    assert tasks == set()


async def test_serve_connection_ends_quietly_after_a_cut() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await read_head(reader, 1024)
        writer.write(response_head(200, [("Content-Length", "10")]))
        body = BodyWriter(writer, allowance=4)
        await body.write(b"0123456789")
        return True

    reply, bugs, tasks = await exchange_over_loopback(cut, NEXT_REQUEST)
    assert reply == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123"
    assert (bugs, tasks) == ([], set())


# ---- both servers over a socket --------------------------------------------------------------


@pytest.fixture(params=["emulator", "loopback"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[int, str, Callable[[], list[str]]]]:
    """(port, base path, the server's recorded bugs) of each server built on this module."""
    if request.param == "emulator":
        emulator = AzureDicomEmulator()
        with emulator.serve() as url:
            yield int(url.rsplit(":", 1)[1].split("/")[0]), "/v2", lambda: emulator.errors
    else:
        with LoopbackServer() as server:
            yield server.port, "", lambda: server.errors


def talk(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    """Everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def statuses(reply: bytes) -> list[bytes]:
    # Bodies here are small JSON or text, which never holds a status line.
    return re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", reply)


def test_servers_keep_alive_until_asked_to_close(served: tuple[int, str, Any]) -> None:
    port, base, errors = served
    get = f"GET {base}/studies HTTP/1.1\r\nHost: x\r\n".encode()
    reply = talk(port, get + b"\r\n" + get + b"\r\n" + get + b"Connection: close\r\n\r\n")
    assert len(statuses(reply)) == 3 and set(statuses(reply)) <= {b"200", b"204"}
    assert reply.count(b"Connection: close\r\n") == 1
    assert errors() == []


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Transfer-Encoding: chunked", b"zz\r\nhello\r\n0\r\n\r\n"),
        (b"Transfer-Encoding: chunked", b"5\r\nhelloXX0\r\n\r\n"),
        (b"Transfer-Encoding: gzip", b"hello"),
        (b"Content-Length: 5x", b"hello"),
    ],
)
def test_servers_refuse_broken_framing_and_close(
    served: tuple[int, str, Any], framing: bytes, body: bytes
) -> None:
    port, base, errors = served
    head = (
        f"POST {base}/studies HTTP/1.1\r\nHost: x\r\n".encode()
        + b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        + framing
        + b"\r\n\r\n"
    )
    # The request after the broken one is never answered: its start cannot be known.
    reply = talk(port, head + body + f"GET {base}/studies HTTP/1.1\r\n\r\n".encode())
    assert statuses(reply) == [b"400"]
    assert b"Connection: close\r\n" in reply
    assert errors() == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /studies HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", b"400"),
        (b"GET /studies HTTP/9.9\r\n\r\n", b"400"),
        (b"GET /studies HTTP/1.1\r\nX: " + b"a" * (64 * 1024) + b"\r\n\r\n", b"431"),
    ],
)
def test_servers_refuse_malformed_heads(
    served: tuple[int, str, Any], request_bytes: bytes, status: bytes
) -> None:
    port, _, errors = served
    reply = talk(port, request_bytes, half_close=True)
    assert statuses(reply) == [status]
    assert b"Connection: close\r\n" in reply
    assert errors() == []


def test_servers_end_quietly_when_the_client_goes(served: tuple[int, str, Any]) -> None:
    port, base, errors = served
    partial = f"POST {base}/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    assert talk(port, partial.encode(), half_close=True) == b""
    assert talk(port, b"GET /studies HTTP/1.1\r\nHo", half_close=True) == b""
    assert errors() == []
