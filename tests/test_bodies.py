"""Request bodies streamed from memory and disk: the exact bytes, the pieces, replay, and
files that change between planning a request and sending it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dicomweb_async._core.multipart_writer import BodyPart, MultipartWriter
from dicomweb_async._transport.bodies import MultipartBody, SinglePartBody

READ = 4096  # small reads, so that files take several


def _file(path: Path, size: int, seed: int) -> BodyPart:
    path.write_bytes(bytes((seed + i * 7) % 251 for i in range(size)))
    return BodyPart(size=size, path=path)


def _expected(writer: MultipartWriter, parts: list[BodyPart]) -> bytes:
    out = b""
    for part in parts:
        data = part.data if part.data is not None else part.path.read_bytes()  # type: ignore[union-attr]
        out += writer.head(part) + data + writer.part_end()
    return out + writer.tail()


async def _pieces(body: MultipartBody | SinglePartBody) -> list[bytes]:
    return [chunk async for chunk in body]


@pytest.mark.parametrize(
    "sizes",
    [
        [0],
        [10],
        [READ],  # exactly one read
        [READ + 1],
        [3 * READ],  # an exact multiple: the last read finds the end
        [3 * READ + 17, 5, 2 * READ, 100_000],
    ],
)
async def test_files_and_memory_make_the_exact_body_every_time(
    tmp_path: Path, sizes: list[int]
) -> None:
    parts = [_file(tmp_path / f"{n}.dcm", size, n) for n, size in enumerate(sizes)]
    parts.insert(1, BodyPart(size=5, data=b"hello"))
    writer = MultipartWriter()
    body = MultipartBody(parts, writer, read_size=READ)
    expected = _expected(writer, parts)
    first = b"".join(await _pieces(body))
    second = b"".join(await _pieces(body))  # a retry sends it all again
    assert first == second == expected
    assert body.content_length == len(expected)
    assert body.iterations == 2


async def test_a_request_of_small_instances_is_one_piece(tmp_path: Path) -> None:
    parts = [BodyPart(size=3, data=b"abc"), _file(tmp_path / "a.dcm", 2000, 1)]
    pieces = await _pieces(MultipartBody(parts))
    assert len(pieces) == 1


async def test_large_pieces_are_not_copied_into_the_framing(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    pieces = await _pieces(MultipartBody([BodyPart(size=len(data), data=data)]))
    assert len(pieces) == 3
    assert pieces[1] is data


@pytest.mark.parametrize("size", [1000, 5 * READ])
@pytest.mark.parametrize("change", [-1, +1])
async def test_a_file_that_changed_size_fails_the_request(
    tmp_path: Path, size: int, change: int
) -> None:
    part = _file(tmp_path / "x.dcm", size, 3)
    assert part.path is not None
    part.path.write_bytes(b"z" * (size + change))
    for body in (MultipartBody([part], read_size=READ), SinglePartBody(part, read_size=READ)):
        with pytest.raises(OSError, match="changed size"):
            await _pieces(body)


async def test_a_missing_file_fails_the_request(tmp_path: Path) -> None:
    part = BodyPart(size=5 * READ, path=tmp_path / "gone.dcm")
    with pytest.raises(FileNotFoundError):
        await _pieces(MultipartBody([part], read_size=READ))


async def test_small_bodies_in_memory_are_one_piece_without_iterating(tmp_path: Path) -> None:
    writer = MultipartWriter()
    parts = [BodyPart(size=3, data=b"abc"), BodyPart(size=2, data=b"de")]
    body = MultipartBody(parts, writer)
    assert body.in_memory() == _expected(writer, parts)
    assert body.iterations == 1
    # A part on disk, or a body past the size of one piece, is streamed instead.
    assert MultipartBody([_file(tmp_path / "a.dcm", 10, 1)]).in_memory() is None
    big = bytes(300 * 1024)
    assert MultipartBody([BodyPart(size=len(big), data=big)]).in_memory() is None


def test_a_single_part_body_in_memory_is_had_whole() -> None:
    body = SinglePartBody(BodyPart(size=5, data=b"hello"))
    assert body.in_memory() == b"hello" and body.iterations == 1
    assert SinglePartBody(BodyPart(size=9, path=Path("x.dcm"))).in_memory() is None


def test_spans_are_the_body_with_files_left_whole(tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.dcm", 3 * READ, 1), _file(tmp_path / "b.dcm", 10, 2)
    memory = BodyPart(size=5, data=b"hello")
    writer = MultipartWriter()
    body = MultipartBody([a, memory, b], writer)
    spans = body.spans()
    assert body.iterations == 1
    # Framing and in-memory parts joined; each file a span of its own, in order.
    assert [type(s) for s in spans] == [bytes, BodyPart, bytes, BodyPart, bytes]
    assert spans[1] is a and spans[3] is b
    whole = b"".join(s if isinstance(s, bytes) else s.path.read_bytes() for s in spans)  # type: ignore[union-attr]
    assert whole == _expected(writer, [a, memory, b])
    assert len(whole) == body.content_length
    single = SinglePartBody(a)
    assert single.spans() == [a] and single.iterations == 1
    assert SinglePartBody(memory).spans() == [b"hello"]


def test_large_bytes_are_a_span_of_their_own_not_copied(tmp_path: Path) -> None:
    big = BodyPart(size=256 * 1024, data=bytes(256 * 1024))
    writer = MultipartWriter()
    body = MultipartBody([big], writer)
    spans = body.spans()
    assert [type(s) for s in spans] == [bytes, bytes, bytes]
    assert spans[1] is big.data
    assert b"".join(spans) == _expected(writer, [big])  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_a_body_lets_go_of_its_bytes_when_the_exchange_ends(engine: str) -> None:
    # httpx keeps responses in reference cycles that hold the request and its body; the
    # bytes of what was sent must not wait for the garbage collector.
    from dicomweb_async import AsyncDICOMwebClient
    from tests.loopback_server import LoopbackServer, make_instance_bytes

    data = make_instance_bytes(size=64 * 1024)
    before = sys.getrefcount(data)
    with LoopbackServer() as server:
        async with AsyncDICOMwebClient(server.url, engine=engine) as client:  # type: ignore[arg-type]
            body = MultipartBody([BodyPart(size=len(data), data=data)])
            response, _ = await client._transport.request(
                "POST", "/studies", headers=body.headers, body=body
            )
            assert response.status_code == 200
            assert body.parts == []
            assert sys.getrefcount(data) == before
            single = SinglePartBody(BodyPart(size=len(data), data=data))
            await client._transport.request(
                "POST", "/studies", headers=single.headers, body=single
            )
            assert single.part.data is None and sys.getrefcount(data) == before
