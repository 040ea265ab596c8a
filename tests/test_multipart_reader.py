"""Byte-level tests of the multipart/related reader (no I/O).

Bodies are written out by hand here; only one round-trip test uses the project's writer.
Every table is run with the whole body in one chunk, one byte at a time, and (with
hypothesis) at random split points.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import multipart
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dicomweb_async import (
    DICOMwebError,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    ProtocolError,
    SinglePartReader,
)
from dicomweb_async._core.multipart_reader import BoundarySniffer, make_reader
from dicomweb_async._core.multipart_writer import BodyPart, MultipartWriter

BOUNDARY = "dwa-test-7f3a91c2"
BND = BOUNDARY.encode("ascii")
CT_DICOM = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
CT_BARE = f"multipart/related; boundary={BOUNDARY}"
TS_EXPLICIT = "1.2.840.10008.1.2.1"
TS_JPEG = "1.2.840.10008.1.2.4.50"
CT_FRAMES = (
    f'multipart/related; type="application/octet-stream; transfer-syntax={TS_EXPLICIT}"; '
    f"boundary={BOUNDARY}"
)

HYPOTHESIS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Headers = tuple[tuple[str, str], ...]


# -- helpers ------------------------------------------------------------------------------


def build(
    parts: Sequence[tuple[Headers, bytes]],
    *,
    boundary: bytes = BND,
    preamble: bytes | None = None,
    epilogue: bytes | None = None,
) -> bytes:
    """Frame ``parts`` as a multipart body, written out byte by byte."""
    out = b""
    if preamble is not None:
        out += preamble + b"\r\n"
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n"
        for name, value in headers:
            out += name.encode("utf-8") + b": " + value.encode("utf-8") + b"\r\n"
        out += b"\r\n" + body + b"\r\n"
    out += b"--" + boundary + b"--"
    if epilogue is not None:
        out += b"\r\n" + epilogue
    return out


def whole(body: bytes) -> list[bytes]:
    return [body]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def split_at(body: bytes, points: Iterable[int]) -> list[bytes]:
    cuts = [0, *sorted(set(points)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(cuts) if b > a]


CHUNKERS = {"whole": whole, "bytewise": bytewise}


@dataclass
class Parsed:
    headers: PartHeaders
    body: bytes


def assemble(events: Iterable[object]) -> list[Parsed]:
    """Turn reader events into parts, checking that the event sequence is well formed."""
    parts: list[Parsed] = []
    current: Parsed | None = None
    for event in events:
        if isinstance(event, PartStart):
            assert current is None, "PartStart inside a part"
            assert event.index == len(parts)
            current = Parsed(event.headers, b"")
        elif isinstance(event, PartData):
            assert current is not None, "PartData outside a part"
            assert event.index == len(parts)
            assert isinstance(event.data, bytes)
            assert event.data, "PartData must never be empty"
            current.body += event.data
        elif isinstance(event, PartEnd):
            assert current is not None, "PartEnd outside a part"
            assert event.index == len(parts)
            assert event.size == len(current.body)
            parts.append(current)
            current = None
        else:  # pragma: no cover - only reached on a broken reader
            raise AssertionError(f"unexpected event {event!r}")
    assert current is None, "last part never ended"
    return parts


def run(reader: MultipartReader | SinglePartReader, chunks: Iterable[bytes]) -> list[Parsed]:
    events: list[object] = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    events.extend(reader.finish())
    return assemble(events)


def parse(content_type: str, chunks: Iterable[bytes], **limits: int) -> list[Parsed]:
    return run(make_reader(content_type, **limits), chunks)  # type: ignore[arg-type]


# -- well-formed bodies -------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """What one parsed part must look like."""

    headers: Headers
    body: bytes
    mime: str
    transfer_syntax: str | None = None
    location: str | None = None
    length: int | None = None


LOCATION = "/studies/1.2.3/series/4.5/instances/6.7"
NEAR = b"\r\n--" + BND[:-1]  # every byte of the delimiter but the last

WELL_FORMED: list[tuple[str, str, bytes, list[Want]]] = [
    (
        "no-headers",
        CT_DICOM,
        build([((), b"abc")]),
        [Want((), b"abc", "application/dicom")],
    ),
    (
        "no-headers-no-type",
        CT_BARE,
        build([((), b"abc")]),
        [Want((), b"abc", "")],
    ),
    (
        "all-headers",
        CT_DICOM,
        build(
            [
                (
                    (
                        ("Content-Type", "application/dicom"),
                        ("Content-Length", "5"),
                        ("Content-Location", LOCATION),
                    ),
                    b"DICM!",
                )
            ]
        ),
        [
            Want(
                (
                    ("Content-Type", "application/dicom"),
                    ("Content-Length", "5"),
                    ("Content-Location", LOCATION),
                ),
                b"DICM!",
                "application/dicom",
                location=LOCATION,
                length=5,
            )
        ],
    ),
    (
        "only-content-length",
        CT_DICOM,
        build([((("Content-Length", "3"),), b"xyz")]),
        [Want((("Content-Length", "3"),), b"xyz", "application/dicom", length=3)],
    ),
    (
        "only-content-location",
        CT_DICOM,
        build([((("Content-Location", LOCATION),), b"xyz")]),
        [Want((("Content-Location", LOCATION),), b"xyz", "application/dicom", location=LOCATION)],
    ),
    (
        "only-content-type-other-than-type-param",
        CT_DICOM,
        build([((("Content-Type", "application/dicom+json"),), b"[]")]),
        [Want((("Content-Type", "application/dicom+json"),), b"[]", "application/dicom+json")],
    ),
    (
        "transfer-syntax-from-quoted-type",
        CT_FRAMES,
        build(
            [
                ((("Content-Type", "application/octet-stream"),), b"\x00\x01"),
                ((), b"\x02"),
            ]
        ),
        [
            Want(
                (("Content-Type", "application/octet-stream"),),
                b"\x00\x01",
                "application/octet-stream",
                TS_EXPLICIT,
            ),
            Want((), b"\x02", "application/octet-stream", TS_EXPLICIT),
        ],
    ),
    (
        "part-transfer-syntax-wins",
        CT_FRAMES,
        build(
            [
                (
                    (("Content-Type", f"application/octet-stream; transfer-syntax={TS_JPEG}"),),
                    b"\xff\xd8\xff\xd9",
                )
            ]
        ),
        [
            Want(
                (("Content-Type", f"application/octet-stream; transfer-syntax={TS_JPEG}"),),
                b"\xff\xd8\xff\xd9",
                "application/octet-stream",
                TS_JPEG,
            )
        ],
    ),
    (
        "boundary-quoted",
        f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"',
        build([((), b"q")]),
        [Want((), b"q", "application/dicom")],
    ),
    (
        "boundary-quoted-with-specials",
        'multipart/related; boundary="a\'()+_,-./:=? z"; type="application/dicom"',
        build([((), b"s")], boundary=b"a'()+_,-./:=? z"),
        [Want((), b"s", "application/dicom")],
    ),
    (
        "boundary-first-then-type-mixed-case",
        f'Multipart/Related; BOUNDARY={BOUNDARY}; Type="Application/DICOM"',
        build([((), b"m")]),
        [Want((), b"m", "application/dicom")],
    ),
    (
        "preamble-and-epilogue",
        CT_DICOM,
        build(
            [((), b"body")],
            preamble=b"This is a preamble.\r\nIt has --dashes and lines\r\n",
            epilogue=b"and an epilogue\r\n--" + BND + b"\r\nthat is ignored\r\n",
        ),
        [Want((), b"body", "application/dicom")],
    ),
    (
        "empty-preamble-line",
        CT_DICOM,
        b"\r\n--" + BND + b"\r\n\r\nx\r\n--" + BND + b"--\r\n",
        [Want((), b"x", "application/dicom")],
    ),
    (
        "empty-parts",
        CT_DICOM,
        build([((), b""), ((("Content-Length", "0"),), b""), ((), b"")]),
        [
            Want((), b"", "application/dicom"),
            Want((("Content-Length", "0"),), b"", "application/dicom", length=0),
            Want((), b"", "application/dicom"),
        ],
    ),
    (
        "no-parts",
        CT_DICOM,
        b"--" + BND + b"--\r\n",
        [],
    ),
    (
        "binary-crlf-and-dashes",
        CT_DICOM,
        build(
            [
                ((), b"\r\n\r\n--\r\n--\r--\n-"),
                ((), b"\r"),
                ((), b"\n"),
                ((), b"\r\n"),
                ((), b"--"),
            ]
        ),
        [
            Want((), b"\r\n\r\n--\r\n--\r--\n-", "application/dicom"),
            Want((), b"\r", "application/dicom"),
            Want((), b"\n", "application/dicom"),
            Want((), b"\r\n", "application/dicom"),
            Want((), b"--", "application/dicom"),
        ],
    ),
    (
        "near-boundary-prefixes",
        CT_DICOM,
        build(
            [
                ((), NEAR),
                ((), NEAR + b"\r\n"),
                ((), b"a" + NEAR + b"b" + NEAR + b"\r\n--"),
                ((), b"x--" + BND + b"--y"),
                ((), b"\r\n--" + BND[:1]),
            ]
        ),
        [
            Want((), NEAR, "application/dicom"),
            Want((), NEAR + b"\r\n", "application/dicom"),
            Want((), b"a" + NEAR + b"b" + NEAR + b"\r\n--", "application/dicom"),
            Want((), b"x--" + BND + b"--y", "application/dicom"),
            Want((), b"\r\n--" + BND[:1], "application/dicom"),
        ],
    ),
    (
        "all-byte-values",
        CT_DICOM,
        build([((("Content-Length", "256"),), bytes(range(256)))]),
        [Want((("Content-Length", "256"),), bytes(range(256)), "application/dicom", length=256)],
    ),
    (
        "many-parts-mixed",
        CT_FRAMES,
        build(
            [((("Content-Location", f"/frames/{i}"),), bytes([i]) * (i * 7)) for i in range(1, 9)]
        ),
        [
            Want(
                (("Content-Location", f"/frames/{i}"),),
                bytes([i]) * (i * 7),
                "application/octet-stream",
                TS_EXPLICIT,
                location=f"/frames/{i}",
            )
            for i in range(1, 9)
        ],
    ),
]


def check(parsed: list[Parsed], wanted: list[Want]) -> None:
    assert [p.body for p in parsed] == [w.body for w in wanted]
    assert [p.headers.items for p in parsed] == [w.headers for w in wanted]
    for got, want in zip(parsed, wanted, strict=True):
        assert got.headers.content_type.mime == want.mime
        assert got.headers.transfer_syntax == want.transfer_syntax
        assert got.headers.content_location == want.location
        assert got.headers.content_length == want.length


@pytest.mark.parametrize("chunker", list(CHUNKERS.values()), ids=list(CHUNKERS))
@pytest.mark.parametrize(
    ("content_type", "body", "wanted"),
    [pytest.param(ct, body, wanted, id=name) for name, ct, body, wanted in WELL_FORMED],
)
def test_well_formed(content_type: str, body: bytes, wanted: list[Want], chunker) -> None:
    reader = make_reader(content_type)
    assert isinstance(reader, MultipartReader)
    check(run(reader, chunker(body)), wanted)
    assert reader.complete
    assert reader.part_count == len(wanted)
    assert reader.offset == len(body)


@HYPOTHESIS
@given(case=st.sampled_from(WELL_FORMED), data=st.data())
def test_well_formed_random_splits(case, data) -> None:
    _, content_type, body, wanted = case
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    check(parse(content_type, split_at(body, points)), wanted)


def test_header_names_are_normalised_and_lookup_is_case_insensitive() -> None:
    body = (
        b"--" + BND + b"\r\n"
        b"content-type:   application/dicom\r\n"
        b"CONTENT-LOCATION: /x\r\n"
        b"x-custom-header: kept as sent\r\n"
        b"\r\n"
        b"payload\r\n"
        b"--" + BND + b"--"
    )
    for chunker in CHUNKERS.values():
        (part,) = parse(CT_BARE, chunker(body))
        assert part.headers.items == (
            ("Content-Type", "application/dicom"),
            ("Content-Location", "/x"),
            ("X-Custom-Header", "kept as sent"),
        )
        assert part.headers.get("content-type") == "application/dicom"
        assert part.headers.get("X-CUSTOM-HEADER") == "kept as sent"
        assert part.headers.get("missing") is None
        assert part.headers.get("missing", "dflt") == "dflt"
        assert part.headers.content_type.mime == "application/dicom"
        assert part.headers.content_location == "/x"
        assert part.body == b"payload"


def test_reader_never_buffers_a_whole_part() -> None:
    # A large body fed in pieces comes out in pieces: data is released as it arrives,
    # apart from what could still be the start of a boundary.
    payload = bytes(range(256)) * 64
    body = build([((), payload)])
    reader = make_reader(CT_DICOM)
    chunk = 1000
    pending = 0
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        released = sum(len(e.data) for e in reader.feed(piece) if isinstance(e, PartData))
        pending += len(piece) - released
        assert pending <= 2 * chunk
    list(reader.finish())


@pytest.mark.parametrize("declared", [True, False])
def test_a_declared_length_is_taken_without_searching_for_the_boundary(declared: bool) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    parts: list[tuple[Headers, bytes]] = [
        ((("Content-Length", str(len(payload))),) if declared else (), payload)
    ] * 3
    body = build(parts)
    reader = make_reader(CT_DICOM)
    assert isinstance(reader, MultipartReader)
    searched = 0
    real_parse = reader._parser.parse

    def counting_parse(chunk: bytes):  # type: ignore[no-untyped-def]
        nonlocal searched
        searched += len(chunk)
        return real_parse(chunk)

    reader._parser.parse = counting_parse  # type: ignore[method-assign]
    chunk = 64 * 1024
    parsed = run(reader, [body[i : i + chunk] for i in range(0, len(body), chunk)])
    assert [p.body for p in parsed] == [payload] * 3
    if declared:
        # Only the pieces holding headers and delimiters are searched: one per part.
        assert searched <= 3 * chunk + 4 * 200
    else:
        assert searched == len(body)


def test_a_declared_length_that_runs_past_the_boundary_fails() -> None:
    # Declared one byte longer than the body: the delimiter is not where it says.
    payload = b"x" * 200_000
    body = build([((("Content-Length", str(len(payload) + 1)),), payload), ((), b"next")])
    for chunks in ([body], [body[i : i + 65536] for i in range(0, len(body), 65536)]):
        reader = make_reader(CT_DICOM)
        with pytest.raises(MultipartError):
            run(reader, chunks)


# -- hypothesis: random parts at random splits --------------------------------------------

FRAGMENTS = [b"\r", b"\n", b"\r\n", b"--", b"-", NEAR, b"\r\n--", b"--" + BND[:4], b"\x00\xff"]
body_bytes = st.lists(
    st.one_of(st.binary(max_size=24), st.sampled_from(FRAGMENTS)), max_size=6
).map(b"".join)
header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)


@st.composite
def parts_strategy(draw) -> list[tuple[Headers, bytes]]:
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        body = draw(body_bytes)
        headers: list[tuple[str, str]] = []
        if draw(st.booleans()):
            headers.append(
                (
                    "Content-Type",
                    draw(
                        st.sampled_from(
                            [
                                "application/dicom",
                                "application/octet-stream",
                                f"application/octet-stream; transfer-syntax={TS_JPEG}",
                                "image/jpeg",
                            ]
                        )
                    ),
                )
            )
        if draw(st.booleans()):
            headers.append(("Content-Length", str(len(body))))
        if draw(st.booleans()):
            headers.append(("Content-Location", draw(header_value)))
        parts.append((tuple(headers), body))
    return parts


@HYPOTHESIS
@given(
    parts=parts_strategy(),
    preamble=st.none() | st.binary(max_size=20),
    epilogue=st.none() | st.binary(max_size=20),
    data=st.data(),
)
def test_random_parts_at_random_splits(parts, preamble, epilogue, data) -> None:
    marker = b"--" + BND
    assume(all(marker not in body for _, body in parts))
    assume(preamble is None or marker not in preamble)
    body = build(parts, preamble=preamble, epilogue=epilogue)
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    content_type = data.draw(st.sampled_from([CT_DICOM, CT_FRAMES, CT_BARE]))
    parsed = parse(content_type, split_at(body, points))
    assert [p.body for p in parsed] == [b for _, b in parts]
    assert [p.headers.items for p in parsed] == [h for h, _ in parts]
    assert b"".join(p.body for p in parsed) == b"".join(b for _, b in parts)
    for got, (headers, part_body) in zip(parsed, parts, strict=True):
        given_headers = dict(headers)
        assert got.headers.content_location == given_headers.get("Content-Location")
        if "Content-Length" in given_headers:
            assert got.headers.content_length == len(part_body)
        else:
            assert got.headers.content_length is None


def test_round_trip_through_the_writer() -> None:
    writer = MultipartWriter(boundary="round-trip-boundary")
    bodies = [b"", b"\r\n--round-trip-boundar", bytes(range(256)) * 3, b"z"]
    parts = [BodyPart(size=len(b), data=b) for b in bodies]
    body = b"".join(writer.head(p) + (p.data or b"") + writer.part_end() for p in parts)
    body += writer.tail()
    assert len(body) == writer.content_length(parts)
    for chunker in CHUNKERS.values():
        parsed = parse(writer.content_type, chunker(body))
        assert [p.body for p in parsed] == bodies
        assert [p.headers.content_length for p in parsed] == [len(b) for b in bodies]
        assert all(p.headers.content_type.mime == "application/dicom" for p in parsed)


# -- truncated bodies ---------------------------------------------------------------------

TRUNCATION_PARTS: list[tuple[Headers, bytes]] = [
    ((("Content-Type", "application/dicom"), ("Content-Length", "6")), b"ab\r\ncd"),
    ((), b""),
    ((("Content-Location", "/x"),), b"--\r"),
]
TRUNCATION_BODY = build(TRUNCATION_PARTS, preamble=b"pre", epilogue=b"")


def _layout(body: bytes, parts: Sequence[tuple[Headers, bytes]]) -> list[tuple[int, int, int]]:
    """For each part: where its delimiter line ends, where its body starts and ends."""
    spots = []
    pos = 0
    for headers, part_body in parts:
        delimiter_end = body.index(b"--" + BND + b"\r\n", pos) + len(BND) + 4
        header_len = sum(len(n) + len(v) + 4 for n, v in headers) + 2
        body_start = delimiter_end + header_len
        assert body[body_start : body_start + len(part_body)] == part_body
        spots.append((delimiter_end, body_start, body_start + len(part_body)))
        pos = body_start + len(part_body)
    return spots


LAYOUT = _layout(TRUNCATION_BODY, TRUNCATION_PARTS)
CLOSED_AT = TRUNCATION_BODY.rindex(b"--" + BND + b"--") + len(BND) + 4
NEXT_DELIMITER = len(b"\r\n--") + len(BND) + len(b"\r\n")


def _outcome(chunks: list[bytes], closed: bool) -> tuple[MultipartReader, MultipartError | None]:
    reader = make_reader(CT_DICOM)
    assert isinstance(reader, MultipartReader)
    try:
        for chunk in chunks:
            list(reader.feed(chunk))
        assert reader.complete is closed
        list(reader.finish())
    except MultipartError as exc:
        assert not reader.complete
        return reader, exc
    return reader, None


@pytest.mark.parametrize("chunker", list(CHUNKERS.values()), ids=list(CHUNKERS))
def test_truncated_at_every_offset(chunker) -> None:
    body = TRUNCATION_BODY
    for cut in range(len(body) + 1):
        reader, error = _outcome(chunker(body[:cut]), cut >= CLOSED_AT)
        if cut >= CLOSED_AT:
            assert error is None, f"cut at {cut}: {error}"
            assert reader.complete
            continue
        assert error is not None, f"cut at {cut} reported a complete body"
        assert isinstance(error, ProtocolError)
        assert error.offset == cut
        assert f"byte offset {cut}" in str(error)
        if cut < LAYOUT[0][0]:
            assert error.part_index is None, f"cut at {cut}"
        for index, (_, body_start, body_end) in enumerate(LAYOUT):
            if body_start <= cut < body_end + NEXT_DELIMITER:
                assert error.part_index == index, f"cut at {cut}: {error}"
                assert f"part {index}" in str(error)


def test_truncated_inside_headers_names_that_part() -> None:
    body = TRUNCATION_BODY
    for index, (delimiter_end, body_start, _) in enumerate(LAYOUT):
        for cut in range(delimiter_end, body_start):
            _, error = _outcome([body[:cut]], False)
            assert error is not None
            assert error.part_index == index, f"cut at {cut}: {error}"


@HYPOTHESIS
@given(data=st.data())
def test_truncated_at_random_splits(data) -> None:
    body = TRUNCATION_BODY
    cut = data.draw(st.integers(0, CLOSED_AT - 1))
    points = data.draw(st.lists(st.integers(0, cut), max_size=10))
    _, error = _outcome(split_at(body[:cut], points), False)
    assert error is not None
    assert error.offset == cut


# -- malformed bodies ---------------------------------------------------------------------


def with_raw_header(raw: bytes) -> bytes:
    """A one-part body whose header section is ``raw`` (one line, CRLF added)."""
    return b"--" + BND + b"\r\n" + raw + b"\r\n\r\nx\r\n--" + BND + b"--"


MALFORMED: list[tuple[str, bytes, dict[str, int]]] = [
    ("garbage-instead-of-boundary", b"this is not a multipart body\r\n\r\nat all", {}),
    ("other-boundary", build([((), b"x")], boundary=b"not-the-boundary"), {}),
    ("empty-body", b"", {}),
    ("byte-after-first-boundary", b"--" + BND + b"X\r\n\r\nx\r\n--" + BND + b"--", {}),
    ("byte-after-boundary", b"--" + BND + b"\r\n\r\nx\r\n--" + BND + b"Z\r\n\r\ny", {}),
    ("lf-line-endings", b"--" + BND + b"\nA: b\n\nx\n--" + BND + b"--\n", {}),
    ("header-without-colon", with_raw_header(b"NoColonHere"), {}),
    ("header-name-with-space", with_raw_header(b"Bad Name: v"), {}),
    ("header-not-utf8", with_raw_header(b"X-Bin: \xff\xfe"), {}),
    ("header-too-long", with_raw_header(b"X-Long: " + b"v" * 100), {"max_header_size": 64}),
    (
        "header-too-long-unterminated",
        b"--" + BND + b"\r\nX-Long: " + b"v" * 200,
        {"max_header_size": 64},
    ),
    ("too-many-headers", with_raw_header(b"A: 1\r\nB: 2\r\nC: 3"), {"max_header_count": 2}),
    ("too-many-parts", build([((), b"1"), ((), b"2"), ((), b"3")]), {"max_parts": 2}),
    ("content-length-too-big", build([((("Content-Length", "4"),), b"abc")]), {}),
    ("content-length-too-small", build([((("Content-Length", "2"),), b"abc")]), {}),
    ("content-length-not-a-number", build([((("Content-Length", "abc"),), b"abc")]), {}),
    ("content-length-negative", build([((("Content-Length", "-3"),), b"abc")]), {}),
    ("content-length-twice", with_raw_header(b"Content-Length: 1\r\nContent-Length: 1"), {}),
]


@pytest.mark.parametrize("chunker", list(CHUNKERS.values()), ids=list(CHUNKERS))
@pytest.mark.parametrize(
    ("body", "limits"), [pytest.param(b, lim, id=name) for name, b, lim in MALFORMED]
)
def test_malformed(body: bytes, limits: dict[str, int], chunker) -> None:
    reader = make_reader(CT_DICOM, **limits)  # type: ignore[arg-type]
    assert isinstance(reader, MultipartReader)
    with pytest.raises(MultipartError) as info:
        run(reader, chunker(body))
    assert not reader.complete
    error = info.value
    assert isinstance(error, DICOMwebError)
    assert error.offset is not None
    assert 0 <= error.offset <= len(body)
    assert f"byte offset {error.offset}" in str(error)


BARE_LF_IN_HEADER = with_raw_header(b"A: b\nC: d")


def test_bare_lf_in_header_rejected_bytewise() -> None:
    with pytest.raises(MultipartError, match="line break"):
        parse(CT_DICOM, bytewise(BARE_LF_IN_HEADER))


@pytest.mark.xfail(
    strict=True,
    reason="a bare LF inside a header line is only rejected when the line arrives in pieces; "
    "in one chunk it is accepted and becomes part of the header value",
)
def test_bare_lf_in_header_rejected_whole() -> None:
    with pytest.raises(MultipartError):
        parse(CT_DICOM, whole(BARE_LF_IN_HEADER))


def test_limits_at_their_bounds_are_accepted() -> None:
    body = build([((), b"1"), ((("A", "1"), ("B", "2")), b"2")])
    parsed = parse(CT_DICOM, [body], max_parts=2, max_header_count=2)
    assert [p.body for p in parsed] == [b"1", b"2"]


def _exact_header_line_body(limit: int) -> bytes:
    line = b"X-A: " + b"a" * (limit - 5)
    assert len(line) == limit
    return with_raw_header(line)


def test_header_line_at_max_size_accepted_whole() -> None:
    (part,) = parse(CT_DICOM, whole(_exact_header_line_body(64)), max_header_size=64)
    assert part.headers.get("X-A") == "a" * 59


@pytest.mark.xfail(
    strict=True,
    reason="a header line of exactly max_header_size bytes is rejected when the chunk ends "
    "between its CR and LF (the pending CR is counted against the limit)",
)
def test_header_line_at_max_size_accepted_bytewise() -> None:
    (part,) = parse(CT_DICOM, bytewise(_exact_header_line_body(64)), max_header_size=64)
    assert part.headers.get("X-A") == "a" * 59


def test_error_after_data_names_part_and_offset() -> None:
    body = build([((), b"first"), ((("Content-Length", "9"),), b"second")])
    reader = make_reader(CT_DICOM)
    with pytest.raises(MultipartError) as info:
        run(reader, bytewise(body))
    error = info.value
    assert error.part_index == 1
    assert "part 1" in str(error)
    # Detected when the delimiter after the short part is complete.
    second_delimiter = body.rindex(b"\r\n--" + BND + b"--")
    assert second_delimiter < error.offset <= len(body)


@pytest.mark.parametrize("boundary", ["", "a\nb"])
def test_invalid_boundary(boundary: str) -> None:
    with pytest.raises(MultipartError):
        MultipartReader(boundary)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related",
        'multipart/related; type="application/dicom"',
        "multipart/related; boundary=",
    ],
)
def test_multipart_without_boundary_is_sniffed(content_type: str) -> None:
    assert isinstance(make_reader(content_type), BoundarySniffer)
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader("")


# -- single-part bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom", "application/dicom+json", "application/octet-stream", "image/jpeg"],
)
def test_make_reader_single_part(content_type: str) -> None:
    reader = make_reader(content_type)
    assert isinstance(reader, SinglePartReader)
    assert not isinstance(reader, MultipartReader)


def test_make_reader_multipart() -> None:
    assert isinstance(make_reader(CT_DICOM), MultipartReader)


SINGLE_CASES = [
    # (declared length, chunks, error expected from: None / "feed" / "finish")
    ("exact", 6, [b"abc", b"def"], None),
    ("exact-bytewise", 6, [b"a", b"b", b"c", b"d", b"e", b"f"], None),
    ("no-length", None, [b"abc", b"", b"defgh"], None),
    ("empty-no-length", None, [], None),
    ("empty-zero-length", 0, [b""], None),
    ("shorter", 6, [b"abc", b"de"], "finish"),
    ("nothing-of-some", 3, [], "finish"),
    ("longer", 4, [b"abc", b"de"], "feed"),
    ("longer-than-zero", 0, [b"x"], "feed"),
]


@pytest.mark.parametrize(
    ("length", "chunks", "fails_in"),
    [pytest.param(n, c, f, id=name) for name, n, c, f in SINGLE_CASES],
)
def test_single_part(length: int | None, chunks: list[bytes], fails_in: str | None) -> None:
    reader = make_reader(
        "application/dicom",
        content_length=length,
        headers=(("Content-Type", "application/dicom"), ("X-Extra", "1")),
    )
    assert isinstance(reader, SinglePartReader)
    sent = b"".join(chunks)
    events: list[object] = []
    if fails_in is None:
        parts = run(reader, chunks)
        assert len(parts) == 1
        assert parts[0].body == sent
        assert parts[0].headers.get("x-extra") == "1"
        assert parts[0].headers.content_type.mime == "application/dicom"
        assert parts[0].headers.content_length == length
        assert reader.part_count == 1
        assert reader.offset == len(sent)
        return
    with pytest.raises(MultipartError) as info:
        for chunk in chunks:
            events.extend(reader.feed(chunk))
        assert fails_in == "finish", "a body longer than its Content-Length was accepted"
        events.extend(reader.finish())
    assert not any(isinstance(e, PartEnd) for e in events)
    error = info.value
    assert error.part_index == 0
    assert "part 0" in str(error)
    expected_offset = len(sent) if fails_in == "finish" else length + 1
    if fails_in == "feed":
        # The offset is where the body went past its length: the end of the chunk that did.
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > length:
                expected_offset = total
                break
    assert error.offset == expected_offset
    assert f"byte offset {expected_offset}" in str(error)


def test_single_part_transfer_syntax_from_content_type() -> None:
    reader = make_reader(f"application/octet-stream; transfer-syntax={TS_JPEG}")
    (part,) = run(reader, [b"\xff\xd8"])
    assert part.headers.transfer_syntax == TS_JPEG
    assert part.headers.content_type.mime == "application/octet-stream"


# -- PartHeaders ----------------------------------------------------------------------------


def test_part_headers_from_items_fallback() -> None:
    fallback = make_reader(CT_FRAMES)
    assert isinstance(fallback, MultipartReader)
    (part,) = run(fallback, [build([((("Content-Type", "image/jpeg"),), b"j")])])
    # The part's own type wins; the transfer syntax still comes from the response's type.
    assert part.headers.content_type.mime == "image/jpeg"
    assert part.headers.transfer_syntax == TS_EXPLICIT


def test_part_headers_first_value_wins() -> None:
    headers = PartHeaders.from_items(
        (("Content-Location", "/a"), ("Content-Location", "/b"), ("content-length", "12"))
    )
    assert headers.content_location == "/a"
    assert headers.get("CONTENT-LOCATION") == "/a"
    assert headers.content_length == 12
    assert headers.content_type.mime == ""
    assert headers.transfer_syntax is None


@pytest.mark.parametrize("value", ["", "abc", "-1", "1.5", " "])
def test_part_headers_bad_content_length_is_ignored(value: str) -> None:
    assert PartHeaders.from_items((("Content-Length", value),)).content_length is None


def test_part_headers_non_ascii_digit_content_length_is_ignored() -> None:
    assert PartHeaders.from_items((("Content-Length", "\u00b2"),)).content_length is None


# -- the multipart dependency ---------------------------------------------------------------


def test_multipart_dependency_has_the_create_segment_hook() -> None:
    hook = getattr(multipart.PushMultipartParser, "_create_segment", None)
    assert callable(hook)
    match = re.match(r"(\d+)\.(\d+)", multipart.__version__)
    assert match is not None
    version = (int(match.group(1)), int(match.group(2)))
    assert (2, 0) <= version < (3, 0)


def test_unpatched_parser_rejects_parts_without_content_disposition() -> None:
    # The reason the reader overrides the hook: form-data parsing refuses DICOMweb parts.
    parser = multipart.PushMultipartParser(BOUNDARY)
    with pytest.raises(multipart.MultipartError):
        list(parser.parse(build([((("Content-Type", "application/dicom"),), b"x")])))


def test_complete_once_closing_boundary_is_fed() -> None:
    reader = make_reader(CT_DICOM)
    assert isinstance(reader, MultipartReader)
    list(reader.feed(build([((), b"x")])))
    assert reader.complete


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_input_yields_bytes(kind) -> None:
    body = build([((), b"payload")])
    for chunker in CHUNKERS.values():
        reader = make_reader(CT_DICOM)
        events = [e for chunk in chunker(body) for e in reader.feed(kind(chunk))]
        data = [e.data for e in events if isinstance(e, PartData)]
        assert b"".join(data) == b"payload"
        assert all(type(d) is bytes for d in data)


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_missing_boundary_is_taken_from_the_first_delimiter_line(piece: int) -> None:
    body = (
        b"\r\n--abc123\r\nContent-Type: application/dicom\r\n\r\nfirst"
        b"\r\n--abc123\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--abc123--\r\n"
    )
    reader = make_reader('multipart/related; type="application/dicom"')
    events = []
    for start in range(0, len(body), piece):
        events += list(reader.feed(body[start : start + piece]))
    events += list(reader.finish())
    data: dict[int, bytes] = {}
    for event in events:
        if isinstance(event, PartData):
            data[event.index] = data.get(event.index, b"") + event.data
    assert data == {0: b"first", 1: b"second"}


def test_a_body_that_is_not_multipart_after_all_is_one_part() -> None:
    body = b"\0" * 128 + b"DICM" + b"rest of an instance" * 100
    reader = make_reader('multipart/related; type="application/dicom"', content_length=len(body))
    events = list(reader.feed(body[:500])) + list(reader.feed(body[500:]))
    events += list(reader.finish())
    starts = [e for e in events if isinstance(e, PartStart)]
    assert len(starts) == 1 and starts[0].headers.content_type.mime == "application/dicom"
    assert b"".join(e.data for e in events if isinstance(e, PartData)) == body
