"""Methods of the client that write what they retrieve to disk."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .._bulk.download import DownloadPipeline, DownloadReport, StudySources
from .._bulk.progress import ProgressCallback
from .._bulk.report import run_to_report
from .._core.retry import RetryPolicy
from .._core.urls import series_path, study_path
from .._services import wado as _wado
from .._services.download import DownloadedInstance, save_parts
from .._transport.parts import PartStream
from .base import ClientBase, MediaTypes

if TYPE_CHECKING:
    pass

__all__ = ["DownloadMethods"]


class DownloadMethods(ClientBase):
    """Download studies and series to files, one request or many in parallel."""

    async def _download(
        self,
        stream: AbstractAsyncContextManager[PartStream],
        directory: str | os.PathLike[str],
        study: str,
        series: str | None,
    ) -> list[DownloadedInstance]:
        root = Path(directory)
        await anyio.Path(root).mkdir(parents=True, exist_ok=True)
        async with stream as parts:
            return await save_parts(
                parts, root, study_instance_uid=study, series_instance_uid=series
            )

    async def download_study(
        self,
        study_instance_uid: str,
        directory: str | os.PathLike[str],
        media_types: MediaTypes = None,
        *,
        concurrency: int = 1,
    ) -> list[DownloadedInstance]:
        """Write every instance of a study to ``directory/<study>/<series>/<sop>.dcm``.

        Instances are written as they stream in, each through a temporary name renamed
        once complete; memory use does not grow with the study's size. If the response
        breaks off, the instances completed so far stay on disk, no partial file is
        left, and the error is raised.

        Parameters
        ----------
        study_instance_uid : str
        directory : path
        media_types : sequence, optional
            Acceptable media types and transfer syntaxes (default: stored encoding).
        concurrency : int
            1 fetches the study in one request. More lists the study's instances with
            QIDO-RS and fetches its series (or single instances) in parallel; see
            :meth:`download_studies` for skipping files already on disk.

        Returns
        -------
        list of DownloadedInstance
        """
        if concurrency > 1:
            return await self._download_parallel(
                study_instance_uid, None, directory, media_types, concurrency
            )
        return await self._download(
            self._stream(study_path(study_instance_uid), media_types, _wado.DEFAULT_INSTANCE_TYPE),
            directory,
            study_instance_uid,
            None,
        )

    async def download_series(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        directory: str | os.PathLike[str],
        media_types: MediaTypes = None,
        *,
        concurrency: int = 1,
    ) -> list[DownloadedInstance]:
        """Write every instance of a series to disk (see :meth:`download_study`).

        With ``concurrency`` above 1 the series' instances are fetched one per request,
        that many at a time.
        """
        if concurrency > 1:
            return await self._download_parallel(
                study_instance_uid, series_instance_uid, directory, media_types, concurrency
            )
        return await self._download(
            self._stream(
                series_path(study_instance_uid, series_instance_uid),
                media_types,
                _wado.DEFAULT_INSTANCE_TYPE,
            ),
            directory,
            study_instance_uid,
            series_instance_uid,
        )

    async def _download_parallel(
        self,
        study: str,
        series: str | None,
        directory: str | os.PathLike[str],
        media_types: MediaTypes,
        concurrency: int,
    ) -> list[DownloadedInstance]:
        self._check_concurrency(concurrency)
        pipeline = DownloadPipeline(
            self._transport,
            self._limits,
            study,
            directory,
            concurrency=concurrency,
            skip_existing=False,
            series=series,
            media_types=media_types,
            split_series=series is not None,
            retry=self._bulk_retry,
        )
        report = (await run_to_report(pipeline, DownloadReport())).raise_for_failures()
        return [
            DownloadedInstance(
                o.path,
                o.study_instance_uid,
                o.series_instance_uid or "",
                o.sop_instance_uid or "",
                o.size,
                None,
            )
            for o in report.downloaded
            if o.path is not None
        ]

    def download_pipeline(
        self,
        studies: StudySources,
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        skip_existing: bool = True,
        progress: ProgressCallback | None = None,
        media_types: MediaTypes = None,
        retry: RetryPolicy | None = None,
    ) -> DownloadPipeline:
        """Download studies as they come; iterate per-instance outcomes as they complete.

        Use as ``async with client.download_pipeline(uids, "out/") as outcomes: async for
        o in outcomes: ...``; ``studies`` may be an async iterable fed by an earlier
        pipeline stage. Parameters are those of :meth:`download_studies`.
        """
        self._check_concurrency(concurrency)
        return DownloadPipeline(
            self._transport,
            self._limits,
            studies,
            directory,
            concurrency=concurrency,
            skip_existing=skip_existing,
            progress=progress,
            media_types=media_types,
            retry=retry or self._bulk_retry,
        )

    async def download_studies(
        self,
        studies: StudySources | Mapping[str, Any],
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        skip_existing: bool = True,
        progress: ProgressCallback | None = None,
        media_types: MediaTypes = None,
        retry: RetryPolicy | None = None,
    ) -> DownloadReport:
        """Download many studies to ``directory/<study>/<series>/<sop>.dcm``.

        Parameters
        ----------
        studies : str, iterable of str, async iterable of str, or mapping
            Study Instance UIDs, or QIDO-RS search filters (a mapping such as
            ``{"PatientID": "ID1"}``) whose matching studies are downloaded.
        directory : path
        concurrency : int
            Requests in flight at once (series, or single instances, in parallel).
        skip_existing : bool
            Files appear under their final names only once complete, so the directory
            is its own journal: a re-run skips instances already on disk.
        progress : callable, optional
            Called with :class:`Progress` events.
        media_types : sequence, optional
            Acceptable media types and transfer syntaxes (default: stored encoding).
        retry : RetryPolicy, optional
            How requests are retried: the policy the client was created with, else
            :meth:`RetryPolicy.for_bulk`. A response cut off mid-body is asked for again
            (the instances still missing); what still failed transiently is asked for
            once more after all the rest.

        Returns
        -------
        DownloadReport
            One :class:`DownloadOutcome` per instance: downloaded, skipped (already on
            disk) or failed. Failures do not raise; call ``report.raise_for_failures()``.
        """
        return await run_to_report(
            self.download_pipeline(
                await self._studies_matching(studies),
                directory,
                concurrency=concurrency,
                skip_existing=skip_existing,
                progress=progress,
                media_types=media_types,
                retry=retry,
            ),
            DownloadReport(),
        )
