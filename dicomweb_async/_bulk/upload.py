"""Bulk upload: folders (or streams) of files to STOW-RS, many requests at once.

Every input is accounted for exactly once, as a :class:`FileOutcome`: stored, already on
the server, failed (with the server's reason or the error), or skipped (not DICOM). The
work flows through bounded streams: a scanner reads headers in worker threads and forms
requests, ``concurrency`` senders upload them, and outcomes queue up for the consumer, so
a slow consumer slows the whole pipeline instead of growing memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.exceptions import DICOMwebError
from .._core.implicit_vr import IMPLICIT_VR_MESSAGE, is_implicit_vr
from .._core.multipart_writer import BodyPart
from .._core.retry import RetryPolicy, count_attempts
from .._core.store_result import FailureReason
from .._services import stow as _stow
from .._transport.transport import Transport
from .implicit_vr import to_explicit_vr
from .journal import Journal, JournalEntry
from .pipeline import Pipeline, put, taken, two_passes
from .progress import ProgressCallback, ProgressTracker
from .report import Report
from .scan import ScannedFile, Unreadable, iter_paths, scan_file

__all__ = ["FileOutcome", "Sources", "UploadPipeline", "UploadReport"]

logger = logging.getLogger("dicomweb_async")

#: What bulk uploads accept: one file or folder, or an (async) iterable of them.
Sources = (
    str
    | os.PathLike[str]
    | Iterable[str | os.PathLike[str]]
    | AsyncIterable[str | os.PathLike[str]]
)

Status = Literal["stored", "already_stored", "failed", "skipped"]

_SCAN_BATCH = 32
# Files up to this size are read whole by the scan and sent from memory: one worker-thread
# trip per file instead of two. At most a scan batch plus the requests queued and in flight
# are held: (32 + 2 x concurrency) x 256 KiB, 16 MiB at concurrency 16.
_KEEP_BYTES = 256 * 1024


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file.

    Attributes
    ----------
    path : Path
    status : {"stored", "already_stored", "failed", "skipped"}
        ``already_stored``: the server had it (Azure's 409 with FailureReason 45070), or
        the journal of an earlier run records it.
    sop_instance_uid, study_instance_uid : str or None
        From the file's header, when it could be read.
    size : int
        File size in bytes.
    reason : int or None
        The server's FailureReason for failed instances.
    message : str or None
        Why a file failed or was skipped, in words.
    attempts : int
        Requests that carried this file, the transport's retries included.
    from_journal : bool
        True when skipped because the journal records it.
    """

    path: Path
    status: Status
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    size: int = 0
    reason: int | None = None
    message: str | None = None
    attempts: int = 0
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True unless the file failed."""
        return self.status != "failed"


@dataclass
class UploadReport(Report[FileOutcome]):
    """Every input of a bulk upload with its outcome.

    Attributes
    ----------
    outcomes : list of FileOutcome
        One per input file, in completion order.
    elapsed : float
        Seconds the upload took.
    """

    _moved = "stored"

    @property
    def stored(self) -> list[FileOutcome]:
        """Files the server stored in this run."""
        return self._with("stored")

    @property
    def already_stored(self) -> list[FileOutcome]:
        """Files the server already had (or an earlier run's journal records)."""
        return self._with("already_stored")

    @property
    def skipped(self) -> list[FileOutcome]:
        """Inputs that are not DICOM files."""
        return self._with("skipped")

    @property
    def bytes_stored(self) -> int:
        """Bytes of the files stored in this run."""
        return self._moved_bytes()

    def summary(self) -> str:
        """One line: counts by status, bytes and rate."""
        return (
            f"{len(self.stored)} stored, {len(self.already_stored)} already stored, "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped; {self._totals()}"
        )

    def _failure_message(self, failed: Sequence[FileOutcome]) -> str:
        first = failed[0]
        return (
            f"{len(failed)} of {len(self.outcomes)} files failed; first: {first.path}: "
            f"{first.message}"
        )


def _normalize(
    sources: Sources,
) -> Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]]:
    if isinstance(sources, str | os.PathLike):
        return [sources]
    return sources


class UploadPipeline(Pipeline[FileOutcome]):
    """Upload files as they come and hand back their outcomes as they complete.

    Use as an async context manager whose value is iterated::

        async with client.upload_pipeline(paths, concurrency=8) as outcomes:
            async for outcome in outcomes:
                ...

    Leaving the block early cancels what is still in flight. At most about
    ``concurrency`` requests are in flight and a bounded number of outcomes wait for
    the consumer.

    Parameters
    ----------
    transport : Transport
    sources : path, or (async) iterable of paths
        Files, and folders walked recursively.
    concurrency : int
        Requests in flight at once.
    max_request_bytes : int or None
        None sends one instance per request; a number groups consecutive instances of
        the same study into one request up to that many bytes.
    journal : Journal, path or None
        Skip instances an earlier run recorded; record those confirmed in this run.
    progress : callable, optional
        Receives :class:`Progress` events.
    retry : RetryPolicy, optional
        How requests are retried (default :meth:`RetryPolicy.for_bulk`). Requests that
        still failed transiently (the policy's statuses, broken connections) are sent
        once more, with the same policy, after all the others. It also governs re-sending
        instances the server reports as being created by another process (45071).
    reject_implicit_vr : bool
        Report implicit VR little endian files as failed without sending them (the
        Azure DICOM service refuses them).
    convert_implicit_vr : bool
        With ``reject_implicit_vr``, re-encode such files as explicit VR little endian
        and send that instead (each is read whole into memory).
    upsert : bool
        ``PUT`` instead of ``POST``: instances the server has are replaced.
    """

    def __init__(
        self,
        transport: Transport,
        sources: Sources,
        *,
        concurrency: int = 8,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        retry: RetryPolicy | None = None,
        reject_implicit_vr: bool = False,
        convert_implicit_vr: bool = False,
        upsert: bool = False,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_request_bytes is not None and max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        self.retry = retry or RetryPolicy.for_bulk()
        self._transport = transport.with_retry(self.retry)
        self._sources = _normalize(sources)
        self.concurrency = concurrency
        self.max_request_bytes = max_request_bytes
        self._own_journal = journal is not None and not isinstance(journal, Journal)
        self.journal: Journal | None = (
            Journal(journal)
            if journal is not None and not isinstance(journal, Journal)
            else journal
        )
        self.tracker = ProgressTracker("upload", progress)
        # Requests that failed transiently, with the tries they took: sent again at the end.
        self._deferred: list[_Request] = []
        self.result_buffer = 4 * concurrency
        self.reject_implicit_vr = reject_implicit_vr
        self.convert_implicit_vr = convert_implicit_vr
        self.upsert = upsert
        self.inputs = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.journal is not None:
            await self.journal.open()

    def _start(self, tg: TaskGroup, results: MemoryObjectSendStream[FileOutcome]) -> None:
        tg.start_soon(self._run, results.clone())

    async def _run(self, results: MemoryObjectSendStream[FileOutcome]) -> None:
        await two_passes(
            results,
            self.concurrency,
            self._produce,
            self._send_batches,
            self._take_deferred,
            "request(s)",
        )

    def _take_deferred(self) -> list[_Request]:
        deferred, self._deferred = self._deferred, []
        return deferred

    async def _close(self) -> None:
        if self.journal is not None and self._own_journal:
            await self.journal.aclose()
        self.tracker.finish()

    # -- producer: walk, scan, form requests -----------------------------------------------

    async def _iter_sources(self) -> AsyncIterator[list[Path]]:
        sources = self._sources
        if isinstance(sources, AsyncIterable):
            async for source in sources:
                paths = await anyio.to_thread.run_sync(_list_paths, source)
                for start in range(0, len(paths), _SCAN_BATCH):
                    yield paths[start : start + _SCAN_BATCH]
        else:
            walker = iter_paths(sources)
            while True:
                chunk = await anyio.to_thread.run_sync(lambda: list(islice(walker, _SCAN_BATCH)))
                if not chunk:
                    return
                yield chunk

    async def _produce(
        self,
        batches: MemoryObjectSendStream[_Request],
        results: MemoryObjectSendStream[FileOutcome],
    ) -> None:
        grouper = _Grouper(self.max_request_bytes)
        async with batches, results:
            async for paths in self._iter_sources():
                self.inputs += len(paths)
                for item in await anyio.to_thread.run_sync(_scan_all, paths):
                    decided = self._settle(item)
                    if isinstance(decided, FileOutcome):
                        await self._emit(results, decided)
                        continue
                    for batch in grouper.add(decided):
                        await put(batches, (batch, 0))
            for batch in grouper.flush():
                await put(batches, (batch, 0))
            self.tracker.set_total(self.inputs)

    def _settle(self, item: ScannedFile | Unreadable) -> FileOutcome | ScannedFile:
        """The outcome of an input that needs no request, or the file to send."""
        if isinstance(item, Unreadable):
            status: Status = "failed" if item.corrupt else "skipped"
            return FileOutcome(item.path, status, message=item.reason)
        if self.journal is not None and self.journal.get(item.sop_instance_uid) is not None:
            return FileOutcome(
                item.path,
                "already_stored",
                item.sop_instance_uid,
                item.study_instance_uid,
                item.size,
                message="recorded in the journal of an earlier run",
                from_journal=True,
            )
        implicit = self.reject_implicit_vr and is_implicit_vr(item.transfer_syntax)
        if implicit and not self.convert_implicit_vr:
            return _failed(
                item,
                IMPLICIT_VR_MESSAGE + " (or pass convert_implicit_vr=True)",
                0,
                FailureReason.VALIDATION_FAILED,
            )
        return item

    async def _emit(
        self, results: MemoryObjectSendStream[FileOutcome], outcome: FileOutcome
    ) -> None:
        if outcome.status == "failed":
            self.tracker.add(failed=1)
        elif outcome.status == "skipped":
            self.tracker.add(skipped=1)
        else:
            self.tracker.add(done=1, nbytes=outcome.size if outcome.status == "stored" else 0)
        await put(results, outcome)

    # -- senders ---------------------------------------------------------------------------

    async def _send_batches(
        self,
        batches: MemoryObjectReceiveStream[_Request],
        results: MemoryObjectSendStream[FileOutcome],
        final: bool = False,
    ) -> None:
        async with batches, results:
            async for batch, prior in taken(batches):
                outcomes = await self._upload(batch, prior, final)
                if self.journal is not None:
                    await self.journal.record(
                        JournalEntry(o.sop_instance_uid or "", o.status, str(o.path), o.size)
                        for o in outcomes
                        if o.status in ("stored", "already_stored") and o.sop_instance_uid
                    )
                for outcome in outcomes:
                    await self._emit(results, outcome)

    async def _items(self, files: Sequence[ScannedFile]) -> list[BodyPart]:
        """What to send for each file: the file as scanned, or its explicit VR encoding."""
        items: list[BodyPart] = []
        for f in files:
            if self.convert_implicit_vr and is_implicit_vr(f.transfer_syntax):
                data = await anyio.to_thread.run_sync(to_explicit_vr, f.path)
                items.append(BodyPart(size=len(data), data=data))
            elif f.data is not None:
                items.append(BodyPart(size=f.size, data=f.data))
            else:
                items.append(BodyPart(size=f.size, path=f.path))
        return items

    async def _upload(
        self, batch: Sequence[ScannedFile], prior: int = 0, final: bool = True
    ) -> list[FileOutcome]:
        """Send ``batch`` (which took ``prior`` tries before); the outcomes it settled.

        A request that failed transiently after the transport's retries is kept for the
        final pass, unless this is it (``final``).
        """
        outcomes: list[FileOutcome] = []
        todo = list(batch)
        attempt = 0  # rounds, for the 45071 backoff
        while todo:
            attempt += 1
            with count_attempts() as tries:
                try:
                    result = await _stow.store(
                        self._transport, await self._items(todo), upsert=self.upsert
                    )
                except (DICOMwebError, OSError) as exc:
                    if not final and self.retry.attempts > 1 and self.retry.is_transient(exc):
                        self._deferred.append((todo, prior + tries.value))
                        return outcomes
                    # The whole request failed (after the transport's own retries):
                    # every instance in it is reported with the error.
                    outcomes.extend(_failed(f, str(exc), prior + tries.value) for f in todo)
                    return outcomes
            prior += tries.value
            retry_later: list[ScannedFile] = []
            failed = {o.sop_instance_uid: o for o in result.failed}
            stored = {o.sop_instance_uid for o in result.stored}
            for f in todo:
                sop = f.sop_instance_uid
                if sop in failed:
                    code = failed[sop].reason
                    if code == FailureReason.ALREADY_STORED:
                        outcomes.append(_outcome(f, "already_stored", prior, code))
                    elif code == FailureReason.BEING_CREATED and attempt < self.retry.attempts:
                        retry_later.append(f)
                    else:
                        text = "; ".join(failed[sop].error_comments) or "refused by the server"
                        outcomes.append(_failed(f, f"{text} (FailureReason {code})", prior, code))
                elif sop in stored or (result.status_code == 200 and not result.failed):
                    outcomes.append(_outcome(f, "stored", prior))
                else:
                    outcomes.append(
                        _failed(
                            f, f"not reported by the server (status {result.status_code})", prior
                        )
                    )
            if retry_later:
                delay = self.retry.delay(attempt)
                logger.warning(
                    "%d instance(s) being created by another process (45071); retry %d in %.2fs",
                    len(retry_later),
                    attempt,
                    delay,
                )
                await anyio.sleep(delay)
            todo = retry_later
        return outcomes


#: One request to send: its files, and the tries earlier passes made.
_Request = tuple[list[ScannedFile], int]


class _Grouper:
    """Forms requests: one instance each, or consecutive instances of one study up to a size."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.pending: list[ScannedFile] = []
        self.pending_bytes = 0

    def add(self, item: ScannedFile) -> list[list[ScannedFile]]:
        """Take ``item``; return the requests that are complete now."""
        if self.max_bytes is None:
            return [[item]]
        ready = []
        if self.pending and (
            self.pending[0].study_instance_uid != item.study_instance_uid
            or self.pending_bytes + item.size > self.max_bytes
        ):
            ready = self.flush()
        self.pending.append(item)
        self.pending_bytes += item.size
        return ready

    def flush(self) -> list[list[ScannedFile]]:
        """The request still being filled, if any."""
        ready = [self.pending] if self.pending else []
        self.pending, self.pending_bytes = [], 0
        return ready


def _list_paths(source: str | os.PathLike[str]) -> list[Path]:
    return list(iter_paths([source]))


def _scan_all(paths: list[Path]) -> list[ScannedFile | Unreadable]:
    return [scan_file(p, _KEEP_BYTES) for p in paths]


def _outcome(
    f: ScannedFile, status: Status, attempts: int, reason: int | None = None
) -> FileOutcome:
    return FileOutcome(
        f.path,
        status,
        f.sop_instance_uid,
        f.study_instance_uid,
        f.size,
        reason=reason,
        attempts=attempts,
    )


def _failed(f: ScannedFile, message: str, attempts: int, reason: int | None = None) -> FileOutcome:
    return FileOutcome(
        f.path,
        "failed",
        f.sop_instance_uid,
        f.study_instance_uid,
        f.size,
        reason=reason,
        message=message,
        attempts=attempts,
    )
