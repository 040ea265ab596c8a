"""Find DICOM files and read just enough of each to know what it is.

Only the header is read (up to the pixel data), in worker threads; the bytes that go to the
server are the file's own, streamed later. Files that are not DICOM Part 10 files are
reported with the reason, never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .._core.urls import check_uid

__all__ = ["ScannedFile", "Unreadable", "iter_paths", "scan_file"]

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
    """

    path: Path
    size: int
    mtime_ns: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str


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


def scan_file(path: Path) -> ScannedFile | Unreadable:
    """Read a file's header (blocking: call it from a worker thread).

    Returns
    -------
    ScannedFile or Unreadable
    """
    try:
        stat = path.stat()
    except OSError as exc:
        return Unreadable(path, f"cannot read: {exc.strerror or exc}", corrupt=True)
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with path.open("rb") as f:
            preamble = f.read(132)
        if len(preamble) < 132 or preamble[128:132] != b"DICM":
            return Unreadable(path, "not a DICOM Part 10 file (no DICM prefix)", corrupt=False)
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except InvalidDicomError as exc:
        return Unreadable(path, f"not a DICOM file: {exc}", corrupt=False)
    except Exception as exc:  # pydicom raises many types for damaged headers
        return Unreadable(path, f"unreadable DICOM header: {exc}", corrupt=True)
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    values = {tag: str(ds.get(tag, "") or "") for tag in _TAGS}
    if not values["SOPClassUID"] and meta is not None:
        values["SOPClassUID"] = str(meta.get("MediaStorageSOPClassUID", "") or "")
    for tag, value in values.items():
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
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        transfer_syntax=syntax,
    )
