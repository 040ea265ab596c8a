"""Methods of the client that change what the server holds: STOW-RS, bulk upload, DELETE."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._bulk.journal import Journal
from .._bulk.progress import ProgressCallback
from .._bulk.report import run_to_report
from .._bulk.upload import Sources, UploadPipeline, UploadReport
from .._core.external_metadata import metadata_headers
from .._core.multipart_writer import StoreItem
from .._core.retry import RetryPolicy
from .._core.store_result import StoreResult
from .._core.urls import check_uid, instance_path, series_path, study_path
from .._services import delete as _delete
from .._services import stow as _stow
from .base import ClientBase

if TYPE_CHECKING:
    pass

__all__ = ["StoreMethods"]


class StoreMethods(ClientBase):
    """Store instances one request at a time or in bulk, and delete them."""

    async def store_instances(
        self,
        datasets: Sequence[StoreItem],
        study_instance_uid: str | None = None,
        *,
        single_part: bool = False,
        upsert: bool = False,
        external_metadata: Mapping[str, tuple[str, Any]] | None = None,
    ) -> StoreResult:
        """Store instances in one STOW-RS request.

        Parameters
        ----------
        datasets : sequence of path, bytes or Dataset
            Files are streamed from disk as they are (never re-encoded); bytes are sent
            as they are; Datasets are encoded as DICOM files.
        study_instance_uid : str, optional
            POST to ``/studies/{study}``; the server refuses instances of other studies.
        single_part : bool
            Send one instance as a plain ``application/dicom`` body (Azure only).
        upsert : bool
            ``PUT`` instead of ``POST``: instances the server already has are replaced
            instead of refused (the Azure DICOM service, API v2; other servers answer
            405, raised as :class:`MethodNotAllowedError` saying so).
        external_metadata : mapping, optional
            ``{private tag: (VR, value)}``, e.g. ``{"00191100": ("PN", "Doe^Jane")}``:
            study attributes kept beside the files, sent as ``msdicom-meta-{VR}-{tag}``
            headers (the Azure DICOM service, API v2, on Data Lake storage). Checked before
            sending: private tags only, the VRs the service takes, one-line values.

        Returns
        -------
        StoreResult
            Stored, failed and warning outcomes for 200, 202 and 409 answers alike; call
            ``result.raise_for_failures()`` to turn failures into an exception.
        """
        if study_instance_uid is not None:
            check_uid(study_instance_uid, "StudyInstanceUID")
        if single_part:
            self.profile.refuse("single_part_stow", "single-part STOW (single_part=True)")
        if upsert:
            self.profile.refuse("upsert", "upsert (PUT /studies)")
        return await _stow.store(
            self._transport,
            datasets,
            study_instance_uid,
            single_part=single_part,
            reject_implicit_vr=self.reject_implicit_vr,
            upsert=upsert,
            headers=metadata_headers(external_metadata) if external_metadata else None,
        )

    def upload_pipeline(
        self,
        sources: Sources,
        *,
        concurrency: int = 8,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        convert_implicit_vr: bool = False,
        retry: RetryPolicy | None = None,
        upsert: bool = False,
    ) -> UploadPipeline:
        """Upload files as they come; iterate their outcomes as they complete.

        Use as ``async with client.upload_pipeline(paths) as outcomes: async for o in
        outcomes: ...``. ``sources`` may be an async iterable, so a pipeline stage can
        feed files in while earlier ones are uploading. Parameters are those of
        :meth:`store_folder`.
        """
        self._check_concurrency(concurrency)
        self._check_request_bytes(max_request_bytes)
        if upsert:
            self.profile.refuse("upsert", "upsert (PUT /studies)")
        return UploadPipeline(
            self._transport,
            sources,
            concurrency=concurrency,
            max_request_bytes=max_request_bytes,
            journal=journal,
            progress=progress,
            reject_implicit_vr=self.reject_implicit_vr,
            convert_implicit_vr=convert_implicit_vr,
            retry=retry or self._bulk_retry,
            upsert=upsert,
        )

    async def store_folder(
        self,
        sources: Sources,
        *,
        concurrency: int = 8,
        max_request_bytes: int | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        convert_implicit_vr: bool = False,
        retry: RetryPolicy | None = None,
        upsert: bool = False,
    ) -> UploadReport:
        """Upload every DICOM file in folders (recursively) or in a list of paths.

        Parameters
        ----------
        sources : path, or (async) iterable of paths
            Files and folders.
        concurrency : int
            Requests in flight at once (at most the client's ``max_connections``).
        max_request_bytes : int or None
            None (default) sends one instance per request; a number groups consecutive
            instances of one study into requests of up to that many bytes (the Azure
            DICOM service takes at most 4 GB per request).
        journal : path or Journal, optional
            A file recording every instance the server confirmed. Re-running the same
            upload with it after a crash or Ctrl-C skips those and sends the rest.
        progress : callable, optional
            Called with :class:`Progress` events as files finish.
        convert_implicit_vr : bool
            For a client created with ``reject_implicit_vr=True`` (Azure): re-encode
            implicit VR little endian files as explicit VR and send those, instead of
            reporting them as failed.
        retry : RetryPolicy, optional
            How requests are retried: the policy the client was created with, else
            :meth:`RetryPolicy.for_bulk` (eight tries, backoff up to 15 s, Retry-After
            honoured). Requests that still failed transiently are sent once more after
            all the others before the report is returned.
        upsert : bool
            ``PUT`` instead of ``POST`` (Azure API v2): instances the server has are
            replaced, and reported as stored.

        Returns
        -------
        UploadReport
            One :class:`FileOutcome` per input file: stored, already stored (409 with
            FailureReason 45070, or recorded in the journal), failed (with the reason or
            error), or skipped (not DICOM, with why). Failures do not raise; call
            ``report.raise_for_failures()`` for that.

        Notes
        -----
        Headers are read (up to the pixel data) in worker threads; files are sent as
        they are, re-read from disk on every retry. 429, 502, 503, 504, dropped
        connections and FailureReason 45071 are retried; validation failures are not.
        Each outcome's ``attempts`` counts the requests that carried its file.
        """
        return await run_to_report(
            self.upload_pipeline(
                sources,
                concurrency=concurrency,
                max_request_bytes=max_request_bytes,
                journal=journal,
                progress=progress,
                convert_implicit_vr=convert_implicit_vr,
                retry=retry,
                upsert=upsert,
            ),
            UploadReport(),
        )

    async def delete_study(self, study_instance_uid: str) -> None:
        """Delete a study (``DELETE /studies/{study}``; not all servers offer it)."""
        self.profile.refuse("delete", "DELETE")
        await _delete.delete(self._transport, study_path(study_instance_uid))

    async def delete_series(self, study_instance_uid: str, series_instance_uid: str) -> None:
        """Delete a series."""
        self.profile.refuse("delete", "DELETE")
        await _delete.delete(self._transport, series_path(study_instance_uid, series_instance_uid))

    async def delete_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> None:
        """Delete an instance."""
        self.profile.refuse("delete", "DELETE")
        await _delete.delete(
            self._transport,
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
        )
