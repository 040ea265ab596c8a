"""multipart/related request bodies for STOW-RS (no I/O).

A body is described by :class:`BodyPart` items, each either in memory or a file on disk
with a known size. The writer produces the framing bytes around them; the transport layer
streams the file contents between those frames, so the body's exact Content-Length is
known before a byte is sent and files are never loaded whole.
"""

from __future__ import annotations

import copy
import io
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from .media import DICOM

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "BodyPart",
    "MultipartWriter",
    "StoreItem",
    "body_part",
    "dataset_bytes",
]

#: What :meth:`AsyncDICOMwebClient.store_instances` accepts as one instance.
StoreItem: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | Dataset"


@dataclass(frozen=True)
class BodyPart:
    """One part of a request body.

    Attributes
    ----------
    size : int
        Body length in bytes.
    data : bytes or None
        The bytes, for in-memory parts.
    path : Path or None
        The file to stream, for parts on disk.
    content_type : str
        The part's Content-Type.
    """

    size: int
    data: bytes | None = None
    path: Path | None = None
    content_type: str = DICOM

    @property
    def label(self) -> str:
        """A short description for error messages."""
        return str(self.path) if self.path is not None else f"<{self.size} bytes in memory>"


def dataset_bytes(dataset: Dataset) -> bytes:
    """Encode a pydicom Dataset as a DICOM Part 10 file.

    A dataset without file meta information is written as explicit VR little endian with
    meta information derived from its SOP Class and Instance UIDs; the caller's dataset
    is not modified.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    buf = io.BytesIO()
    meta = getattr(dataset, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        # A shallow copy shares the elements but not file_meta, so the caller's dataset
        # keeps whatever meta it had.
        # pydicom 2 deep-copies a FileMetaDataset into a plain Dataset.
        new_meta = FileMetaDataset(copy.deepcopy(meta)) if meta is not None else FileMetaDataset()
        new_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = copy.copy(dataset)
        dataset.file_meta = new_meta
    if int(pydicom.__version__.split(".")[0]) < 3:
        _write_with_pydicom_2(buf, dataset)
    else:
        pydicom.dcmwrite(buf, dataset, enforce_file_format=True)
    return buf.getvalue()


def _write_with_pydicom_2(buf: io.BytesIO, dataset: Dataset) -> None:
    """What ``dcmwrite(buf, dataset, enforce_file_format=True)`` does in pydicom 3.

    pydicom 2 encodes by ``is_implicit_VR`` and ``is_little_endian`` rather than by the
    transfer syntax (a file read as implicit VR stays implicit whatever the meta says), and
    completes the file meta in place. So the encoding is set from a standard transfer syntax
    and the meta swapped for a copy while writing, then both are put back. The dataset is
    not copied: pydicom 2 warns when copying one read from a file-like object.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    saved = dataset.is_implicit_VR, dataset.is_little_endian, dataset.file_meta
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        dataset.file_meta = FileMetaDataset(copy.deepcopy(dataset.file_meta))
        if not syntax.is_private and syntax.is_transfer_syntax:
            dataset.is_implicit_VR = syntax.is_implicit_VR
            dataset.is_little_endian = syntax.is_little_endian
        pydicom.dcmwrite(buf, dataset, write_like_original=False)
    finally:
        dataset.is_implicit_VR, dataset.is_little_endian, dataset.file_meta = saved


def body_part(item: StoreItem) -> BodyPart:
    """Describe one STOW-RS input as a :class:`BodyPart`.

    Parameters
    ----------
    item : path, bytes or Dataset
        A file on disk (streamed as it is), encoded bytes, or a Dataset (encoded now).

    Returns
    -------
    BodyPart

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    TypeError
        For any other kind of input.
    """
    # pydicom is imported only when needed (it brings numpy): if it is not loaded yet,
    # the item cannot be one of its Datasets.
    pydicom = sys.modules.get("pydicom")
    if pydicom is not None and isinstance(item, pydicom.dataset.Dataset):
        data = dataset_bytes(item)
        return BodyPart(size=len(data), data=data)
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        return BodyPart(size=len(data), data=data)
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        return BodyPart(size=path.stat().st_size, path=path)
    raise TypeError(f"cannot store {type(item).__name__}: expected a path, bytes or a Dataset")


class MultipartWriter:
    """Framing for a ``multipart/related`` body.

    Parameters
    ----------
    boundary : str, optional
        A boundary to use; by default a random one that cannot occur by chance in data.
    related_type : str
        The ``type`` parameter of the body (the root media type of its parts).
    """

    def __init__(self, boundary: str | None = None, related_type: str = DICOM):
        self.boundary = boundary or f"dicomweb-async-{secrets.token_hex(16)}"
        self.related_type = related_type
        self._delimiter = f"--{self.boundary}\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        """The request's Content-Type header value."""
        return f'multipart/related; type="{self.related_type}"; boundary={self.boundary}'

    def head(self, part: BodyPart) -> bytes:
        """Delimiter and headers that precede ``part``'s body."""
        return self._delimiter + (
            f"Content-Type: {part.content_type}\r\nContent-Length: {part.size}\r\n\r\n"
        ).encode("ascii")

    @staticmethod
    def part_end() -> bytes:
        """Bytes that follow each part's body (the CRLF before the next delimiter)."""
        return b"\r\n"

    def tail(self) -> bytes:
        """The closing delimiter."""
        return f"--{self.boundary}--\r\n".encode("ascii")

    def content_length(self, parts: Sequence[BodyPart]) -> int:
        """Exact length in bytes of the body made of ``parts``."""
        framing = sum(len(self.head(p)) + 2 for p in parts)
        return framing + sum(p.size for p in parts) + len(self.tail())
