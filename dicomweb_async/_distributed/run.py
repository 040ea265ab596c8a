"""Run one shard: synchronously, on an event loop of its own, with the bulk code as it is.

Engines (Dask, Ray, Spark, a plain process pool) call :func:`run_shard` in a worker
thread or process. Every engine re-runs a task whose worker died, and may briefly run two
copies of one, so:

* each attempt appends to a journal of its own, ``<journal_dir>/<shard_id>/<attempt>.jsonl``,
  and reads the others': what any attempt saw confirmed is not sent again, and no journal
  file ever has two writers;
* one attempt at a time runs a shard: it holds ``active.lock`` (created exclusively and
  renewed every second) and the others wait, so two live attempts never send one shard
  at once; a dead attempt's lock goes stale and is taken over;
* a finished shard leaves ``report.json`` next to them (written to a temporary name and
  renamed); a later run of the same shard with nothing failed returns that report instead
  of running again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .._bulk.download import DownloadOutcome, DownloadReport
from .._bulk.journal import Journal
from .._bulk.progress import ProgressCallback
from .._bulk.upload import FileOutcome, UploadReport
from .spec import Kind, ShardSpec

__all__ = ["REPORT_NAME", "ShardReport", "run_shard"]

REPORT_NAME = "report.json"
LOCK_NAME = "active.lock"
#: Seconds between renewals of the shard lock, and after which one counts as abandoned.
LEASE_BEAT = 1.0
LEASE_TTL = 10.0
LEASE_POLL = 0.2


@dataclass
class ShardReport:
    """What one run of a shard did.

    Attributes
    ----------
    shard_id : str
    kind : {"store", "download"}
    attempt : str
        This attempt's id (its journal is ``<attempt>.jsonl``).
    report : UploadReport or DownloadReport
        Every input of the shard with its outcome.
    reused : bool
        True when an earlier run had finished the shard and its report was returned.
    """

    shard_id: str
    kind: Kind
    attempt: str
    report: UploadReport | DownloadReport
    reused: bool = False

    @property
    def ok(self) -> bool:
        """True unless some input failed."""
        return self.report.ok


def new_attempt_id() -> str:
    """An id no other attempt has: time, process and randomness."""
    return f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def run_shard(
    spec: ShardSpec,
    *,
    attempt: str | None = None,
    progress: ProgressCallback | None = None,
    lease_ttl: float = LEASE_TTL,
) -> ShardReport:
    """Run ``spec`` to the end and return its report (blocking; owns its event loop).

    Parameters
    ----------
    spec : ShardSpec
    attempt : str, optional
        This attempt's id; by default a new unique one.
    progress : callable, optional
        Called with :class:`~dicomweb_async.Progress` events, in this thread.
    lease_ttl : float
        With a ``journal_dir``: one attempt at a time runs a shard, holding a lock it
        renews every second; the others wait. A lock not renewed for this many seconds
        (its process died) is taken over.

    Returns
    -------
    ShardReport
    """
    attempt = attempt or new_attempt_id()
    folder = Path(spec.journal_dir) / spec.shard_id if spec.journal_dir else None
    if folder is None:
        report = anyio.run(_run, spec, None, progress)
        return ShardReport(spec.shard_id, spec.kind, attempt, report)
    earlier = _load_report(folder / REPORT_NAME, spec, attempt)
    if earlier is not None and earlier.ok:
        return earlier
    folder.mkdir(parents=True, exist_ok=True)
    with _ShardLock(folder, attempt, lease_ttl):
        # An attempt that held the lock before may have finished the shard meanwhile.
        earlier = _load_report(folder / REPORT_NAME, spec, attempt)
        if earlier is not None and earlier.ok:
            return earlier
        journal = None
        if spec.kind == "store":
            others = sorted(p for p in folder.glob("*.jsonl") if p.stem != attempt)
            journal = Journal(folder / f"{attempt}.jsonl", also=others)
        report = anyio.run(_run, spec, journal, progress)
        shard = ShardReport(spec.shard_id, spec.kind, attempt, report)
        _save_report(folder, shard)
        return shard


class _ShardLock:
    """``active.lock`` in the shard's folder: created exclusively, renewed while held.

    One attempt at a time holds it; the others wait. A lock whose holder stopped renewing
    it (its process died) is taken over after ``ttl`` seconds: renamed away first, which
    only one of several waiting attempts can do.
    """

    def __init__(self, folder: Path, attempt: str, ttl: float) -> None:
        self.path = folder / LOCK_NAME
        self.attempt = attempt
        self.ttl = ttl
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._renew, daemon=True)

    def _take(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.attempt.encode("utf-8"))
        finally:
            os.close(fd)
        return True

    def _take_over_if_stale(self) -> None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if age <= self.ttl:
            return
        aside = self.path.with_name(f".{LOCK_NAME}.{self.attempt}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)  # fails for all but one taker
            aside.unlink()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_BEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __enter__(self) -> _ShardLock:
        while not self._take():
            self._take_over_if_stale()
            time.sleep(LEASE_POLL)
        self._beat.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._beat.join()
        with contextlib.suppress(OSError):
            # Only a lock still ours: one taken over meanwhile belongs to another attempt.
            if self.path.read_text(encoding="utf-8") == self.attempt:
                self.path.unlink()


async def _run(
    spec: ShardSpec, journal: Journal | None, progress: ProgressCallback | None
) -> UploadReport | DownloadReport:
    async with spec.target.client(max_connections=spec.concurrency) as client:
        if spec.kind == "download":
            assert spec.output_dir is not None
            # Downloads resume from the files already complete on disk.
            return await client.download_studies(
                list(spec.members),
                spec.output_dir,
                concurrency=spec.concurrency,
                progress=progress,
            )
        return await client.store_folder(
            list(spec.members),
            concurrency=spec.concurrency,
            journal=journal,
            progress=progress,
            max_request_bytes=spec.max_request_bytes,
        )


def _encode(outcome: FileOutcome | DownloadOutcome) -> dict[str, Any]:
    fields = dataclasses.asdict(outcome)
    if fields.get("path") is not None:
        fields["path"] = str(fields["path"])
    return fields


def _decode(kind: Kind, fields: dict[str, Any]) -> FileOutcome | DownloadOutcome:
    if fields.get("path") is not None:
        fields["path"] = Path(fields["path"])
    return FileOutcome(**fields) if kind == "store" else DownloadOutcome(**fields)


def _save_report(folder: Path, shard: ShardReport) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "shard_id": shard.shard_id,
        "kind": shard.kind,
        "attempt": shard.attempt,
        "elapsed": shard.report.elapsed,
        "outcomes": [_encode(o) for o in shard.report.outcomes],
    }
    # Written aside and renamed, so a reader sees a whole report or none, also when two
    # attempts finish at once.
    temporary = folder / f".{REPORT_NAME}.{shard.attempt}.tmp"
    temporary.write_text(json.dumps(body), encoding="utf-8")
    os.replace(temporary, folder / REPORT_NAME)


def _load_report(path: Path, spec: ShardSpec, attempt: str) -> ShardReport | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body["shard_id"] != spec.shard_id or body["kind"] != spec.kind:
            return None
        outcomes = [_decode(spec.kind, dict(o)) for o in body["outcomes"]]
        elapsed = float(body["elapsed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    report: UploadReport | DownloadReport
    if spec.kind == "store":
        report = UploadReport([o for o in outcomes if isinstance(o, FileOutcome)], elapsed)
    else:
        report = DownloadReport([o for o in outcomes if isinstance(o, DownloadOutcome)], elapsed)
    return ShardReport(spec.shard_id, spec.kind, str(body.get("attempt", attempt)), report, True)
