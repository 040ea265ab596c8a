"""Tests of the multipart/related request framing (no I/O)."""

from __future__ import annotations

import copy
import io
import itertools
import os
import re
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb_async import PartData, PartEnd, PartStart
from dicomweb_async._core.multipart_reader import make_reader
from dicomweb_async._core.multipart_writer import BodyPart, MultipartWriter, body_part

HYPOTHESIS = settings(max_examples=200, deadline=None)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def frame(writer: MultipartWriter, parts: list[BodyPart], files: dict[Path, bytes]) -> bytes:
    """The body the transport would send: frames from the writer around each part's bytes."""
    out = b""
    for part in parts:
        data = part.data if part.data is not None else files[part.path]  # type: ignore[index]
        assert len(data) == part.size
        out += writer.head(part) + data + writer.part_end()
    return out + writer.tail()


# -- framing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("related_type", "expected"),
    [
        (None, 'multipart/related; type="application/dicom"; boundary=b-1'),
        ("application/dicom", 'multipart/related; type="application/dicom"; boundary=b-1'),
        (
            "application/dicom+json",
            'multipart/related; type="application/dicom+json"; boundary=b-1',
        ),
        (
            "application/octet-stream",
            'multipart/related; type="application/octet-stream"; boundary=b-1',
        ),
    ],
)
def test_content_type(related_type: str | None, expected: str) -> None:
    if related_type is None:
        writer = MultipartWriter(boundary="b-1")
    else:
        writer = MultipartWriter(boundary="b-1", related_type=related_type)
    assert writer.content_type == expected


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (
            BodyPart(size=0, data=b""),
            b"--B\r\nContent-Type: application/dicom\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            BodyPart(size=12345, path=Path("x.dcm")),
            b"--B\r\nContent-Type: application/dicom\r\nContent-Length: 12345\r\n\r\n",
        ),
        (
            BodyPart(size=2, data=b"{}", content_type="application/dicom+json"),
            b"--B\r\nContent-Type: application/dicom+json\r\nContent-Length: 2\r\n\r\n",
        ),
    ],
)
def test_head(part: BodyPart, expected: bytes) -> None:
    assert MultipartWriter(boundary="B").head(part) == expected


def test_part_end_and_tail() -> None:
    writer = MultipartWriter(boundary="the-boundary")
    assert writer.part_end() == b"\r\n"
    assert MultipartWriter.part_end() == b"\r\n"
    assert writer.tail() == b"--the-boundary--\r\n"


def test_small_body_byte_for_byte() -> None:
    writer = MultipartWriter(boundary="xyz")
    parts = [BodyPart(size=3, data=b"abc"), BodyPart(size=0, data=b"")]
    expected = (
        b"--xyz\r\nContent-Type: application/dicom\r\nContent-Length: 3\r\n\r\nabc\r\n"
        b"--xyz\r\nContent-Type: application/dicom\r\nContent-Length: 0\r\n\r\n\r\n"
        b"--xyz--\r\n"
    )
    assert frame(writer, parts, {}) == expected
    assert writer.content_length(parts) == len(expected)


@pytest.mark.parametrize(
    "sizes",
    [[], [0], [0, 0, 0], [1], [9], [10], [99, 100, 101], [0, 1, 0, 1000, 0], [123456], [5] * 40],
    ids=repr,
)
@pytest.mark.parametrize("boundary", [None, "b", "a-much-longer-boundary-" + "x" * 40])
def test_content_length_is_exact(sizes: list[int], boundary: str | None) -> None:
    writer = MultipartWriter(boundary=boundary)
    types = ["application/dicom", "application/octet-stream", "image/jpeg"]
    parts = [
        BodyPart(size=n, data=bytes([i % 256]) * n, content_type=types[i % 3])
        for i, n in enumerate(sizes)
    ]
    assert writer.content_length(parts) == len(frame(writer, parts, {}))


def test_content_length_with_files(tmp_path: Path) -> None:
    files: dict[Path, bytes] = {}
    parts = []
    for i, n in enumerate([0, 1, 4096, 70000]):
        path = tmp_path / f"f{i}.dcm"
        data = os.urandom(n)
        path.write_bytes(data)
        files[path] = data
        parts.append(body_part(path))
    parts.insert(2, BodyPart(size=3, data=b"mem"))
    writer = MultipartWriter()
    body = frame(writer, parts, files)
    assert writer.content_length(parts) == len(body)


@HYPOTHESIS
@given(sizes=st.lists(st.integers(0, 10**12), max_size=20), boundary=st.none() | st.just("q"))
def test_content_length_large_sizes(sizes: list[int], boundary: str | None) -> None:
    # Counted from the framing alone: the declared sizes may be far larger than memory.
    writer = MultipartWriter(boundary=boundary)
    parts = [BodyPart(size=n, path=Path(f"/data/{i}.dcm")) for i, n in enumerate(sizes)]
    framing = 0
    for n in sizes:
        framing += len(b"--" + writer.boundary.encode() + b"\r\n")
        framing += len(b"Content-Type: application/dicom\r\n")
        framing += len(f"Content-Length: {n}\r\n".encode()) + len(b"\r\n")
        framing += n + len(b"\r\n")
    framing += len(b"--" + writer.boundary.encode() + b"--\r\n")
    assert writer.content_length(parts) == framing


# RFC 2046: 1-70 characters from this set, not ending in a space.
BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def test_random_boundaries_are_unique_and_valid() -> None:
    boundaries = [MultipartWriter().boundary for _ in range(500)]
    assert len(set(boundaries)) == len(boundaries)
    for boundary in boundaries:
        assert BCHARS.fullmatch(boundary), boundary
        # Usable unquoted in the Content-Type header (an HTTP token).
        assert re.fullmatch(r"[0-9A-Za-z!#$%&'*+.^_`|~-]+", boundary), boundary


def test_explicit_boundary_is_kept() -> None:
    writer = MultipartWriter(boundary="fixed")
    assert writer.boundary == "fixed"
    assert writer.content_type.endswith("; boundary=fixed")


# -- body_part --------------------------------------------------------------------------------


class _PathLike:
    def __init__(self, path: Path):
        self._path = path

    def __fspath__(self) -> str:
        return str(self._path)


@pytest.mark.parametrize("kind", [Path, str, _PathLike])
def test_body_part_from_path(tmp_path: Path, kind) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(b"x" * 777)
    part = body_part(kind(path))
    assert part.size == 777
    assert part.path == path
    assert isinstance(part.path, Path)
    assert part.data is None
    assert part.content_type == "application/dicom"
    assert part.label == str(path)


def test_body_part_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        body_part(tmp_path / "missing.dcm")


@pytest.mark.parametrize(
    "make",
    [
        bytes,
        bytearray,
        lambda b: memoryview(b),
        lambda b: memoryview(bytearray(b)),
        lambda b: memoryview(b"--" + b + b"--")[2:-2],
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray", "memoryview-slice"],
)
def test_body_part_from_bytes(make) -> None:
    payload = bytes(range(256)) + b"\r\n--"
    item = make(payload)
    part = body_part(item)
    assert type(part.data) is bytes
    assert part.data == payload
    assert part.size == len(payload)
    assert part.path is None
    assert part.label == f"<{len(payload)} bytes in memory>"


def test_body_part_copies_mutable_input() -> None:
    buffer = bytearray(b"original")
    part = body_part(buffer)
    buffer[:] = b"changed!"
    assert part.data == b"original"


@pytest.mark.parametrize("item", [None, 42, 3.5, ["a.dcm"], {"a": 1}, object()])
def test_body_part_rejects_other_input(item: object) -> None:
    with pytest.raises(TypeError):
        body_part(item)  # type: ignore[arg-type]


def _dataset(with_meta: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-1"
    ds.Modality = "OT"
    if with_meta is not None:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = with_meta
    return ds


def _check_dataset_part(ds: Dataset, expected_syntax: str) -> None:
    before = copy.deepcopy(ds)
    had_meta = hasattr(ds, "file_meta")
    attributes = set(vars(ds))
    part = body_part(ds)

    # The caller's dataset is left exactly as it was.
    assert ds == before
    assert hasattr(ds, "file_meta") == had_meta
    if had_meta:
        assert ds.file_meta == before.file_meta
    assert set(vars(ds)) == attributes

    assert part.path is None
    assert part.data is not None
    assert part.size == len(part.data)
    assert part.data[128:132] == b"DICM"
    decoded = pydicom.dcmread(io.BytesIO(part.data))
    assert decoded.file_meta.TransferSyntaxUID == expected_syntax
    assert decoded.file_meta.MediaStorageSOPClassUID == SECONDARY_CAPTURE
    assert decoded.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for keyword in ("SOPClassUID", "SOPInstanceUID", "PatientName", "PatientID", "Modality"):
        assert decoded[keyword].value == ds[keyword].value


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_body_part_from_dataset_with_file_meta(syntax: str) -> None:
    _check_dataset_part(_dataset(syntax), syntax)


@pytest.mark.parametrize("meta", ["none", "empty"])
def test_body_part_from_dataset_without_transfer_syntax(meta: str) -> None:
    ds = _dataset(None)
    if meta == "empty":
        ds.file_meta = FileMetaDataset()
    _check_dataset_part(ds, ExplicitVRLittleEndian)


# -- round trip -------------------------------------------------------------------------------

part_strategy = st.tuples(
    st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from([b"\r\n", b"--", b"\r", b"\n", b"dicomweb-async-", b"\x00"]),
            max_size=12,
        ).map(b"".join),
    ),
    st.sampled_from(["application/dicom", "application/octet-stream", "image/jp2"]),
)


@HYPOTHESIS
@given(
    items=st.lists(part_strategy, max_size=8),
    related_type=st.sampled_from(["application/dicom", "application/octet-stream"]),
    data=st.data(),
)
def test_round_trip(items: list[tuple[bytes, str]], related_type: str, data) -> None:
    writer = MultipartWriter(related_type=related_type)
    parts = [BodyPart(size=len(b), data=b, content_type=t) for b, t in items]
    body = frame(writer, parts, {})
    assert len(body) == writer.content_length(parts)

    points = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=16))))
    cuts = [0, *points, len(body)]
    reader = make_reader(writer.content_type)
    events = []
    for start, end in itertools.pairwise(cuts):
        events.extend(reader.feed(body[start:end]))
    events.extend(reader.finish())

    starts = [e for e in events if isinstance(e, PartStart)]
    ends = [e for e in events if isinstance(e, PartEnd)]
    bodies = [b""] * len(starts)
    for event in events:
        if isinstance(event, PartData):
            bodies[event.index] += event.data
    assert bodies == [b for b, _ in items]
    assert [e.size for e in ends] == [len(b) for b, _ in items]
    assert [s.headers.content_type.mime for s in starts] == [t for _, t in items]
    assert [s.headers.content_length for s in starts] == [len(b) for b, _ in items]
