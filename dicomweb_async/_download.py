"""Write streamed instances to disk as they arrive.

Each part goes to a temporary file in the target directory and is renamed to
``<study>/<series>/<sop>.dcm`` only once it is complete and its UIDs were read back from
its own header. Names come from UIDs checked by :func:`check_uid`, never from anything
else the server sent, so a hostile answer cannot write outside the directory.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import anyio
import pydicom

from ._exceptions import ProtocolError
from ._parts import Part, PartStream
from ._urls import check_uid

__all__ = ["DownloadedInstance", "save_part"]

# Writes are grouped into pieces of this size so that worker-thread hand-offs stay few
# when the network delivers small chunks.
_WRITE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class DownloadedInstance:
    """An instance written to disk.

    Attributes
    ----------
    path : Path
        ``<directory>/<study>/<series>/<sop>.dcm``.
    study_instance_uid, series_instance_uid, sop_instance_uid : str
    size : int
        File size in bytes.
    transfer_syntax : str or None
        The transfer syntax the server stated for the part, if any.
    """

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    size: int
    transfer_syntax: str | None


def _read_uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(
        path,
        stop_before_pixels=True,
        specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
    )
    return (
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("SeriesInstanceUID", "")),
        str(ds.get("SOPInstanceUID", "")),
    )


def _finish(tmp: Path, directory: Path, uids: tuple[str, str, str]) -> Path:
    study, series, sop = uids
    target_dir = directory / study / series
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{sop}.dcm"
    os.replace(tmp, target)
    return target


async def _write_part(part: Part, tmp: Path) -> int:
    pending = bytearray()
    written = 0
    async with await anyio.open_file(tmp, "wb") as f:
        async for chunk in part.aiter_bytes():
            if not pending and len(chunk) >= _WRITE_SIZE:
                await f.write(chunk)
                written += len(chunk)
                continue
            pending += chunk
            if len(pending) >= _WRITE_SIZE:
                await f.write(pending)
                written += len(pending)
                pending = bytearray()
        if pending:
            await f.write(pending)
            written += len(pending)
    return written


async def save_part(
    part: Part,
    stream: PartStream,
    directory: Path,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> DownloadedInstance:
    """Stream one part into ``directory`` and rename it after its UIDs.

    Parameters
    ----------
    part : Part
        The part to save; read to its end.
    stream : PartStream
        The response it belongs to (named in errors).
    directory : Path
        Root of the ``<study>/<series>/<sop>.dcm`` tree.
    study_instance_uid, series_instance_uid : str, optional
        When given, the instance must belong to them.

    Raises
    ------
    ProtocolError
        If the part is not DICOM, lacks UIDs, or belongs to another study or series.
    MultipartError, TransportError
        If the response breaks off; no partial file is left behind.
    """
    tmp = directory / f".{secrets.token_hex(8)}.partial"
    try:
        size = await _write_part(part, tmp)
        try:
            uids = await anyio.to_thread.run_sync(_read_uids, tmp)
        except Exception as exc:  # pydicom raises many types for bad input
            raise ProtocolError(
                f"part {part.index} ({size} bytes) is not a DICOM file: {exc}",
                method=stream.method,
                url=stream.url,
            ) from None
        try:
            for uid, what in zip(
                uids, ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), strict=True
            ):
                check_uid(uid, what)
        except ValueError as exc:
            raise ProtocolError(
                f"part {part.index}: {exc}", method=stream.method, url=stream.url
            ) from None
        expected = (study_instance_uid, series_instance_uid)
        for want, got, what in zip(expected, uids[:2], ("study", "series"), strict=True):
            if want is not None and want != got:
                raise ProtocolError(
                    f"part {part.index} belongs to {what} {got}, not the requested {want}",
                    method=stream.method,
                    url=stream.url,
                )
        path = await anyio.to_thread.run_sync(_finish, tmp, directory, uids)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
        raise
    return DownloadedInstance(path, uids[0], uids[1], uids[2], size, part.transfer_syntax)
