"""DICOM helpers of the Azure DICOM emulator: parsing, validation, metadata and updates.

pydicom (and with it numpy) is imported inside the functions that need it, so importing
:mod:`dicomweb_async.testing` stays light. Everything here is synchronous; the request
handlers call the heavier functions in worker threads.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._core.multipart_writer import dataset_bytes

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "ALREADY_STORED",
    "BINARY_VRS",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "PROCESSING_FAILURE",
    "STUDY_MISMATCH",
    "VALIDATION_FAILED",
    "VALIDATION_WARNING",
    "FrameLayout",
    "InstanceRejected",
    "ParsedInstance",
    "apply_changes",
    "attribute_tag",
    "check_change_dataset",
    "dictionary_vr",
    "parse_instance",
    "tag_key",
    "valid_uid",
]

JSONDict = dict[str, Any]

#: Value representations that metadata responses leave out.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

# FailureReason (0008,1197) and WarningReason (0008,1196) values the service uses.
PROCESSING_FAILURE = 272
VALIDATION_FAILED = 43264
STUDY_MISMATCH = 43265
ALREADY_STORED = 45070
VALIDATION_WARNING = 1

# Frames can be cut out of the stored bytes only when the pixel data is native (not
# encapsulated) and the dataset is not deflated (offsets would refer to inflated bytes).
_NATIVE_SYNTAXES = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, _EXPLICIT_VR_BIG_ENDIAN})
_UID_RE = re.compile(r"[0-9A-Za-z.\-]{1,64}")
_DATE_RE = re.compile(r"[0-9]{8}")
_HEX_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
# Values above this size are left on disk (or in the buffer) until used: pixel data is
# never loaded just to index an instance.
_DEFER_SIZE = 64 * 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010

_REQUIRED_UIDS = (
    (0x0020000D, "StudyInstanceUID"),
    (0x0020000E, "SeriesInstanceUID"),
    (0x00080018, "SOPInstanceUID"),
    (0x00080016, "SOPClassUID"),
)
_PATIENT_ID = 0x00100020
# Searchable dates: v2 stores an instance whose dates do not validate with a warning, v1
# refuses it.
_SEARCHABLE_DATES = ("00080020", "00100030", "00400244")
# Attributes a bulk update may not change: they identify the instance or its encoding.
_UNCHANGEABLE = frozenset(
    {0x0020000D, 0x0020000E, 0x00080018, 0x00080016, 0x00020010, _PIXEL_DATA}
)


def valid_uid(value: object) -> bool:
    """Whether ``value`` is a UID the service accepts (1-64 of ``[0-9A-Za-z.-]``)."""
    return isinstance(value, str) and _UID_RE.fullmatch(value) is not None


def tag_key(tag: int) -> str:
    """The DICOM JSON key of ``tag`` (8 upper-case hex digits)."""
    return f"{tag:08X}"


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04x},{tag & 0xFFFF:04x})"


def attribute_tag(name: str) -> int | None:
    """The tag named by a keyword (``PatientName``) or 8 hex digits, or None."""
    if _HEX_TAG_RE.fullmatch(name):
        return int(name, 16)
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(name)
    return int(tag) if tag is not None else None


def dictionary_vr(tag: int) -> str | None:
    """The VR the DICOM dictionary gives ``tag``, or None when the tag is not in it."""
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@dataclass(frozen=True)
class FrameLayout:
    """Where the native frames of an instance lie in its stored bytes."""

    offset: int
    frame_size: int
    count: int

    def start(self, number: int) -> int:
        """Byte offset of 1-based frame ``number``."""
        return self.offset + (number - 1) * self.frame_size


@dataclass(frozen=True)
class ParsedInstance:
    """What the emulator indexes about a stored instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    metadata: JSONDict
    frames: FrameLayout | None
    has_pixel_data: bool
    warnings: tuple[str, ...] = ()


class InstanceRejected(Exception):
    """A STOW-RS part that is not stored, with its FailureReason."""

    def __init__(
        self,
        reason: int,
        comments: list[str],
        sop_class_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> None:
        super().__init__(f"FailureReason {reason}: {'; '.join(comments)}")
        self.reason = reason
        self.comments = comments
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


def _read(source: bytes | Path, *, defer: bool) -> Dataset:
    import pydicom

    stream: str | io.BytesIO = str(source) if isinstance(source, Path) else io.BytesIO(source)
    return pydicom.dcmread(stream, defer_size=_DEFER_SIZE if defer else None)


def _string(ds: Dataset, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    return value if isinstance(value, str) else None


def _filtered(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without binary attributes, at every nesting level."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out = Dataset()
    # The items view, not iteration, which would read deferred values such as pixel data.
    for tag, stored in list(ds.items()):
        vr = getattr(stored, "VR", None)
        if vr in BINARY_VRS:
            continue
        element = ds[tag]
        if element.VR in BINARY_VRS:
            continue
        if element.VR == "SQ":
            element.value = Sequence([_filtered(item) for item in element.value])
        out.add(element)
    return out


def _frame_layout(ds: Dataset, syntax: str) -> FrameLayout | None:
    if _PIXEL_DATA not in ds or syntax not in _NATIVE_SYNTAXES:
        return None
    # pydicom 3's get_item(tag, keep_deferred=True) would do, but pydicom 2's get_item
    # reads a deferred value; the items view holds the element as read in both.
    raw = next((element for tag, element in ds.items() if tag == _PIXEL_DATA), None)
    offset = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if not isinstance(offset, int) or not isinstance(length, int):
        return None
    if length == _UNDEFINED_LENGTH:
        return None
    try:
        rows = int(ds.get("Rows", 0))
        columns = int(ds.get("Columns", 0))
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.get("BitsAllocated", 0))
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return None
    frame_bits = rows * columns * samples * bits
    if frame_bits <= 0 or count <= 0:
        return None
    if frame_bits % 8 and count > 1:
        return None  # packed 1-bit frames do not start on byte boundaries
    frame_size = (frame_bits + 7) // 8
    if frame_size * count > length:
        return None
    return FrameLayout(offset, frame_size, count)


def _date_warnings(metadata: JSONDict) -> list[str]:
    found = []
    for key in _SEARCHABLE_DATES:
        element = metadata.get(key)
        if not isinstance(element, dict):
            continue
        for value in element.get("Value", []):
            if isinstance(value, str) and value and not _DATE_RE.fullmatch(value.strip()):
                found.append(
                    f'DICOM100: {_tag_text(int(key, 16))} - Content "{value}" does not '
                    "validate VR DA: one of the date values does not match the pattern "
                    "YYYYMMDD"
                )
    return found


def parse_instance(source: bytes | Path, *, warnings_fail: bool) -> ParsedInstance:
    """Read, validate and index one instance.

    Parameters
    ----------
    source : bytes or Path
        The instance as it was received.
    warnings_fail : bool
        Refuse instances whose searchable attributes do not validate (API v1) instead of
        storing them with a warning (v2).

    Returns
    -------
    ParsedInstance

    Raises
    ------
    InstanceRejected
        With FailureReason 272 when the part is not a readable DICOM file, 43264 when it
        fails validation.
    """
    try:
        ds = _read(source, defer=True)
    except Exception as exc:  # pydicom raises many types for input that is not DICOM
        raise InstanceRejected(
            PROCESSING_FAILURE, [f"the part is not a DICOM Part 10 file: {exc}"]
        ) from None
    try:
        sop_class = _string(ds, 0x00080016)
        sop = _string(ds, 0x00080018)
        syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
        problems: list[str] = []
        if not syntax:
            problems.append("DICOM100: (0002,0010) - The transfer syntax is missing.")
        elif syntax == IMPLICIT_VR_LITTLE_ENDIAN:
            problems.append(
                f"DICOM100: (0002,0010) - The transfer syntax {syntax} (implicit VR) is not "
                "supported: only explicit VR transfer syntaxes are accepted."
            )
        uids: dict[str, str] = {}
        for tag, keyword in _REQUIRED_UIDS:
            value = _string(ds, tag)
            if not value:
                problems.append(f"DICOM100: {_tag_text(tag)} - The required tag is missing.")
            elif not valid_uid(value):
                problems.append(
                    f'DICOM100: {_tag_text(tag)} - Content "{value}" does not validate VR UI: '
                    "1-64 characters of letters, digits, '.' and '-' are allowed."
                )
            else:
                uids[keyword] = value
        if _PATIENT_ID not in ds:
            problems.append(f"DICOM100: {_tag_text(_PATIENT_ID)} - The required tag is missing.")
        if problems:
            raise InstanceRejected(VALIDATION_FAILED, problems, sop_class, sop)
        metadata = _filtered(ds).to_json_dict()
        warnings = _date_warnings(metadata)
        if warnings and warnings_fail:
            raise InstanceRejected(VALIDATION_FAILED, warnings, sop_class, sop)
        return ParsedInstance(
            study_uid=uids["StudyInstanceUID"],
            series_uid=uids["SeriesInstanceUID"],
            sop_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            transfer_syntax=syntax,
            metadata=metadata,
            frames=_frame_layout(ds, syntax),
            has_pixel_data=_PIXEL_DATA in ds,
            warnings=tuple(warnings),
        )
    except InstanceRejected:
        raise
    except Exception as exc:  # a malformed element deep inside the dataset
        raise InstanceRejected(
            PROCESSING_FAILURE, [f"the dataset could not be read: {exc}"]
        ) from None


def check_change_dataset(change: object) -> str | None:
    """Why a bulk update's ``changeDataset`` is refused, or None when it is usable."""
    from pydicom.dataset import Dataset

    if not isinstance(change, dict) or not change:
        return "changeDataset must be a non-empty DICOM JSON object"
    for key in change:
        if not isinstance(key, str) or not _HEX_TAG_RE.fullmatch(key):
            return f"changeDataset key {key!r} is not an 8-digit hexadecimal tag"
        tag = int(key, 16)
        if tag in _UNCHANGEABLE or tag >> 16 == 0x0002:
            return f"attribute {_tag_text(tag)} cannot be changed by a bulk update"
    try:
        changes = Dataset.from_json(change)
        for element in changes:
            if element.VR in BINARY_VRS or element.VR == "SQ":
                return (
                    f"attribute {_tag_text(int(element.tag))} of VR {element.VR} cannot be changed"
                )
    except Exception as exc:  # pydicom raises several types for bad DICOM JSON
        return f"changeDataset is not valid DICOM JSON: {exc}"
    return None


def apply_changes(source: bytes | Path, change: JSONDict) -> bytes:
    """The instance in ``source`` with the attributes of ``change`` replaced or added.

    The file keeps its transfer syntax and pixel data; only the changed elements differ.
    """
    from pydicom.dataset import Dataset

    ds = _read(source, defer=False)
    for element in Dataset.from_json(change):
        ds[element.tag] = element
    return dataset_bytes(ds)
