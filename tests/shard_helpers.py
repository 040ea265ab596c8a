"""What the sharded-run tests on every engine (Dask, Ray) share: an archive of studies on
disk, the loopback server that stores them, and the checks on what it holds."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dicomweb_async import UploadReport
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.test_bulk_upload import posts, sop_of

SIZE = 8192


def archive(root: Path, studies: int, per_study: int, prefix: str = "9300") -> list[Path]:
    """``studies`` studies of ``per_study`` instances of SIZE bytes, one folder each."""
    files: list[Path] = []
    for number in range(1, studies + 1):
        uid = f"1.2.826.0.1.3680043.8.498.{prefix}{number}"
        files += write_instance_files(root / f"s{number}", per_study, SIZE, study_uid=uid)
    return files


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_each_once_on_the_server(server: LoopbackServer, files: list[Path]) -> None:
    """Every file is on the server, byte for byte, and nothing else is."""
    for path in files:
        held = server.get_instance(sop_of(path))
        assert held is not None and held.path is not None
        assert digest(held.path) == digest(path)
    held_count = sum(len(s) for study in server.registry().values() for s in study.values())
    assert held_count == len(files)


def received(server: LoopbackServer) -> Counter[str]:
    """SOP Instance UID -> how many answered POSTs carried it."""
    return Counter(
        part.sop_uid or "" for r in posts(server) if r.status is not None for part in r.parts
    )


def kill_a_worker_that_confirmed(journals: Path, workers: Callable[[], set[int]]) -> int:
    """SIGKILL the worker process of a shard once its journal holds confirmed instances.

    A journal is ``<journals>/<shard>/<time>-<pid>-<random>.jsonl``: the pid is the worker
    process running that attempt, and ``workers()`` the processes that may be killed.
    """
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "no shard confirmed anything"
        candidates = workers()
        for journal in journals.glob("*/*.jsonl"):
            pid = int(journal.stem.split("-")[1])
            if pid in candidates and len(journal.read_bytes().splitlines()) >= 2:
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.005)


def assert_nothing_lost_or_doubled(
    report: UploadReport,
    server: LoopbackServer,
    files: list[Path],
    journals: Path,
    *,
    twice_at_most: int,
    mode: str,
) -> None:
    """What a run with a killed worker must still have done."""
    assert report.ok, [o.message for o in report.failed]
    # Every input exactly once in the merged report.
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    # Every instance on the server exactly once, byte for byte.
    assert_each_once_on_the_server(server, files)
    # What was sent twice is bounded by what the killed worker kept in flight.
    twice = [sop for sop, n in received(server).items() if n > 1]
    assert len(twice) <= twice_at_most, twice
    # The killed worker's shard really ran again: a second attempt, a second journal.
    attempts = [len(list(d.glob("*.jsonl"))) for d in journals.iterdir()]
    assert max(attempts) >= 2, attempts
    if mode == "azure":
        assert all(o.status in ("stored", "already_stored") for o in report.outcomes)
