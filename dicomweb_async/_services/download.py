"""Write streamed instances to disk as they arrive.

Each part goes to a temporary file in the target directory and is renamed to
``<study>/<series>/<sop>.dcm`` only once it is complete and its UIDs were read back from
its own header. Names come from UIDs checked by :func:`check_uid`, never from anything
else the server sent, so a hostile answer cannot write outside the directory.

Receiving and writing overlap: the response is parsed on the event loop while a worker
thread writes what was already received. The two are joined by a bounded stream, so a
slow disk slows the download instead of growing memory. The thread takes whatever has
queued up in one hand-off and writes it with one ``writev`` per file, which keeps
thread hand-offs far fewer than network chunks.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.datasets import read_dataset
from .._core.exceptions import ProtocolError
from .._core.groups import single_error
from .._core.identity import read_uids
from .._core.urls import check_uid
from .._transport.parts import PartStream

__all__ = ["ByteBudget", "DownloadedInstance", "save_parts"]

# Chunks in flight between the network and the disk (each up to about 1 MiB).
_QUEUE_DEPTH = 16
# Largest amount handed to the writer thread at once.
_BATCH_BYTES = 8 * 1024 * 1024
_UID_NAMES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# The start of each instance kept in memory to read its UIDs from (ordinary headers are a
# few kilobytes; larger ones are read back from the file).
_HEAD_BYTES = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class _Start:
    index: int
    transfer_syntax: str | None


@dataclass(frozen=True, slots=True)
class _End:
    index: int


_Item = _Start | bytes | _End


def _first_bytes(chunks: list[bytes], limit: int) -> bytes:
    """The first ``limit`` bytes of ``chunks``: the first chunk itself when it holds them."""
    if len(chunks) == 1 or (chunks and len(chunks[0]) >= limit):
        return chunks[0]
    pieces: list[bytes | memoryview] = []
    for chunk in chunks:
        if limit <= 0:
            break
        pieces.append(chunk if len(chunk) <= limit else memoryview(chunk)[:limit])
        limit -= len(chunk)
    return b"".join(pieces)


class _Writer:
    """The disk side; every method runs in a worker thread, one call at a time."""

    def __init__(
        self,
        directory: Path,
        stream: PartStream,
        study: str | None,
        series: str | None,
    ):
        self.directory = directory
        self.stream = stream
        self.expected = (study, series)
        self.saved: list[DownloadedInstance] = []
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._start: _Start | None = None
        self._size = 0
        # The first chunks of the current part, kept (not copied) until they hold
        # _HEAD_BYTES, to read its UIDs from.
        self._head: list[bytes] = []
        self._head_size = 0
        self._made_dirs: set[Path] = set()

    def _error(self, message: str) -> ProtocolError:
        return ProtocolError(message, method=self.stream.method, url=self.stream.url)

    def _read_uids_with_pydicom(self, path: Path, end: _End, size: int) -> tuple[str, str, str]:
        # For the encodings that read_uids leaves to pydicom (big endian, deflated, ...).
        ds = read_dataset(
            path,
            f"part {end.index} ({size} bytes)",
            stop_before_pixels=True,
            specific_tags=_UID_NAMES,
            method=self.stream.method,
            url=self.stream.url,
        )
        study, series, sop = (str(ds.get(name, "")) for name in _UID_NAMES)
        return study, series, sop

    def apply(self, batch: list[_Item]) -> None:
        pending: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                pending.append(item)
                continue
            self._flush(pending)
            pending = []
            if isinstance(item, _Start):
                self._open(item)
            else:
                self._close(item)
        self._flush(pending)

    def _open(self, start: _Start) -> None:
        self._tmp = self.directory / f".{secrets.token_hex(8)}.partial"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._start = start
        self._size = 0
        self._head = []
        self._head_size = 0

    def _flush(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        assert self._fd is not None
        for chunk in chunks:
            if self._head_size >= _HEAD_BYTES:
                break
            self._head.append(chunk)
            self._head_size += len(chunk)
        total = sum(len(c) for c in chunks)
        written = os.writev(self._fd, chunks)
        if written != total:  # short writes are rare; finish them one buffer at a time
            view = memoryview(b"".join(chunks))[written:]
            while view:
                view = view[os.write(self._fd, view) :]
        self._size += total

    def _close(self, end: _End) -> None:
        assert self._fd is not None and self._tmp is not None and self._start is not None
        os.close(self._fd)
        self._fd = None
        tmp, start, size = self._tmp, self._start, self._size
        head = _first_bytes(self._head, _HEAD_BYTES)
        self._head = []
        uids = read_uids(head) or self._read_uids_with_pydicom(tmp, end, size)
        try:
            for uid, name in zip(uids, _UID_NAMES, strict=True):
                check_uid(uid, name)
        except ValueError as exc:
            raise self._error(f"part {end.index}: {exc}") from None
        for want, got, what in zip(self.expected, uids[:2], ("study", "series"), strict=True):
            if want is not None and want != got:
                raise self._error(f"part {end.index} belongs to {what} {got}, not {want}")
        study, series, sop = uids
        target_dir = self.directory / study / series
        if target_dir not in self._made_dirs:
            target_dir.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(target_dir)
        target = target_dir / f"{sop}.dcm"
        os.replace(tmp, target)
        self._tmp = None
        self.saved.append(
            DownloadedInstance(target, study, series, sop, size, start.transfer_syntax)
        )

    def discard(self) -> None:
        """Remove the partial file of an interrupted part."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class ByteBudget:
    """Bytes received but not yet written, bounded across any number of downloads.

    Each download's queue is bounded on its own; when many run at once (a bulk
    download at high concurrency), their queues together are bounded by one shared
    budget, so memory does not grow with the number of downloads.

    Parameters
    ----------
    limit : int
        Bytes that may wait for the disk at once (one chunk is always let through).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed: anyio.Condition | None = None

    def _condition(self) -> anyio.Condition:
        if self._changed is None:
            self._changed = anyio.Condition()
        return self._changed

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` fit in the budget, then take them."""
        condition = self._condition()
        async with condition:
            while self.used and self.used + nbytes > self.limit:
                await condition.wait()
            self.used += nbytes

    async def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` once they are on disk."""
        condition = self._condition()
        async with condition:
            self.used -= nbytes
            condition.notify_all()


async def _drain(
    receive: MemoryObjectReceiveStream[_Item],
    writer: _Writer,
    on_saved: Callable[[DownloadedInstance], None] | None,
    budget: ByteBudget | None,
) -> None:
    reported = 0
    async with receive:
        async for first in receive:
            batch = [first]
            size = len(first) if isinstance(first, bytes) else 0
            while size < _BATCH_BYTES:
                try:
                    item = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                batch.append(item)
                if isinstance(item, bytes):
                    size += len(item)
            await anyio.to_thread.run_sync(writer.apply, batch)
            if budget is not None:
                await budget.release(size)
            if on_saved is not None:
                for saved in writer.saved[reported:]:
                    on_saved(saved)
                reported = len(writer.saved)


async def save_parts(
    parts: PartStream,
    directory: Path,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    on_saved: Callable[[DownloadedInstance], None] | None = None,
    budget: ByteBudget | None = None,
) -> list[DownloadedInstance]:
    """Stream every part of a response into ``directory``, renamed after its UIDs.

    Parameters
    ----------
    parts : PartStream
        The response.
    directory : Path
        Root of the ``<study>/<series>/<sop>.dcm`` tree.
    study_instance_uid, series_instance_uid : str, optional
        When given, every instance must belong to them.
    on_saved : callable, optional
        Called on the event loop with each instance once it is on disk.
    budget : ByteBudget, optional
        A bound on bytes waiting for the disk, shared with other downloads.

    Returns
    -------
    list of DownloadedInstance
        In the order the server sent them.

    Raises
    ------
    ProtocolError
        If a part is not DICOM, lacks UIDs, or belongs to another study or series.
    MultipartError, TransportError
        If the response breaks off. Instances completed before stay on disk; no partial
        file is left behind.
    """
    writer = _Writer(directory, parts, study_instance_uid, series_instance_uid)
    send, receive = anyio.create_memory_object_stream[_Item](_QUEUE_DEPTH)
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, receive, writer, on_saved, budget)
            async with send:
                try:
                    async for part in parts:
                        await send.send(_Start(part.index, part.transfer_syntax))
                        async for chunk in part.aiter_bytes():
                            if budget is not None:
                                await budget.acquire(len(chunk))
                            await send.send(chunk)
                        await send.send(_End(part.index))
                except Exception as exc:
                    # Let the writer finish the parts that arrived whole before failing.
                    failure = exc
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.discard)
        inner = single_error(exc)
        if inner is not exc:
            raise inner from None
        raise
    if failure is not None:
        await anyio.to_thread.run_sync(writer.discard)
        raise failure
    return writer.saved
