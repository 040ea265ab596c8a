"""Read an instance's UIDs from the start of its Part 10 encoding (no I/O).

Downloads name each file after its study, series and SOP instance UIDs. Parsing the
header with pydicom costs a fraction of a millisecond per instance and loads pydicom (and
numpy) into the process; this reader walks the elements of the two little endian
transfer syntaxes that nearly every archive serves (explicit and implicit VR) until it
has the three UIDs. Anything else (big endian, deflate, an undefined length before the
UIDs) returns None and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

__all__ = ["read_uids"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
# Explicit VR elements with these VRs have two reserved bytes and a 4-byte length.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_TRANSFER_SYNTAX = 0x00020010
_SOP_INSTANCE = 0x00080018
_STUDY = 0x0020000D
_SERIES = 0x0020000E
_UNDEFINED = 0xFFFFFFFF


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def _elements(data: bytes, pos: int, explicit: bool) -> tuple[int, int, int] | None:
    """(tag, value start, value length) of the element at ``pos``, or None if cut off."""
    if pos + 8 > len(data):
        return None
    group, element = struct.unpack_from("<HH", data, pos)
    tag = (group << 16) | element
    if not explicit:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        return tag, pos + 8, length
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            return None
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return tag, pos + 12, length
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return tag, pos + 8, length


def read_uids(head: bytes) -> tuple[str, str, str] | None:
    """Study, series and SOP instance UIDs from the first bytes of a Part 10 file.

    Parameters
    ----------
    head : bytes
        The start of the file; a few kilobytes are enough for ordinary headers.

    Returns
    -------
    (str, str, str) or None
        None when the encoding is not one this reader handles, the UIDs lie beyond
        ``head``, or the bytes are not a Part 10 file.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    syntax = None
    # The file meta group is always explicit VR little endian.
    while True:
        found = _elements(head, pos, explicit=True)
        if found is None:
            return None
        tag, start, length = found
        if tag >> 16 != 0x0002:
            break
        if length == _UNDEFINED:
            return None
        if tag == _TRANSFER_SYNTAX:
            syntax = _text(head[start : start + length])
        pos = start + length
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    explicit = syntax == _EXPLICIT_LE
    wanted: dict[int, str] = {}
    while len(wanted) < 3:
        found = _elements(head, pos, explicit)
        if found is None:
            return None
        tag, start, length = found
        if tag > _SERIES:
            break
        if length == _UNDEFINED or start + length > len(head):
            return None
        if tag in (_SOP_INSTANCE, _STUDY, _SERIES):
            wanted[tag] = _text(head[start : start + length])
        pos = start + length
    if len(wanted) < 3:
        return None
    return wanted[_STUDY], wanted[_SERIES], wanted[_SOP_INSTANCE]
