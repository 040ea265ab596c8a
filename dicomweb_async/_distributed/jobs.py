"""A sharded job from start to end, whatever runs the shards: plan, run, merge.

The engine adapters (``on_dask.py``, ``on_ray.py``) differ only in how they run a plan;
they hand that over as ``run``, which takes the plan and the progress merger and returns
the shards' reports and the errors of shards that never reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._bulk.download import DownloadReport
from .._bulk.progress import ProgressCallback
from .._bulk.upload import UploadReport
from .merge import merge_reports
from .plan import plan_downloads, plan_uploads
from .progress import ProgressMerger
from .run import ShardReport
from .spec import ShardSpec, Target

__all__ = ["DEFAULT_SHARDS", "RunPlan", "sharded_download", "sharded_upload"]

#: Shards a plan is cut into unless told otherwise. A fixed number, not one derived from
#: the cluster, so that a re-run on another cluster finds the same shards (and journals).
DEFAULT_SHARDS = 64

#: Runs a plan on an engine: the shards' reports, and ``{shard_id: error}`` for the rest.
RunPlan = Callable[[list[ShardSpec], ProgressMerger], tuple[list[ShardReport], dict[str, str]]]


def sharded_upload(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    target: Target,
    run: RunPlan,
    *,
    shards: int,
    per_shard: int,
    journal_dir: str | os.PathLike[str] | None,
    max_request_bytes: int | None,
    progress: ProgressCallback | None,
) -> UploadReport:
    """Plan an upload, run it with ``run`` and merge what comes back."""
    plan = plan_uploads(
        sources,
        target,
        shards=shards,
        concurrency=per_shard,
        journal_dir=journal_dir,
        max_request_bytes=max_request_bytes,
    )
    merger = ProgressMerger("upload", progress, sum(len(s.members) for s in plan))
    reports, errors = run(plan, merger)
    merged = merge_reports(plan, reports, errors)
    assert isinstance(merged, UploadReport)
    return merged


def sharded_download(
    studies: Iterable[str] | Mapping[str, Any],
    target: Target,
    output_dir: str | os.PathLike[str],
    run: RunPlan,
    *,
    shards: int,
    per_shard: int,
    journal_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
) -> DownloadReport:
    """Plan a download, run it with ``run`` and merge what comes back."""
    plan = plan_downloads(
        studies,
        target,
        output_dir,
        shards=shards,
        concurrency=per_shard,
        journal_dir=journal_dir,
    )
    merger = ProgressMerger("download", progress, None)
    reports, errors = run(plan, merger)
    merged = merge_reports(plan, reports, errors)
    assert isinstance(merged, DownloadReport)
    return merged
