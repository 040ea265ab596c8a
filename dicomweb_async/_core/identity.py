"""Read an instance's identity from the start of its Part 10 encoding (no I/O).

Bulk uploads need each file's UIDs and transfer syntax before sending it, and downloads
name each file after its study, series and SOP instance UIDs. Parsing the header with
pydicom costs about 0.3 ms per instance and loads pydicom (and numpy) into the process;
this reader walks the data elements until it has what it needs, in a few microseconds.

It reads every encoding whose data set is little endian: implicit VR, explicit VR, and the
compressed transfer syntaxes (JPEG, JPEG 2000, RLE, ...), whose data set is explicit VR
little endian with only the pixel data encapsulated. Sequences of undefined length are
walked item by item. Anything else (big endian, deflate, a header longer than the bytes
given, bytes that do not parse) returns None and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Header", "read_header", "read_uids"]

_IMPLICIT_LE = "1.2.840.10008.1.2"
# Data sets in these are not little endian as written: left to pydicom.
_NOT_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
# Explicit VR elements with these VRs have two reserved bytes and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_MEDIA_STORAGE_SOP_CLASS = 0x00020002
_TRANSFER_SYNTAX = 0x00020010
_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_STUDY = 0x0020000D
_SERIES = 0x0020000E
_WANTED = (_SOP_CLASS, _SOP_INSTANCE, _STUDY, _SERIES)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Sequences nest a few levels in real headers; deeper means the bytes are not a header.
_MAX_DEPTH = 16

_GROUP = struct.Struct("<H")
_TAG = struct.Struct("<HH")
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    """What a bulk upload needs to know of an instance before sending it.

    Attributes
    ----------
    study_instance_uid, series_instance_uid, sop_instance_uid : str
    sop_class_uid : str
        From the data set, or else from the file meta information; empty if in neither.
    transfer_syntax : str
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


class _Cut(Exception):
    """The bytes end, or stop making sense, before the header does."""


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, int, int, bytes]:
    """(tag, value start, value length, VR) of the data element at ``pos``."""
    if pos + 8 > len(data):
        raise _Cut
    if not explicit:
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        return (group << 16) | element, pos + 8, length, b""
    group, element, vr, length = _TAG_VR_SHORT.unpack_from(data, pos)
    if vr in _SHORT_VRS:
        return (group << 16) | element, pos + 8, length, vr
    if vr not in _LONG_VRS:
        # Not a VR: perhaps implicit VR in a file that claims explicit. pydicom copes.
        raise _Cut
    if pos + 12 > len(data):
        raise _Cut
    (length,) = _LONG_LENGTH.unpack_from(data, pos + 8)
    return (group << 16) | element, pos + 12, length, vr


def _skip_undefined(data: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Position after a sequence (or encapsulated value) of undefined length at ``pos``.

    ``pos`` is where the first item starts. Items of undefined length are walked
    element by element; a VR of UN of undefined length holds implicit VR content.
    """
    if depth > _MAX_DEPTH:
        raise _Cut
    while True:
        if pos + 8 > len(data):
            raise _Cut
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Cut
        if length != _UNDEFINED:
            pos += length
            continue
        while True:
            if pos + 8 > len(data):
                raise _Cut
            group, element = _TAG.unpack_from(data, pos)
            if (group << 16) | element == _ITEM_END:
                pos += 8
                break
            _, start, length, vr = _element(data, pos, explicit)
            if length == _UNDEFINED:
                pos = _skip_undefined(data, start, explicit and vr != b"UN", depth + 1)
            else:
                pos = start + length


def _read(head: bytes) -> Header | None:
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    syntax = None
    media_class = ""
    # The file meta group is always explicit VR little endian.
    while True:
        if pos + 2 > len(head):
            return None
        if _GROUP.unpack_from(head, pos)[0] != 0x0002:
            break
        tag, start, length, _ = _element(head, pos, explicit=True)
        if length == _UNDEFINED or start + length > len(head):
            return None
        if tag == _TRANSFER_SYNTAX:
            syntax = _text(head[start : start + length])
        elif tag == _MEDIA_STORAGE_SOP_CLASS:
            media_class = _text(head[start : start + length])
        pos = start + length
    if syntax is None or syntax in _NOT_LITTLE_ENDIAN:
        return None
    explicit = syntax != _IMPLICIT_LE
    found: dict[int, str] = {}
    # Elements come in tag order and the series UID is the last one wanted.
    while _SERIES not in found:
        tag, start, length, vr = _element(head, pos, explicit)
        if tag > _SERIES:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(head, start, explicit and vr != b"UN")
            continue
        if start + length > len(head):
            return None
        if tag in _WANTED:
            found[tag] = _text(head[start : start + length])
        pos = start + length
    if not (found.get(_STUDY) and found.get(_SERIES) and found.get(_SOP_INSTANCE)):
        return None
    return Header(
        study_instance_uid=found[_STUDY],
        series_instance_uid=found[_SERIES],
        sop_instance_uid=found[_SOP_INSTANCE],
        sop_class_uid=found.get(_SOP_CLASS) or media_class,
        transfer_syntax=syntax,
    )


def read_header(head: bytes) -> Header | None:
    """UIDs and transfer syntax from the first bytes of a Part 10 file.

    Parameters
    ----------
    head : bytes
        The start of the file; a few kilobytes are enough for ordinary headers.

    Returns
    -------
    Header or None
        None when the encoding is not one this reader handles, the UIDs lie beyond
        ``head``, or the bytes do not parse as a Part 10 header.
    """
    try:
        return _read(head)
    except _Cut:
        return None


def read_uids(head: bytes) -> tuple[str, str, str] | None:
    """Study, series and SOP instance UIDs from the first bytes of a Part 10 file.

    The same reading as :func:`read_header`, for callers that only name files.
    """
    header = read_header(head)
    if header is None:
        return None
    return header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
