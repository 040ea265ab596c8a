"""Bulk download: many studies, their series and instances fetched in parallel.

Each study is first listed with QIDO-RS (instances with their series). Instances whose
file is already on disk are skipped: files appear under their final names only once
complete, so the download directory is its own journal and a re-run after a crash fetches
only what is missing. A series with nothing on disk is fetched in one request; otherwise
the missing instances are fetched one by one. Up to ``concurrency`` requests run at once;
outcomes queue up (bounded) for the consumer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.exceptions import DICOMwebError
from .._core.media import MediaTypeSpec, accept_header
from .._core.retry import RetryPolicy, count_attempts
from .._services import wado as _wado
from .._services.download import ByteBudget, DownloadedInstance, save_parts
from .._transport.transport import Transport
from .pipeline import Pipeline, put, taken, two_passes
from .progress import ProgressCallback, ProgressTracker
from .report import Report
from .units import FetchUnit, Next, StudySources, after_answer, iter_studies, list_study, units_for

__all__ = ["DownloadOutcome", "DownloadPipeline", "DownloadReport", "StudySources"]

logger = logging.getLogger("dicomweb_async")


DownloadStatus = Literal["downloaded", "skipped", "failed"]

# Received bytes that all downloads of a pipeline together may hold before the disk.
_PENDING_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class DownloadOutcome:
    """What happened to one instance (or, when it could not be listed, one study).

    Attributes
    ----------
    study_instance_uid : str
    series_instance_uid, sop_instance_uid : str or None
        None when a whole study failed before its instances were known.
    status : {"downloaded", "skipped", "failed"}
        ``skipped``: the file was already complete on disk.
    path : Path or None
        The file, for downloaded and skipped instances.
    size : int
        File size in bytes.
    message : str or None
        Why an instance failed.
    attempts : int
        Requests that asked for this instance (its series or itself), retries included.
    """

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    status: DownloadStatus
    path: Path | None = None
    size: int = 0
    message: str | None = None
    attempts: int = 0


@dataclass
class DownloadReport(Report[DownloadOutcome]):
    """Every instance of a bulk download with its outcome.

    Attributes
    ----------
    outcomes : list of DownloadOutcome
        One per instance (or per study that could not be listed), in completion order.
    elapsed : float
        Seconds the download took.
    """

    _moved = "downloaded"

    @property
    def downloaded(self) -> list[DownloadOutcome]:
        """Instances written in this run."""
        return self._with("downloaded")

    @property
    def skipped(self) -> list[DownloadOutcome]:
        """Instances already complete on disk."""
        return self._with("skipped")

    @property
    def bytes_downloaded(self) -> int:
        """Bytes written in this run."""
        return self._moved_bytes()

    def summary(self) -> str:
        """One line: counts by status, bytes and rate."""
        return (
            f"{len(self.downloaded)} downloaded, {len(self.skipped)} already on disk, "
            f"{len(self.failed)} failed; {self._totals()}"
        )

    def _failure_message(self, failed: Sequence[DownloadOutcome]) -> str:
        first = failed[0]
        what = first.sop_instance_uid or f"study {first.study_instance_uid}"
        return f"{len(failed)} download(s) failed; first: {what}: {first.message}"


class DownloadPipeline(Pipeline[DownloadOutcome]):
    """Download studies as they come and hand back outcomes as instances complete.

    Use as ``async with client.download_pipeline(uids, directory) as outcomes: async for
    outcome in outcomes: ...``; leaving the block early cancels what is in flight.

    Parameters
    ----------
    transport : Transport
    limits : ReaderLimits
    studies : str or (async) iterable of str
        Study Instance UIDs.
    directory : path
        Root of the ``<study>/<series>/<sop>.dcm`` tree.
    concurrency : int
        Requests in flight at once.
    skip_existing : bool
        Skip instances whose file is already on disk (complete by construction).
    series : str, optional
        Restrict a single-study download to this series.
    split_series : bool
        Fetch every instance in its own request, even when a whole series is missing
        (parallelism within one series).
    progress : callable, optional
        Receives :class:`Progress` events.
    media_types : sequence, optional
        Acceptable media types (default: the stored encoding).
    retry : RetryPolicy, optional
        How requests are retried (default :meth:`RetryPolicy.for_bulk`). A response
        cut off mid-body is asked for again (only the instances still missing) up to
        the policy's tries; what still failed transiently is asked for once more after
        all the rest.
    """

    def __init__(
        self,
        transport: Transport,
        limits: _wado.ReaderLimits,
        studies: StudySources,
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        skip_existing: bool = True,
        series: str | None = None,
        progress: ProgressCallback | None = None,
        media_types: Sequence[MediaTypeSpec] | None = None,
        split_series: bool = False,
        retry: RetryPolicy | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.retry = retry or RetryPolicy.for_bulk()
        self._transport = transport.with_retry(self.retry)
        self._limits = limits
        self._studies = [studies] if isinstance(studies, str) else studies
        self.directory = Path(directory)
        self.concurrency = concurrency
        self.skip_existing = skip_existing
        self.series = series
        self.split_series = split_series
        self.tracker = ProgressTracker("download", progress)
        self._accept = accept_header(
            media_types, default=_wado.DEFAULT_INSTANCE_TYPE, multipart=True
        )
        self.result_buffer = 4 * concurrency
        # Listing requests and fetches share one bound, so at most `concurrency`
        # requests are in flight whatever the mix.
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._budget = ByteBudget(_PENDING_BYTES)
        self._expected = 0
        # Requests that failed transiently, with the tries they took: asked again at the end.
        self._deferred: list[tuple[FetchUnit, int]] = []

    async def _open(self) -> None:
        await anyio.Path(self.directory).mkdir(parents=True, exist_ok=True)

    def _start(self, tg: TaskGroup, results: MemoryObjectSendStream[DownloadOutcome]) -> None:
        tg.start_soon(self._run, results.clone())

    async def _run(self, results: MemoryObjectSendStream[DownloadOutcome]) -> None:
        await two_passes(
            results,
            self.concurrency,
            self._plan,
            self._fetch_units,
            self._take_deferred,
            "request(s)",
        )

    def _take_deferred(self) -> list[tuple[FetchUnit, int]]:
        deferred, self._deferred = self._deferred, []
        return deferred

    async def _close(self) -> None:
        self.tracker.finish()

    # -- planning ------------------------------------------------------------------------

    def _target(self, study: str, series: str, sop: str) -> Path:
        return self.directory / study / series / f"{sop}.dcm"

    async def _plan(
        self,
        units: MemoryObjectSendStream[tuple[FetchUnit, int]],
        results: MemoryObjectSendStream[DownloadOutcome],
    ) -> None:
        async with units, results:
            async for study in iter_studies(self._studies):
                try:
                    async with self._limiter:
                        by_series = await list_study(self._transport, study, self.series)
                except (DICOMwebError, ValueError) as exc:
                    # Without a listing, files already on disk cannot be told apart from
                    # missing ones; report the study so that a re-run can finish it.
                    message = f"could not list the study's instances: {exc}"
                    await self._emit(
                        results,
                        DownloadOutcome(study, self.series, None, "failed", message=message),
                    )
                    continue
                if not by_series:
                    await self._emit(
                        results,
                        DownloadOutcome(
                            study, self.series, None, "failed", message="no instances found"
                        ),
                    )
                    continue
                for series, sops in by_series.items():
                    self._expected += len(sops)
                    on_disk: dict[str, int] = {}
                    if self.skip_existing:
                        on_disk = await anyio.to_thread.run_sync(
                            _existing, self.directory / study / series
                        )
                    missing = []
                    for sop in sops:
                        if sop in on_disk:
                            target = self._target(study, series, sop)
                            await self._emit(
                                results,
                                DownloadOutcome(
                                    study, series, sop, "skipped", target, on_disk[sop]
                                ),
                            )
                        else:
                            missing.append(sop)
                    whole = len(missing) == len(sops) and not self.split_series
                    for unit in units_for(study, series, missing, whole=whole):
                        await put(units, (unit, 0))
            self.tracker.set_total(self._expected)

    async def _emit(
        self, results: MemoryObjectSendStream[DownloadOutcome], outcome: DownloadOutcome
    ) -> None:
        if outcome.status == "downloaded":
            self.tracker.add(done=1, nbytes=outcome.size)
        elif outcome.status == "skipped":
            self.tracker.add(skipped=1)
        else:
            self.tracker.add(failed=1)
        await put(results, outcome)

    # -- fetching ------------------------------------------------------------------------

    async def _fetch_units(
        self,
        units: MemoryObjectReceiveStream[tuple[FetchUnit, int]],
        results: MemoryObjectSendStream[DownloadOutcome],
        final: bool = False,
    ) -> None:
        async with units, results:
            async for unit, prior in taken(units):
                await self._fetch(unit, prior, results, final)

    async def _fetch(
        self,
        unit: FetchUnit,
        prior: int,
        results: MemoryObjectSendStream[DownloadOutcome],
        final: bool,
    ) -> None:
        """Fetch ``unit`` (which took ``prior`` tries before); one outcome per instance.

        The transport retries a request until a response starts. A response cut off
        after that is asked for again here, for the instances still missing, up to the
        policy's tries; a whole series partly saved continues one instance at a time.
        """
        started = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            saved: list[DownloadedInstance] = []
            error: DICOMwebError | OSError | None = None
            answered = False
            with count_attempts() as tries:
                try:
                    async with (
                        self._limiter,
                        _wado.open_parts(
                            self._transport, unit.path, self._accept, limits=self._limits
                        ) as parts,
                    ):
                        answered = True
                        await save_parts(
                            parts,
                            self.directory,
                            study_instance_uid=unit.study,
                            series_instance_uid=unit.series,
                            on_saved=saved.append,
                            budget=self._budget,
                        )
                except (DICOMwebError, OSError) as exc:
                    error = exc
            prior += tries.value
            for item in saved:
                await self._emit(
                    results,
                    DownloadOutcome(
                        item.study_instance_uid,
                        item.series_instance_uid,
                        item.sop_instance_uid,
                        "downloaded",
                        item.path,
                        item.size,
                        attempts=prior,
                    ),
                )
            got = {item.sop_instance_uid for item in saved}
            missing = tuple(sop for sop in unit.sops if sop not in got)
            if not missing:
                return
            step = await after_answer(
                self.retry,
                unit,
                error,
                answered=answered,
                rounds=rounds,
                started=started,
                got_some=bool(saved),
                missing=len(missing),
                final=final,
            )
            if step is Next.AGAIN:
                unit = unit.only(missing)
                continue
            if step is Next.SINGLES:
                for single in unit.singles(missing):
                    await self._fetch(single, prior, results, final)
            elif step is Next.DEFER:
                # The whole request again if nothing of it arrived, else what is missing.
                later = [unit] if not saved else unit.singles(missing)
                self._deferred.extend((each, prior) for each in later)
            else:
                message = str(error) if error else "not in the server's response"
                for sop in missing:
                    await self._emit(
                        results,
                        DownloadOutcome(
                            unit.study, unit.series, sop, "failed", message=message, attempts=prior
                        ),
                    )
            return


def _existing(folder: Path) -> dict[str, int]:
    """SOP Instance UID -> size of the complete files in a series folder."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith(".dcm") and entry.is_file():
            found[entry.name[: -len(".dcm")]] = entry.stat().st_size
    return found
