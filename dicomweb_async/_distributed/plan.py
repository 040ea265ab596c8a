"""Planners: cut a migration into shards, on the driver, once.

Uploads: the folders are listed once and each file's StudyInstanceUID read from its first
bytes. Whole studies are then packed into shards, largest first, each into the shard
holding the fewest bytes. A study is never split over two shards: it may go up in one
request (``max_request_bytes``), and two writers of one instance would race into the
server's "being created" answer (45071). Files that cannot be read as DICOM still go to a
shard, so that its report says what they are.

Downloads: StudyInstanceUIDs, deduplicated and sorted, dealt out in turn; given search
filters instead, the driver finds the studies with one QIDO-RS search (every page) first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio

from .._bulk.scan import ScannedFile, iter_paths, scan_file
from .._core.datasets import first_value
from .spec import ShardSpec, Target, shard_id

__all__ = ["find_studies", "plan_downloads", "plan_uploads"]

_STUDY_UID = "0020000D"


def _check_shards(shards: int) -> None:
    if shards < 1:
        raise ValueError("shards must be at least 1")


def plan_uploads(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    target: Target,
    *,
    shards: int,
    concurrency: int = 8,
    journal_dir: str | os.PathLike[str] | None = None,
    max_request_bytes: int | None = None,
) -> list[ShardSpec]:
    """Shard an upload of files and folders by study.

    Parameters
    ----------
    sources : path or iterable of paths
        Files and folders (walked recursively, as ``store_folder`` does).
    target : Target
    shards : int
        How many shards to make at most (fewer when there are fewer studies).
    concurrency : int
        Requests each shard keeps in flight.
    journal_dir : path, optional
        Where shards keep journals and reports, for resuming.
    max_request_bytes : int, optional
        As in ``store_folder``.

    Returns
    -------
    list of ShardSpec
        Ordered by shard id; empty if there are no files.
    """
    _check_shards(shards)
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    studies: dict[str, list[tuple[str, int]]] = {}
    for path in iter_paths(sources):
        scanned = scan_file(path)
        if isinstance(scanned, ScannedFile):
            key, size = scanned.study_instance_uid, scanned.size
        else:
            # Not DICOM, or unreadable: a group of its own, reported by whichever shard.
            key, size = f"file:{path}", _size(path)
        studies.setdefault(key, []).append((str(path), size))
    if not studies:
        return []
    # Largest first, each into the lightest shard: an even spread of bytes, the same
    # every time for the same files.
    order = sorted(studies, key=lambda k: (-sum(s for _, s in studies[k]), k))
    count = min(shards, len(order))
    bins: list[list[str]] = [[] for _ in range(count)]
    loads = [0] * count
    for key in order:
        lightest = min(range(count), key=lambda i: (loads[i], i))
        files = sorted(studies[key])
        bins[lightest].extend(p for p, _ in files)
        loads[lightest] += sum(s for _, s in files)
    specs = [
        ShardSpec(
            shard_id=shard_id("store", target.url, tuple(members)),
            kind="store",
            members=tuple(members),
            target=target,
            concurrency=concurrency,
            journal_dir=None if journal_dir is None else str(journal_dir),
            max_request_bytes=max_request_bytes,
        )
        for members in bins
    ]
    return sorted(specs, key=lambda s: s.shard_id)


def find_studies(target: Target, search_filters: Mapping[str, Any]) -> list[str]:
    """The StudyInstanceUIDs one QIDO-RS search finds, every page, each once (blocking).

    Run on the driver, before sharding, so that every worker does not search again and
    a study found twice (a server paging inconsistently) is still downloaded once.

    Parameters
    ----------
    target : Target
        The server; its credentials are taken here, on the driver.
    search_filters : mapping
        QIDO-RS filters, such as ``{"PatientID": "ID1", "StudyDate": "20240101-"}``.
    """

    async def search() -> list[str]:
        async with target.client(max_connections=1) as client:
            found: dict[str, None] = {}
            async for item in client.iter_search_for_studies(search_filters=dict(search_filters)):
                uid = first_value(item, _STUDY_UID)
                if uid:
                    found[uid] = None
            return list(found)

    return anyio.run(search)


def plan_downloads(
    studies: Iterable[str] | Mapping[str, Any],
    target: Target,
    output_dir: str | os.PathLike[str],
    *,
    shards: int,
    concurrency: int = 8,
    journal_dir: str | os.PathLike[str] | None = None,
) -> list[ShardSpec]:
    """Shard a download of studies (each study whole in one shard).

    Parameters
    ----------
    studies : iterable of str, or mapping
        StudyInstanceUIDs (duplicates are dropped), or QIDO-RS search filters whose
        studies are found first (:func:`find_studies`).
    target : Target
    output_dir : path
        Where every shard writes ``<study>/<series>/<sop>.dcm``.
    shards : int
        How many shards to make at most.
    concurrency : int
        Requests each shard keeps in flight.
    journal_dir : path, optional
        Where finished shards leave their reports, so a re-run skips them.
    """
    _check_shards(shards)
    if isinstance(studies, Mapping):
        studies = find_studies(target, studies)
    unique = sorted(set(studies))
    if not unique:
        return []
    count = min(shards, len(unique))
    specs = []
    for index in range(count):
        members = tuple(unique[index::count])
        specs.append(
            ShardSpec(
                shard_id=shard_id("download", target.url, members),
                kind="download",
                members=members,
                target=target,
                concurrency=concurrency,
                journal_dir=None if journal_dir is None else str(journal_dir),
                output_dir=str(output_dir),
            )
        )
    return sorted(specs, key=lambda s: s.shard_id)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
