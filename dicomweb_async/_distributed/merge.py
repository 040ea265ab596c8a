"""Merge the reports of many shards (and attempts) into one that counts each input once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .._bulk.download import DownloadOutcome, DownloadReport
from .._bulk.upload import FileOutcome, UploadReport
from .run import ShardReport
from .spec import ShardSpec

__all__ = ["merge_reports"]

# Which outcome stands when an input was reported more than once (two attempts).
_UPLOAD_RANK = {"stored": 3, "already_stored": 2, "skipped": 1, "failed": 0}
_DOWNLOAD_RANK = {"downloaded": 2, "skipped": 1, "failed": 0}


def merge_reports(
    specs: Sequence[ShardSpec],
    reports: Iterable[ShardReport],
    errors: Mapping[str, str] | None = None,
) -> UploadReport | DownloadReport:
    """One report for a sharded run: every input of every shard exactly once.

    Parameters
    ----------
    specs : sequence of ShardSpec
        The plan (all of one kind).
    reports : iterable of ShardReport
        What came back, any number per shard: of two attempts' outcomes for one input,
        the better stands (stored over already stored over failed).
    errors : mapping of str to str, optional
        Why a shard has no report (its last error), by shard id.

    Returns
    -------
    UploadReport or DownloadReport
        Members of shards that never reported appear as failed, with the reason. Its
        ``elapsed`` is the longest shard's.
    """
    errors = errors or {}
    kinds = {s.kind for s in specs}
    if len(kinds) > 1:
        raise ValueError("cannot merge store and download shards into one report")
    kind = kinds.pop() if kinds else "store"
    wanted = {s.shard_id: s for s in specs}
    elapsed = 0.0
    reported: set[str] = set()
    uploads: dict[str, FileOutcome] = {}
    downloads: dict[tuple[str, str | None], DownloadOutcome] = {}
    for shard in reports:
        if shard.shard_id not in wanted:
            raise ValueError(f"report of shard {shard.shard_id}, which is not in the plan")
        reported.add(shard.shard_id)
        elapsed = max(elapsed, shard.report.elapsed)
        for outcome in shard.report.outcomes:
            if isinstance(outcome, FileOutcome):
                key = str(outcome.path)
                held = uploads.get(key)
                if held is None or _UPLOAD_RANK[outcome.status] > _UPLOAD_RANK[held.status]:
                    uploads[key] = outcome
            else:
                dkey = (outcome.study_instance_uid, outcome.sop_instance_uid)
                dheld = downloads.get(dkey)
                if dheld is None or _DOWNLOAD_RANK[outcome.status] > _DOWNLOAD_RANK[dheld.status]:
                    downloads[dkey] = outcome
    missing = [s for s in specs if s.shard_id not in reported]
    if kind == "store":
        for spec in specs:
            why = _lost(spec, errors) if spec in missing else "not in its shard's report"
            for member in spec.members:
                if member not in uploads:
                    uploads[member] = FileOutcome(Path(member), "failed", message=why)
        return UploadReport(list(uploads.values()), elapsed)
    for spec in missing:
        for study in spec.members:
            downloads.setdefault(
                (study, None),
                DownloadOutcome(study, None, None, "failed", message=_lost(spec, errors)),
            )
    # A study listed as failed by one attempt and downloaded by another is not failed.
    done = {study for study, sop in downloads if sop is not None}
    outcomes = [
        o
        for (study, sop), o in downloads.items()
        if sop is not None or study not in done or o.status != "failed"
    ]
    return DownloadReport(outcomes, elapsed)


def _lost(spec: ShardSpec, errors: Mapping[str, str]) -> str:
    why = errors.get(spec.shard_id, "its worker was lost and not replaced")
    return f"shard {spec.shard_id} did not report ({why})"
