"""Reading the three UIDs from the start of a Part 10 file, checked against pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomweb_async._core.identity import read_uids
from dicomweb_async._core.multipart_writer import dataset_bytes

STUDY, SERIES, SOP = "1.2.826.0.1.99.1", "1.2.826.0.1.99.1.2", "1.2.826.0.1.99.1.2.3"


def _encode(syntax: str, *, with_sequence: bool = False, private_text: int = 0) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = SOP
    ds.PatientID = "P"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    if private_text:
        ds.add_new(0x00091010, "LO", "x" * 60)
        ds.ImageComments = "y" * private_text
    if with_sequence:
        item = Dataset()
        item.CodeValue = "1"
        ds.add_new(0x00081032, "SQ", Sequence([item]))  # before the study UID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    return dataset_bytes(ds)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_little_endian_encodings(syntax: str) -> None:
    assert read_uids(_encode(syntax)) == (STUDY, SERIES, SOP)


def test_defined_length_sequence_before_the_uids_is_skipped() -> None:
    data = _encode(ExplicitVRLittleEndian, with_sequence=True)
    assert read_uids(data) == (STUDY, SERIES, SOP)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_encodings_are_left_to_pydicom(syntax: str) -> None:
    assert read_uids(_encode(syntax)) is None


def test_uids_beyond_the_head_are_left_to_pydicom() -> None:
    data = _encode(ExplicitVRLittleEndian)
    cut = data.rindex(SERIES.encode())
    assert read_uids(data[:cut]) is None
    assert read_uids(data[: cut + len(SERIES) + 1]) == (STUDY, SERIES, SOP)


@pytest.mark.parametrize("data", [b"", b"\0" * 200, b"\0" * 128 + b"DICX" + b"\0" * 64])
def test_not_part_10(data: bytes) -> None:
    assert read_uids(data) is None


def test_undefined_length_before_the_uids_is_left_to_pydicom() -> None:
    data = bytearray(_encode(ExplicitVRLittleEndian, private_text=10))
    # Turn the private LO element's length into "undefined" (not valid for LO, but what
    # an undefined-length sequence looks like to a reader that does not parse items).
    at = data.index(b"\x09\x00\x10\x10LO")
    data[at + 4 : at + 12] = b"SQ\x00\x00\xff\xff\xff\xff"
    assert read_uids(bytes(data)) is None


def test_seed_files_agree_with_pydicom(seed_files: list[Path]) -> None:
    for path in seed_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        assert read_uids(path.read_bytes()[: 64 * 1024]) == expected


@pytest.mark.parametrize(
    ("chunks", "limit", "wanted"),
    [
        ([], 4, b""),
        ([b"abcdef"], 4, b"abcdef"),  # one chunk is passed on whole, not cut
        ([b"abcdef", b"gh"], 4, b"abcdef"),
        ([b"ab", b"cdef", b"gh"], 4, b"abcd"),
        ([b"ab", b"cd"], 4, b"abcd"),
        ([b"ab", b"c"], 4, b"abc"),
    ],
)
def test_the_head_of_a_download_is_its_first_bytes(
    chunks: list[bytes], limit: int, wanted: bytes
) -> None:
    from dicomweb_async._services.download import _first_bytes

    got = _first_bytes(chunks, limit)
    assert got == wanted
    assert type(got) is bytes
    if chunks and len(chunks[0]) >= limit:
        assert got is chunks[0]
