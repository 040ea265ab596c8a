"""Copy studies from one DICOMweb server to another, instance by instance, without a disk.

Each study is listed at the source (QIDO-RS, instances with their series). Instances the
journal records are settled at once; each series with nothing recorded is fetched in one
WADO-RS request, and instances of a series partly done one at a time. Parts are taken
from the response as they arrive, held once (in memory, or in a temporary file above
``spool_bytes``) and sent on in STOW-RS requests: one instance each, or consecutive
instances of a study up to ``max_request_bytes``. A unit holds at most one request's
worth of parts, so memory is bounded by ``concurrency`` x ``max(spool_bytes,
max_request_bytes)`` whatever the study's size.

The stored encoding is asked for (``transfer-syntax=*``) and sent unchanged, except that
implicit VR little endian instances are re-encoded as explicit VR little endian (without
loss) when the destination is known to refuse them (``convert_implicit_vr``) or refuses
one (FailureReason 43264, sent once more converted); their outcomes say so.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.datasets import read_dataset
from .._core.exceptions import DICOMwebError, ProtocolError
from .._core.identity import read_header
from .._core.implicit_vr import is_implicit_vr
from .._core.multipart_writer import BodyPart
from .._core.retry import RetryPolicy, count_attempts
from .._core.store_result import FailureReason
from .._services import stow as _stow
from .._services import wado as _wado
from .._transport.parts import Part
from .._transport.transport import Transport
from .implicit_vr import to_explicit_vr
from .journal import Journal, JournalEntry
from .pipeline import Pipeline, put, taken, two_passes
from .progress import ProgressCallback, ProgressTracker
from .report import Report
from .units import (
    FetchUnit,
    Next,
    StudySources,
    after_answer,
    instance_uids,
    iter_studies,
    list_study,
    units_for,
)

__all__ = ["CopyOutcome", "CopyPipeline", "CopyReport"]

logger = logging.getLogger("dicomweb_async")

CopyStatus = Literal["copied", "already_present", "failed"]

#: Parts larger than this are held in a temporary file rather than in memory: at the
#: default concurrency of 4, at most about 4 x 2 x 4 MiB of instances are in memory.
SPOOL_BYTES = 4 * 1024 * 1024
_WRITE_BYTES = 1024 * 1024
_HEAD_BYTES = 64 * 1024
# Every stored encoding, as it is: nothing is transcoded on the way.
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_UID_NAMES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class CopyOutcome:
    """What happened to one source instance (or, when it could not be listed, one study).

    Attributes
    ----------
    study_instance_uid : str
    series_instance_uid, sop_instance_uid : str or None
        None when a whole study failed before its instances were known.
    status : {"copied", "already_present", "failed"}
        ``already_present``: the destination had it (409 with FailureReason 45070), or
        the journal of an earlier run records it.
    size : int
        Bytes sent to the destination.
    reason : int or None
        The destination's FailureReason, for instances it refused.
    message : str or None
        Why an instance failed or was skipped, in words.
    attempts : int
        Requests to the destination that carried this instance, retries included.
    converted : bool
        True when it was re-encoded from implicit to explicit VR little endian.
    from_journal : bool
        True when settled by the journal (False for one found at the destination).
    """

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    status: CopyStatus
    size: int = 0
    reason: int | None = None
    message: str | None = None
    attempts: int = 0
    converted: bool = False
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True unless the instance failed."""
        return self.status != "failed"


@dataclass
class CopyReport(Report[CopyOutcome]):
    """Every source instance of a copy with its outcome.

    Attributes
    ----------
    outcomes : list of CopyOutcome
        One per instance (or per study that could not be listed), in completion order.
    elapsed : float
        Seconds the copy took.
    """

    _moved = "copied"

    @property
    def copied(self) -> list[CopyOutcome]:
        """Instances the destination stored in this run."""
        return self._with("copied")

    @property
    def already_present(self) -> list[CopyOutcome]:
        """Instances the destination already had (or an earlier run's journal records)."""
        return self._with("already_present")

    @property
    def converted(self) -> list[CopyOutcome]:
        """Instances re-encoded as explicit VR little endian for the destination."""
        return [o for o in self.outcomes if o.converted]

    @property
    def bytes_copied(self) -> int:
        """Bytes of the instances copied in this run."""
        return self._moved_bytes()

    def summary(self) -> str:
        """One line: counts by status, bytes and rate."""
        converted = f" ({len(self.converted)} converted to explicit VR)" if self.converted else ""
        return (
            f"{len(self.copied)} copied{converted}, {len(self.already_present)} already "
            f"present, {len(self.failed)} failed; {self._totals()}"
        )

    def _failure_message(self, failed: Sequence[CopyOutcome]) -> str:
        first = failed[0]
        what = first.sop_instance_uid or f"study {first.study_instance_uid}"
        total = len(self.outcomes)
        return f"{len(failed)} of {total} instances failed; first: {what}: {first.message}"


@dataclass
class _Held:
    """One instance received from the source and not yet stored at the destination."""

    study: str
    series: str
    sop: str
    size: int
    data: bytes | None = None
    path: Path | None = None
    converted: bool = False
    implicit_vr: bool = False  # stored as implicit VR little endian at the source

    def body(self) -> BodyPart:
        return BodyPart(size=self.size, data=self.data, path=self.path)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.data = None


@dataclass
class _Batch:
    """Instances of one study waiting to go in one STOW-RS request."""

    items: list[_Held] = field(default_factory=list)
    size: int = 0

    def discard(self) -> None:
        for item in self.items:
            item.discard()
        self.items, self.size = [], 0


class CopyPipeline(Pipeline[CopyOutcome]):
    """Copy studies from a source server to a destination; iterate outcomes as they come.

    Use as ``async with CopyPipeline(...) as outcomes: async for outcome in outcomes``
    (or :func:`copy_studies`); leaving the block early cancels what is in flight.

    Parameters
    ----------
    source, destination : Transport
    limits : ReaderLimits
        For reading the source's answers.
    studies : str or (async) iterable of str
        Study Instance UIDs at the source.
    concurrency : int
        Source requests (series or instances) in flight at once; each has at most one
        destination request in flight beside it.
    max_request_bytes : int or None
        None sends one instance per STOW-RS request; a number groups instances of one
        study into requests of up to that many bytes.
    journal : Journal, path or None
        Skip instances an earlier run recorded; record those the destination confirmed.
    skip_existing : bool
        Before copying a study, list its instances at the destination (one QIDO-RS
        search) and skip those it has. Servers that answer a second copy of an instance
        with 200 (Orthanc) would otherwise be sent every instance again.
    progress : callable, optional
        Receives :class:`Progress` events.
    retry : RetryPolicy, optional
        For both sides (default :meth:`RetryPolicy.for_bulk`). A source answer cut off
        mid-body is asked for again (what is still missing); what still failed
        transiently is copied once more, one instance at a time, after all the rest.
    convert_implicit_vr : bool
        Re-encode implicit VR little endian instances as explicit VR little endian
        before sending them (for destinations that refuse them, such as Azure).
    spool_bytes : int
        Instances larger than this are held in a temporary file instead of memory.
    spool_dir : path, optional
        Where those files go (default: the system's temporary directory).
    """

    def __init__(
        self,
        source: Transport,
        limits: _wado.ReaderLimits,
        destination: Transport,
        studies: StudySources,
        *,
        concurrency: int = 4,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        skip_existing: bool = True,
        progress: ProgressCallback | None = None,
        retry: RetryPolicy | None = None,
        convert_implicit_vr: bool = False,
        spool_bytes: int = SPOOL_BYTES,
        spool_dir: str | os.PathLike[str] | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_request_bytes is not None and max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        self.retry = retry or RetryPolicy.for_bulk()
        self._source = source.with_retry(self.retry)
        self._destination = destination.with_retry(self.retry)
        self._limits = limits
        self._studies = [studies] if isinstance(studies, str) else studies
        self.concurrency = concurrency
        self.max_request_bytes = max_request_bytes
        self._own_journal = journal is not None and not isinstance(journal, Journal)
        self.journal: Journal | None = (
            journal if isinstance(journal, Journal) or journal is None else Journal(journal)
        )
        self.skip_existing = skip_existing
        self.tracker = ProgressTracker("copy", progress)
        self.convert_implicit_vr = convert_implicit_vr
        self.spool_bytes = spool_bytes
        self.spool_dir = Path(spool_dir) if spool_dir is not None else Path(tempfile.gettempdir())
        self.result_buffer = 4 * concurrency
        self._expected = 0
        # Single instances that failed transiently: copied once more at the end.
        self._deferred: list[tuple[FetchUnit, int]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.journal is not None:
            await self.journal.open()

    def _start(self, tg: TaskGroup, results: MemoryObjectSendStream[CopyOutcome]) -> None:
        tg.start_soon(self._run, results.clone())

    async def _close(self) -> None:
        if self.journal is not None and self._own_journal:
            await self.journal.aclose()
        self.tracker.finish()

    async def _run(self, results: MemoryObjectSendStream[CopyOutcome]) -> None:
        await two_passes(
            results,
            self.concurrency,
            self._plan,
            self._copy_units,
            self._take_deferred,
            "instance(s)",
        )

    def _take_deferred(self) -> list[tuple[FetchUnit, int]]:
        deferred, self._deferred = self._deferred, []
        return deferred

    # -- planning --------------------------------------------------------------------------

    async def _plan(
        self,
        units: MemoryObjectSendStream[tuple[FetchUnit, int]],
        results: MemoryObjectSendStream[CopyOutcome],
    ) -> None:
        async with units, results:
            async for study in iter_studies(self._studies):
                by_series = await self._list(study, results)
                present = await self._present(study) if by_series else set()
                for series, sops in by_series.items():
                    self._expected += len(sops)
                    missing = []
                    for sop in sops:
                        journaled = self.journal is not None and sop in self.journal
                        if journaled:
                            message = "recorded in the journal of an earlier run"
                        elif sop in present:
                            message = "already at the destination (found by a search)"
                        else:
                            missing.append(sop)
                            continue
                        await self._emit(
                            results,
                            CopyOutcome(
                                study,
                                series,
                                sop,
                                "already_present",
                                message=message,
                                from_journal=journaled,
                            ),
                        )
                    for unit in units_for(study, series, missing, whole=len(missing) == len(sops)):
                        await put(units, (unit, 0))
            self.tracker.set_total(self._expected)

    async def _list(
        self, study: str, results: MemoryObjectSendStream[CopyOutcome]
    ) -> dict[str, list[str]]:
        """Series -> SOP Instance UIDs of ``study`` at the source ({} after a failure)."""
        try:
            by_series = await list_study(self._source, study)
        except (DICOMwebError, ValueError) as exc:
            message = f"could not list the study's instances at the source: {exc}"
            await self._emit(results, CopyOutcome(study, None, None, "failed", message=message))
            return {}
        if not by_series:
            await self._emit(
                results,
                CopyOutcome(study, None, None, "failed", message="no instances at the source"),
            )
        return by_series

    async def _present(self, study: str) -> set[str]:
        """The study's instances the destination has (none known after a failed search)."""
        if not self.skip_existing:
            return set()
        try:
            return instance_uids(await list_study(self._destination, study))
        except DICOMwebError as exc:
            # Not knowing costs only sending again what the destination may have.
            logger.warning("could not list study %s at the destination: %s", study, exc)
            return set()

    async def _emit(
        self, results: MemoryObjectSendStream[CopyOutcome], outcome: CopyOutcome
    ) -> None:
        if outcome.status == "copied":
            self.tracker.add(done=1, nbytes=outcome.size)
        elif outcome.status == "already_present":
            self.tracker.add(done=1)
        else:
            self.tracker.add(failed=1)
        await put(results, outcome)

    # -- copying ---------------------------------------------------------------------------

    async def _copy_units(
        self,
        units: MemoryObjectReceiveStream[tuple[FetchUnit, int]],
        results: MemoryObjectSendStream[CopyOutcome],
        final: bool = False,
    ) -> None:
        async with units, results:
            async for unit, prior in taken(units):
                await self._copy(unit, prior, results, final)

    async def _copy(
        self,
        unit: FetchUnit,
        prior: int,
        results: MemoryObjectSendStream[CopyOutcome],
        final: bool,
    ) -> None:
        """Copy ``unit``: every instance it names ends with an outcome, or is deferred."""
        started = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            seen: set[str] = set()
            error: DICOMwebError | OSError | None = None
            answered = False
            # Receiving the next instance overlaps storing the last: a sender task takes
            # each request as it is complete (one at a time), while this task reads on.
            send, receive = anyio.create_memory_object_stream[_Batch](0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._store_all, receive, prior, results, final)
                async with send:
                    batch = _Batch()
                    try:
                        async with _wado.open_parts(
                            self._source, unit.path, _ACCEPT, limits=self._limits
                        ) as parts:
                            answered = True
                            async for part in parts:
                                held = await self._hold(part, unit)
                                if held.sop in seen:
                                    held.discard()
                                    continue
                                seen.add(held.sop)
                                if batch.items and not self._fits(batch, held):
                                    batch = await self._hand_over(send, batch)
                                batch.items.append(held)
                                batch.size += held.size
                    except (DICOMwebError, OSError) as exc:
                        # Complete instances received before the break still go on.
                        error = exc
                    try:
                        if batch.items:
                            batch = await self._hand_over(send, batch)
                    finally:
                        batch.discard()  # only if cancelled before the hand-over
            missing = tuple(sop for sop in unit.sops if sop not in seen)
            if not missing:
                return
            step = await after_answer(
                self.retry,
                unit,
                error,
                answered=answered,
                rounds=rounds,
                started=started,
                got_some=bool(seen),
                missing=len(missing),
                final=final,
                # One bad instance (say, one the source cannot read) must not fail the
                # rest of its series: each is asked for alone, and fails alone.
                split_on_failure=True,
            )
            if step is Next.AGAIN:
                unit = unit.only(missing)
                continue
            if step is Next.SINGLES:
                for single in unit.singles(missing):
                    await self._copy(single, prior, results, final)
            elif step is Next.DEFER:
                self._deferred.extend((single, prior) for single in unit.singles(missing))
            else:
                message = f"at the source: {error}" if error else "not in the source's answer"
                for sop in missing:
                    outcome = CopyOutcome(unit.study, unit.series, sop, "failed", message=message)
                    await self._emit(results, outcome)
            return

    async def _hand_over(self, send: MemoryObjectSendStream[_Batch], batch: _Batch) -> _Batch:
        """Give a complete request to the sender; a new, empty one to fill."""
        await send.send(batch)
        return _Batch()

    async def _store_all(
        self,
        batches: MemoryObjectReceiveStream[_Batch],
        prior: int,
        results: MemoryObjectSendStream[CopyOutcome],
        final: bool,
    ) -> None:
        async with batches:
            async for batch in batches:
                await self._store(batch, prior, results, final)

    def _fits(self, batch: _Batch, held: _Held) -> bool:
        if self.max_request_bytes is None:
            return False
        return batch.size + held.size <= self.max_request_bytes

    async def _hold(self, part: Part, unit: FetchUnit) -> _Held:
        """Receive one part whole: in memory, or in a temporary file once it is large."""
        chunks: list[bytes] = []
        pending = 0  # bytes in ``chunks``
        size = 0
        fd: int | None = None
        spooled: Path | None = None
        try:
            async for chunk in part.aiter_bytes():
                size += len(chunk)
                chunks.append(chunk)
                pending += len(chunk)
                if fd is None and size > self.spool_bytes:
                    spooled, fd = await anyio.to_thread.run_sync(self._spool_file)
                if fd is not None and pending >= _WRITE_BYTES:
                    # Written in pieces of about 1 MiB: one thread hand-off per piece.
                    await anyio.to_thread.run_sync(_write_all, fd, chunks)
                    chunks, pending = [], 0
            if fd is not None:
                if chunks:
                    await anyio.to_thread.run_sync(_write_all, fd, chunks)
                    chunks = []
                os.close(fd)
                fd = None
        except BaseException:
            if fd is not None:
                os.close(fd)
            if spooled is not None:
                spooled.unlink(missing_ok=True)
            raise
        data = b"".join(chunks) if spooled is None else None
        head = (
            data[:_HEAD_BYTES]
            if data is not None
            else await anyio.to_thread.run_sync(_read_head, spooled)
        )
        header = read_header(head)
        if header is None:
            # An encoding the quick reader leaves to pydicom, or not DICOM at all.
            try:
                ds = await anyio.to_thread.run_sync(
                    lambda: read_dataset(
                        data if data is not None else spooled,  # type: ignore[arg-type]
                        f"a part of {unit.path}",
                        stop_before_pixels=True,
                        specific_tags=_UID_NAMES,
                    )
                )
                uids = tuple(str(ds.get(n, "")) for n in _UID_NAMES[:3])
                syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
            except ProtocolError:
                if spooled is not None:
                    spooled.unlink(missing_ok=True)
                raise
        else:
            uids = (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
            syntax = header.transfer_syntax
        study, series, sop = uids
        held = _Held(study, series, sop, size, data, spooled)
        if study != unit.study:
            held.discard()
            raise ProtocolError(
                f"{unit.path}: the source sent an instance of study {study}, not {unit.study}"
            )
        held.implicit_vr = is_implicit_vr(part.transfer_syntax or syntax)
        if self.convert_implicit_vr and held.implicit_vr:
            held = await _converted(held)
        return held

    def _spool_file(self) -> tuple[Path, int]:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".copy-", suffix=".dcm", dir=self.spool_dir)
        return Path(name), fd

    async def _store(
        self,
        batch: _Batch,
        prior: int,
        results: MemoryObjectSendStream[CopyOutcome],
        final: bool,
    ) -> None:
        """Send ``batch`` in one STOW-RS request and settle (or defer) each instance."""
        items = batch.items
        try:
            with count_attempts() as tries:
                try:
                    result = await _stow.store(self._destination, [h.body() for h in items])
                except (DICOMwebError, OSError) as exc:
                    attempts = prior + tries.value
                    if not final and self.retry.attempts > 1 and self.retry.is_transient(exc):
                        for held in items:
                            unit = FetchUnit(held.study, held.series, (held.sop,), False)
                            self._deferred.append((unit, attempts))
                        return
                    for held in items:
                        await self._emit(
                            results, _outcome(held, "failed", attempts, message=f"{exc}")
                        )
                    return
            attempts = prior + tries.value
            failed = {o.sop_instance_uid: o for o in result.failed}
            stored = {o.sop_instance_uid for o in result.stored}
            confirmed: list[JournalEntry] = []
            convert: list[_Held] = []
            for held in items:
                refusal = failed.get(held.sop)
                if (
                    refusal is not None
                    and refusal.reason == FailureReason.VALIDATION_FAILED
                    and held.implicit_vr
                    and not held.converted
                ):
                    # Refused for its encoding, most likely (Azure takes explicit VR
                    # only): converted without loss and sent once more below.
                    convert.append(held)
                    continue
                if refusal is None and (held.sop in stored or result.status_code == 200):
                    confirmed.append(JournalEntry(held.sop, "stored", held.series, held.size))
                    await self._emit(results, _outcome(held, "copied", attempts))
                elif refusal is not None and refusal.reason == FailureReason.ALREADY_STORED:
                    confirmed.append(JournalEntry(held.sop, "already_stored", held.series, 0))
                    await self._emit(
                        results, _outcome(held, "already_present", attempts, refusal.reason)
                    )
                elif (
                    refusal is not None
                    and refusal.reason == FailureReason.BEING_CREATED
                    and not final
                    and self.retry.attempts > 1
                ):
                    self._deferred.append(
                        (FetchUnit(held.study, held.series, (held.sop,), False), attempts)
                    )
                else:
                    if refusal is not None:
                        text = "; ".join(refusal.error_comments) or "refused by the destination"
                        message = f"{text} (FailureReason {refusal.reason})"
                        reason = refusal.reason
                    else:
                        message = f"not reported by the destination (status {result.status_code})"
                        reason = None
                    await self._emit(results, _outcome(held, "failed", attempts, reason, message))
            if self.journal is not None and confirmed:
                await self.journal.record(confirmed)
            if convert:
                logger.info(
                    "%d implicit VR instance(s) refused (43264): sending them as explicit VR",
                    len(convert),
                )
                again = _Batch()
                for held in convert:
                    try:
                        explicit = await _converted(held)
                    except Exception as exc:  # pydicom raises many types for bad input
                        message = f"refused as implicit VR (43264), not convertible: {exc}"
                        await self._emit(
                            results, _outcome(held, "failed", attempts, 43264, message)
                        )
                        continue
                    again.items.append(explicit)
                    again.size += explicit.size
                if again.items:
                    await self._store(again, attempts, results, final)
        finally:
            batch.discard()


def _outcome(
    held: _Held,
    status: CopyStatus,
    attempts: int,
    reason: int | None = None,
    message: str | None = None,
) -> CopyOutcome:
    return CopyOutcome(
        held.study,
        held.series,
        held.sop,
        status,
        held.size,
        reason,
        message,
        attempts,
        converted=held.converted,
    )


async def _converted(held: _Held) -> _Held:
    """``held`` re-encoded as explicit VR little endian (the original is let go)."""
    source = held.data if held.data is not None else held.path
    assert source is not None
    data = await anyio.to_thread.run_sync(to_explicit_vr, source)
    held.discard()
    return _Held(held.study, held.series, held.sop, len(data), data, converted=True)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _read_head(path: Path | None) -> bytes:
    assert path is not None
    with path.open("rb") as f:
        return f.read(_HEAD_BYTES)
