"""DICOM JSON values, and pydicom Datasets built from DICOM JSON or from DICOM files.

pydicom raises many exception types for malformed input (``ValueError``, ``KeyError``,
``struct.error``, ``InvalidDicomError`` and more). They become :class:`ProtocolError` here,
and only here, with what was being read named in the message. pydicom (and numpy with it)
is imported on first use, so paths that never build a Dataset never load it.
"""

from __future__ import annotations

import io
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .exceptions import ProtocolError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["ChunksFile", "dataset_from_json", "dicom_json", "first_value", "read_dataset"]


def first_value(item: Mapping[str, Any], tag: str) -> str | None:
    """The first value of attribute ``tag`` (8 hex digits) of a DICOM JSON dataset, as text.

    None when the attribute is missing, has no values or is not a DICOM JSON element. A
    person name gives its alphabetic form (``Doe^Jane``).
    """
    element = item.get(tag)
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list) and values:
            value = values[0]
            if isinstance(value, Mapping):
                return str(value.get("Alphabetic", "")) or None
            return str(value)
    return None


def dataset_from_json(
    obj: Mapping[str, Any], what: str, *, method: str | None = None, url: str | None = None
) -> Dataset:
    """Build a Dataset from DICOM JSON.

    Parameters
    ----------
    obj : mapping
        A DICOM JSON dataset.
    what : str
        What ``obj`` is, for the error message (e.g. ``"STOW-RS response"``).
    method, url : str, optional
        The request, for the :class:`ProtocolError`.

    Raises
    ------
    ProtocolError
        If ``obj`` is not valid DICOM JSON.
    """
    from pydicom.dataset import Dataset

    try:
        return Dataset.from_json(dict(obj))
    except Exception as exc:  # pydicom raises many types for bad DICOM JSON
        raise ProtocolError(f"{what} is not DICOM JSON: {exc}", method=method, url=url) from None


class ChunksFile(io.RawIOBase):
    """A read-only binary file over a sequence of byte chunks, without joining them first.

    A file that arrived in network-sized pieces can be decoded from those pieces: each
    ``read`` copies only the bytes it returns (a large value, such as Pixel Data, is copied
    once, straight from the chunks), where joining the chunks and reading from a
    ``BytesIO`` would copy every byte twice.

    Parameters
    ----------
    chunks : sequence of bytes-like
        The file's content, in order.
    """

    def __init__(self, chunks: Sequence[bytes]):
        super().__init__()
        self._chunks = [chunk for chunk in chunks if chunk]
        self._starts: list[int] = []
        size = 0
        for chunk in self._chunks:
            self._starts.append(size)
            size += len(chunk)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Let go of the chunks (a Dataset read from this file keeps a reference to it)."""
        self._chunks = []
        self._starts = []
        self._size = self._pos = 0
        super().close()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        pos = self._pos
        end = self._size if size is None or size < 0 else min(self._size, pos + size)
        if end <= pos:
            return b""
        self._pos = end
        index = bisect_right(self._starts, pos) - 1
        chunk = self._chunks[index]
        start = pos - self._starts[index]
        if start + (end - pos) <= len(chunk):  # within one chunk
            if start == 0 and end - pos == len(chunk) and type(chunk) is bytes:
                return chunk
            return bytes(chunk[start : start + end - pos])
        pieces: list[bytes | memoryview] = [memoryview(chunk)[start:]]
        pos += len(chunk) - start
        while pos < end:
            index += 1
            chunk = self._chunks[index]
            if pos + len(chunk) <= end:
                pieces.append(chunk)
            else:
                pieces.append(memoryview(chunk)[: end - pos])
            pos += len(chunk)
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer)[: len(data)] = data
        return len(data)


def read_dataset(
    source: bytes | ChunksFile | os.PathLike[str],
    what: str,
    *,
    stop_before_pixels: bool = False,
    specific_tags: Iterable[str] | None = None,
    method: str | None = None,
    url: str | None = None,
) -> Dataset:
    """Decode a DICOM file, from bytes or a path (blocking: call it in a worker thread).

    Parameters
    ----------
    source : bytes, ChunksFile or path
        The file's content, or where it is.
    what : str
        What ``source`` is, for the error message (e.g. ``"part 3 (1024 bytes)"``).
    stop_before_pixels, specific_tags
        As in ``pydicom.dcmread``.
    method, url : str, optional
        The request, for the :class:`ProtocolError`.

    Raises
    ------
    ProtocolError
        If ``source`` cannot be decoded as a DICOM file.
    """
    import pydicom

    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    tags = list(specific_tags) if specific_tags is not None else None
    try:
        return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, specific_tags=tags)
    except Exception as exc:  # pydicom raises many types for bad input
        raise ProtocolError(f"{what} is not a DICOM file: {exc}", method=method, url=url) from None
    finally:
        if isinstance(fp, ChunksFile):
            # The values were copied out; the Dataset need not keep the chunks alive.
            fp.close()


_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")


def dicom_json(value: Any, what: str) -> dict[str, Any]:
    """A DICOM JSON dataset from a pydicom Dataset, a DICOM JSON mapping, or a one-item list.

    Raises
    ------
    TypeError
        If ``value`` is none of those.
    ValueError
        If a key is not a tag of 8 hex digits (a keyword such as ``"PatientName"``), or
        a value is not a DICOM JSON attribute (a mapping with ``vr``).
    """
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != 1:
            raise ValueError(f"{what}: one dataset, not {len(value)}")
        value = value[0]
    if isinstance(value, Mapping):
        data = dict(value)
    else:
        from pydicom.dataset import Dataset

        if not isinstance(value, Dataset):
            raise TypeError(
                f"{what} must be a pydicom Dataset or a DICOM JSON mapping, not "
                f"{type(value).__name__}"
            )
        data = value.to_json_dict()
    for key, attribute in data.items():
        if not isinstance(key, str) or not _TAG_RE.fullmatch(key):
            raise ValueError(f"{what}: key {key!r} is not a DICOM JSON tag (8 hex digits)")
        if not isinstance(attribute, Mapping) or "vr" not in attribute:
            raise ValueError(f"{what}[{key!r}] is not a DICOM JSON attribute with a vr")
    return data
