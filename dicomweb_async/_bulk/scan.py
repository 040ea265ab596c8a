"""Find DICOM files and read just enough of each to know what it is.

Only the first bytes are read, in worker threads, and the header is walked by the fast
reader of ``_core.identity`` (pydicom for the encodings it leaves alone). Large files are
streamed from disk later; small ones are read whole here, so that each costs one trip to
a worker thread in all. Files that are not DICOM Part 10 files are reported with the
reason, never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .._core.identity import Header, read_header
from .._core.urls import check_uid

__all__ = ["HEAD_BYTES", "ScannedFile", "Unreadable", "iter_paths", "scan_file"]

#: Bytes read from a large file for its header; ordinary headers are a few kilobytes.
HEAD_BYTES = 64 * 1024

_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
]


@dataclass(frozen=True)
class ScannedFile:
    """A DICOM file ready to upload.

    Attributes
    ----------
    path : Path
    size : int
        File size in bytes when scanned.
    mtime_ns : int
        Modification time when scanned (used by the journal to notice changed files).
    study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid : str
    transfer_syntax : str
    data : bytes or None
        The whole file, when it was small enough to keep from the scan.
    """

    path: Path
    size: int
    mtime_ns: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Unreadable:
    """A file that cannot be uploaded as it is.

    Attributes
    ----------
    path : Path
    reason : str
        Why, in a few words (e.g. ``not a DICOM Part 10 file (no DICM prefix)``).
    corrupt : bool
        True when the file claims to be DICOM but its header cannot be read or lacks
        required UIDs (a failure); False when it is simply not DICOM (skipped).
    """

    path: Path
    reason: str
    corrupt: bool


def iter_paths(sources: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Yield files: each source file itself, and every file below each source folder.

    Folders are walked recursively in sorted order so runs are repeatable; hidden
    temporary names this package writes (``.*.partial``) are left out; symbolic links to
    folders are not followed (they could loop).
    """
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.startswith(".") and name.endswith(".partial"):
                        continue
                    yield Path(root) / name
        else:
            yield path


def scan_file(path: Path, keep_up_to: int = 0) -> ScannedFile | Unreadable:
    """Read a file's header (blocking: call it from a worker thread).

    Parameters
    ----------
    path : Path
    keep_up_to : int
        Files of at most this many bytes are read whole and their bytes kept in
        :attr:`ScannedFile.data`, so that sending them needs no second read.

    Returns
    -------
    ScannedFile or Unreadable
    """
    try:
        stat = path.stat()
        with path.open("rb") as f:
            whole = stat.st_size <= keep_up_to
            # One more byte than the size: a file that grew since stat() is not "whole".
            head = f.read(stat.st_size + 1 if whole else HEAD_BYTES)
    except OSError as exc:
        return Unreadable(path, f"cannot read: {exc.strerror or exc}", corrupt=True)
    if len(head) < 132 or head[128:132] != b"DICM":
        return Unreadable(path, "not a DICOM Part 10 file (no DICM prefix)", corrupt=False)
    header = read_header(head)
    if header is None:
        found = _read_with_pydicom(path)
        if isinstance(found, Unreadable):
            return found
        header = found
    for tag, value in (
        ("SOPClassUID", header.sop_class_uid),
        ("SOPInstanceUID", header.sop_instance_uid),
        ("StudyInstanceUID", header.study_instance_uid),
        ("SeriesInstanceUID", header.series_instance_uid),
    ):
        if not value:
            return Unreadable(path, f"no {tag} in the header (damaged or truncated?)", True)
        try:
            check_uid(value, tag)
        except ValueError as exc:
            return Unreadable(path, str(exc), corrupt=True)
    return ScannedFile(
        path=path,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax=header.transfer_syntax,
        data=head if whole and len(head) == stat.st_size else None,
    )


def _read_with_pydicom(path: Path) -> Header | Unreadable:
    """The header of a file the fast reader leaves alone (big endian, deflate, odd files)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except InvalidDicomError as exc:
        return Unreadable(path, f"not a DICOM file: {exc}", corrupt=False)
    except Exception as exc:  # pydicom raises many types for damaged headers
        return Unreadable(path, f"unreadable DICOM header: {exc}", corrupt=True)
    meta = getattr(ds, "file_meta", None)
    values = {tag: str(ds.get(tag, "") or "") for tag in _TAGS}
    if not values["SOPClassUID"] and meta is not None:
        values["SOPClassUID"] = str(meta.get("MediaStorageSOPClassUID", "") or "")
    return Header(
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
    )
