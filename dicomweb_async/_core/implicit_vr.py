"""Implicit VR little endian files, which the Azure DICOM service refuses.

The service accepts only explicit-VR transfer syntaxes and answers FailureReason 43264
for the rest. Finding that out before upload saves the round trip and gives a clearer
message. Converting such files is bulk upload's business (``_bulk/implicit_vr.py``).
"""

from __future__ import annotations

from pathlib import Path

from .media import IMPLICIT_VR_LITTLE_ENDIAN

__all__ = ["IMPLICIT_VR_MESSAGE", "file_transfer_syntax", "is_implicit_vr"]

IMPLICIT_VR_MESSAGE = (
    "implicit VR little endian: the server accepts explicit VR transfer syntaxes only "
    "(it would answer FailureReason 43264); convert the file first"
)


def file_transfer_syntax(path: Path) -> str | None:
    """The transfer syntax in a file's meta information (blocking; run in a thread)."""
    from pydicom.filereader import read_file_meta_info

    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", "")) or None
    except Exception:  # not DICOM: the server will say what it thinks of it
        return None


def is_implicit_vr(transfer_syntax: str | None) -> bool:
    """Whether ``transfer_syntax`` is implicit VR little endian."""
    return transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
