"""Reading UIDs and the transfer syntax from the start of a Part 10 file, against pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicomweb_async._core.identity import Header, read_header, read_uids
from dicomweb_async._core.multipart_writer import dataset_bytes

STUDY, SERIES, SOP = "1.2.826.0.1.99.1", "1.2.826.0.1.99.1.2", "1.2.826.0.1.99.1.2.3"


SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _undefined(element_or_item: object, flag: str) -> None:
    setattr(element_or_item, flag, True)


def _encode(
    syntax: str,
    *,
    with_sequence: bool = False,
    private_text: int = 0,
    undefined: bool = False,
    sop_class: bool = True,
) -> bytes:
    ds = Dataset()
    if sop_class:
        ds.SOPClassUID = SOP_CLASS
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
        inner = Dataset()
        inner.CodeMeaning = "nested"
        item.add_new(0x00400260, "SQ", Sequence([inner, Dataset()]))
        ds.add_new(0x00081032, "SQ", Sequence([item, Dataset()]))  # before the study UID
        if undefined:
            # pydicom writes these with undefined lengths and delimiters when asked.
            _undefined(ds[0x00081032], "is_undefined_length")
            _undefined(item[0x00400260], "is_undefined_length")
            for each in (item, inner):
                _undefined(each, "is_undefined_length_sequence_item")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS
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


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_undefined_length_sequences_before_the_uids_are_walked(syntax: str) -> None:
    data = _encode(syntax, with_sequence=True, undefined=True)
    assert b"\xfe\xff\xdd\xe0" in data  # a sequence delimiter is really there
    assert read_uids(data) == (STUDY, SERIES, SOP)
    # Cut inside the sequence: not enough bytes to know, so left to pydicom.
    assert read_uids(data[: data.index(b"\xfe\xff\xdd\xe0")]) is None


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, RLELossless])
def test_compressed_syntaxes_have_an_explicit_little_endian_data_set(syntax: str) -> None:
    header = read_header(_encode(syntax, with_sequence=True, undefined=True))
    assert header == Header(STUDY, SERIES, SOP, SOP_CLASS, syntax)


def test_sop_class_from_the_file_meta_when_the_data_set_has_none() -> None:
    header = read_header(_encode(ExplicitVRLittleEndian, sop_class=False))
    assert header is not None and header.sop_class_uid == SOP_CLASS


def test_undefined_length_that_does_not_parse_is_left_to_pydicom() -> None:
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


def _pydicom_test_files() -> list[Path]:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_pydicom_test_files_agree_with_pydicom() -> None:
    """Every file of pydicom's own test corpus: the same answer as pydicom, or none."""
    agreed = left = 0
    for path in _pydicom_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            expected = Header(
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "")),
                str(ds.file_meta.TransferSyntaxUID),
            )
        except Exception:  # not a Part 10 file, or lacking a UID: nothing to compare
            continue
        header = read_header(path.read_bytes()[: 64 * 1024])
        if header is None:
            left += 1
        else:
            assert header == expected, path.name
            agreed += 1
    # The corpus is mostly little endian: nearly all of it must be read here.
    assert agreed >= 50 and agreed > 5 * left, (agreed, left)


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


def test_the_scan_keeps_small_files_and_reads_the_header_of_large_ones(tmp_path: Path) -> None:
    from dicomweb_async._bulk.scan import ScannedFile, scan_file

    path = tmp_path / "x.dcm"
    data = _encode(JPEGBaseline8Bit, with_sequence=True, undefined=True)
    path.write_bytes(data)
    kept = scan_file(path, keep_up_to=len(data))
    assert isinstance(kept, ScannedFile) and kept.data == data
    assert (kept.study_instance_uid, kept.sop_class_uid) == (STUDY, SOP_CLASS)
    assert kept.transfer_syntax == JPEGBaseline8Bit
    header_only = scan_file(path, keep_up_to=len(data) - 1)
    assert isinstance(header_only, ScannedFile) and header_only.data is None
    assert header_only.sop_instance_uid == SOP
    # Encodings the fast reader leaves alone still scan, through pydicom.
    path.write_bytes(_encode(ExplicitVRBigEndian))
    big_endian = scan_file(path, keep_up_to=1 << 20)
    assert isinstance(big_endian, ScannedFile) and big_endian.series_instance_uid == SERIES
