"""Implicit VR little endian files, which the Azure DICOM service refuses.

The service accepts only explicit-VR transfer syntaxes and answers FailureReason 43264
for the rest. Finding that out before upload saves the round trip and gives a clearer
message; converting re-encodes the file (it is read whole, unlike other uploads).
"""

from __future__ import annotations

from pathlib import Path

from .media import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from .multipart_writer import dataset_bytes

__all__ = ["IMPLICIT_VR_MESSAGE", "file_transfer_syntax", "is_implicit_vr", "to_explicit_vr"]

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


def to_explicit_vr(path: Path) -> bytes:
    """Re-encode an implicit VR little endian file as explicit VR little endian.

    Blocking and holds the whole file in memory; run it in a worker thread.
    """
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    return dataset_bytes(ds)
