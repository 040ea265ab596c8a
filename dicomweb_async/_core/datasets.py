"""DICOM JSON values, and pydicom Datasets built from DICOM JSON or from DICOM files.

pydicom raises many exception types for malformed input (``ValueError``, ``KeyError``,
``struct.error``, ``InvalidDicomError`` and more). They become :class:`ProtocolError` here,
and only here, with what was being read named in the message. pydicom (and numpy with it)
is imported on first use, so paths that never build a Dataset never load it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .exceptions import ProtocolError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["dataset_from_json", "first_value", "read_dataset"]


def first_value(item: Mapping[str, Any], tag: str) -> str | None:
    """The first value of attribute ``tag`` (8 hex digits) of a DICOM JSON dataset, as text.

    None when the attribute is missing, has no values or is not a DICOM JSON element.
    """
    element = item.get(tag)
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return str(values[0])
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


def read_dataset(
    source: bytes | os.PathLike[str],
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
    source : bytes or path
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
