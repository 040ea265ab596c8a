"""Copying studies between two servers, and checking that a copy is complete."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._bulk.copy import SPOOL_BYTES, CopyPipeline, CopyReport
from .._bulk.journal import Journal
from .._bulk.progress import ProgressCallback
from .._bulk.report import run_to_report
from .._bulk.units import StudySources, instance_uids, iter_studies, list_study
from .._core.exceptions import DICOMwebError
from .._core.retry import RetryPolicy
from .base import ClientBase

__all__ = ["StudyDifference", "copy_pipeline", "copy_studies", "verify_copy"]


def copy_pipeline(
    source: ClientBase,
    destination: ClientBase,
    studies: StudySources,
    *,
    concurrency: int = 4,
    max_request_bytes: int | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    skip_existing: bool = True,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    convert_implicit_vr: bool | None = None,
    spool_bytes: int = SPOOL_BYTES,
    spool_dir: str | os.PathLike[str] | None = None,
) -> CopyPipeline:
    """Copy studies as they come; iterate per-instance outcomes as they complete.

    Use as ``async with copy_pipeline(src, dst, uids) as outcomes: async for o in
    outcomes: ...``; ``studies`` may be an async iterable fed by an earlier pipeline
    stage. Parameters are those of :func:`copy_studies` (without search filters).
    """
    for client in (source, destination):
        client._check_concurrency(concurrency)
    destination._check_request_bytes(max_request_bytes)
    if convert_implicit_vr is None:
        convert_implicit_vr = destination.reject_implicit_vr
    return CopyPipeline(
        source._transport,
        source._limits,
        destination._transport,
        studies,
        concurrency=concurrency,
        max_request_bytes=max_request_bytes,
        journal=journal,
        skip_existing=skip_existing,
        progress=progress,
        retry=retry or destination._bulk_retry,
        convert_implicit_vr=convert_implicit_vr,
        spool_bytes=spool_bytes,
        spool_dir=spool_dir,
    )


async def copy_studies(
    source: ClientBase,
    destination: ClientBase,
    studies: StudySources | Mapping[str, Any],
    *,
    concurrency: int = 4,
    max_request_bytes: int | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    skip_existing: bool = True,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    convert_implicit_vr: bool | None = None,
    spool_bytes: int = SPOOL_BYTES,
    spool_dir: str | os.PathLike[str] | None = None,
) -> CopyReport:
    """Copy studies from one DICOMweb server to another, streamed, without a disk.

    Instances flow from the source's WADO-RS answers into STOW-RS requests to the
    destination as they arrive, each held once: in memory, or in a temporary file when
    larger than ``spool_bytes``. Memory stays bounded whatever the study's size.

    Parameters
    ----------
    source, destination : AsyncDICOMwebClient
        Clients of the two servers (any kind: Orthanc, dcm4chee, Azure, ...).
    studies : str, iterable of str, async iterable of str, or mapping
        Study Instance UIDs at the source, or QIDO-RS search filters (a mapping such as
        ``{"PatientID": "ID1"}``) whose matching studies are copied.
    concurrency : int
        Source requests (whole series, or single instances) in flight at once; each has
        at most one destination request beside it.
    max_request_bytes : int or None
        None (default) stores one instance per request; a number groups instances of
        one study into requests of up to that many bytes.
    journal : path or Journal, optional
        Records every instance the destination confirmed. Re-running the same copy with
        it after a crash, kill or Ctrl-C copies only what is missing.
    skip_existing : bool
        List each study's instances at the destination first (one QIDO-RS search) and
        skip those it has, so a second run sends nothing even to servers that accept
        duplicates silently (Orthanc answers them with 200).
    progress : callable, optional
        Called with :class:`Progress` events (operation ``"copy"``).
    retry : RetryPolicy, optional
        For both servers: the destination client's policy if it was given one, else
        :meth:`RetryPolicy.for_bulk`. What still failed transiently is copied once more,
        one instance at a time, after all the rest.
    convert_implicit_vr : bool, optional
        Re-encode implicit VR little endian instances as explicit VR little endian (no
        loss) before sending. Default: when the destination refuses implicit VR (an
        :class:`AzureDICOMwebClient`, or a client with ``reject_implicit_vr=True``).
    spool_bytes : int
        Instances larger than this (default 4 MiB) are held in a temporary file.
    spool_dir : path, optional
        Where those files go (default: the system's temporary directory).

    Returns
    -------
    CopyReport
        One :class:`CopyOutcome` per source instance: copied, already present (409 with
        FailureReason 45070, or in the journal) or failed (with the destination's
        FailureReason or the error). Failures do not raise; call
        ``report.raise_for_failures()`` for that.

    Notes
    -----
    The stored encoding is asked for (``transfer-syntax=*``) and sent unchanged unless
    converted as above; ``report.converted`` lists those that were.
    """
    uids = await source._studies_matching(studies)
    return await run_to_report(
        copy_pipeline(
            source,
            destination,
            uids,
            concurrency=concurrency,
            max_request_bytes=max_request_bytes,
            journal=journal,
            skip_existing=skip_existing,
            progress=progress,
            retry=retry,
            convert_implicit_vr=convert_implicit_vr,
            spool_bytes=spool_bytes,
            spool_dir=spool_dir,
        ),
        CopyReport(),
    )


@dataclass(frozen=True)
class StudyDifference:
    """How one study differs between a source and a destination.

    Attributes
    ----------
    study_instance_uid : str
    missing : frozenset of str
        SOP Instance UIDs at the source but not at the destination.
    extra : frozenset of str
        SOP Instance UIDs at the destination but not at the source.
    error : str or None
        Why the study could not be compared (a failed search), if it could not.
    """

    study_instance_uid: str
    missing: frozenset[str]
    extra: frozenset[str]
    error: str | None = None


async def _instances(client: ClientBase, study: str) -> set[str]:
    return instance_uids(await list_study(client._transport, study))


async def verify_copy(
    source: ClientBase,
    destination: ClientBase,
    studies: StudySources | Mapping[str, Any],
) -> list[StudyDifference]:
    """Compare the instance lists of studies at both servers (QIDO-RS).

    Parameters
    ----------
    source, destination : AsyncDICOMwebClient
    studies : str, iterable of str, async iterable of str, or mapping
        As in :func:`copy_studies`.

    Returns
    -------
    list of StudyDifference
        The studies that differ or could not be compared; empty when every instance
        at the source is at the destination and nothing else is.
    """
    differences: list[StudyDifference] = []
    async for study in iter_studies(await source._studies_matching(studies)):
        try:
            at_source = await _instances(source, study)
            at_destination = await _instances(destination, study)
        except (DICOMwebError, ValueError) as exc:
            # A failed search is reported; the other studies are still compared.
            differences.append(StudyDifference(study, frozenset(), frozenset(), str(exc)))
            continue
        if at_source != at_destination:
            differences.append(
                StudyDifference(
                    study,
                    frozenset(at_source - at_destination),
                    frozenset(at_destination - at_source),
                )
            )
    return differences
