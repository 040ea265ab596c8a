"""Sharded transfers on a real local Ray: 2 CPUs, every server on 127.0.0.1, no dashboard,
against the loopback server, including a worker killed mid-shard.

Skipped when the ``ray`` extra is not installed, or when Ray listens anywhere but on
127.0.0.1 (the reason says where).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomweb_async import Progress, UploadReport
from dicomweb_async.distributed import (
    Target,
    download_studies_on_ray,
    local_ray,
    store_folders_on_ray,
)
from tests.loopback_server import LoopbackServer
from tests.shard_helpers import (
    SIZE,
    archive,
    assert_each_once_on_the_server,
    assert_nothing_lost_or_doubled,
    kill_a_worker_that_confirmed,
    received,
)
from tests.test_bulk_upload import posts

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = [
    pytest.mark.timeout(240),
    # Ray 2.40 (the lowest version the extra allows) leaves its own log files and server
    # processes to the garbage collector when it starts and stops.
    pytest.mark.filterwarnings(
        "ignore:unclosed file <_io.TextIOWrapper name='[^']*/ray/session_:ResourceWarning"
    ),
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


def _ray_processes(before: set[int]) -> list[Any]:
    """The processes Ray started under this one (not other tests' servers)."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


@pytest.fixture(scope="module")
def ray_workers() -> Iterator[set[int]]:
    """A local Ray of 2 CPUs; yields the pids of its processes."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with local_ray(2):
        # Start the task workers, so that their sockets are checked too.
        ray.get([ray.remote(_pid).remote() for _ in range(4)])
        processes = _ray_processes(before)
        listening = sorted(
            {
                c.laddr.ip
                for p in processes
                for c in _listening(p)
                if c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1")
            }
        )
        if listening:
            pytest.skip(f"Ray listens on {', '.join(listening)}, not only on 127.0.0.1")
        assert processes
        yield {p.pid for p in processes}


def _pid() -> int:
    return os.getpid()


def _listening(process: Any) -> list[Any]:
    try:
        return [c for c in process.net_connections(kind="inet") if c.status == "LISTEN"]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "server-store") as srv:
        yield srv
        assert srv.errors == []


def test_an_upload_over_ray(ray_workers: set[int], server: LoopbackServer, tmp_path: Path) -> None:
    files = archive(tmp_path / "in", studies=6, per_study=4)
    events: list[Progress] = []
    server.latency = 0.005

    report = store_folders_on_ray(
        tmp_path / "in",
        Target(server.url),
        concurrency=4,
        shards=6,
        journal_dir=tmp_path / "journals",
        progress=events.append,
    )

    assert isinstance(report, UploadReport) and report.ok
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    assert set(received(server).values()) == {1}
    assert_each_once_on_the_server(server, files)
    # Never more requests at once than the total bound, over all workers.
    assert 1 <= server.max_in_flight <= 4
    assert events and events[-1].final and events[-1].done == len(files)
    assert events[-1].total == len(files)

    # A re-run finds every shard finished and sends nothing.
    sent = len(posts(server))
    again = store_folders_on_ray(
        tmp_path / "in",
        Target(server.url),
        concurrency=4,
        shards=6,
        journal_dir=tmp_path / "journals",
    )
    assert again.ok and len(posts(server)) == sent
    assert sorted(o.path for o in again.outcomes) == sorted(files)


@pytest.mark.parametrize("mode", ["azure", "orthanc"])
def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(
    ray_workers: set[int], server: LoopbackServer, tmp_path: Path, mode: str
) -> None:
    # Azure answers a second copy with 409 (45070, already stored); Orthanc with 200.
    server.duplicate_policy = "conflict" if mode == "azure" else "accept"
    server.latency = 0.03
    files = archive(tmp_path / "in", studies=4, per_study=10)
    concurrency, shards = 4, 4
    result: dict[str, UploadReport] = {}

    def upload() -> None:
        result["report"] = store_folders_on_ray(
            tmp_path / "in",
            Target(server.url),
            concurrency=concurrency,
            shards=shards,
            journal_dir=tmp_path / "journals",
        )

    before = {p.pid for p in psutil.Process().children(recursive=True)} - ray_workers
    driver = threading.Thread(target=upload)
    driver.start()
    kill_a_worker_that_confirmed(
        tmp_path / "journals", lambda: {p.pid for p in _ray_processes(before)}
    )
    driver.join(timeout=180)
    assert not driver.is_alive()

    # With 2 CPUs, 4 shards run at once (a worker process each), and the bound of 4 gives
    # each of them 1 request.
    assert_nothing_lost_or_doubled(
        result["report"],
        server,
        files,
        tmp_path / "journals",
        twice_at_most=concurrency // 4,
        mode=mode,
    )


def test_a_download_over_ray(
    ray_workers: set[int], server: LoopbackServer, tmp_path: Path
) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.9500{n}" for n in range(1, 6)]
    for uid in uids:
        server.add_synthetic_study(uid, 3, SIZE)

    report = download_studies_on_ray(
        uids + uids[:2], Target(server.url), tmp_path / "out", concurrency=4
    )

    assert report.ok and len(report.outcomes) == 15
    assert {o.study_instance_uid for o in report.outcomes} == set(uids)
    assert all(o.path is not None and o.path.stat().st_size == SIZE for o in report.outcomes)


def test_a_shard_that_keeps_failing_is_reported_not_lost(
    ray_workers: set[int], server: LoopbackServer, tmp_path: Path
) -> None:
    files = archive(tmp_path / "in", studies=2, per_study=2)
    # Journals under a file, not a folder: every attempt of every shard raises.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")

    report = store_folders_on_ray(
        tmp_path / "in",
        Target(server.url),
        concurrency=2,
        shards=2,
        journal_dir=blocked,
        retries=1,
    )

    assert not report.ok
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    assert all(o.status == "failed" for o in report.outcomes)
    assert all("Error" in (o.message or "") for o in report.outcomes)


def test_ray_must_be_running_or_named() -> None:
    # In a process of its own: this one runs the fixture's Ray.
    script = (
        "from dicomweb_async.distributed import Target, store_folders_on_ray\n"
        "store_folders_on_ray([], Target('http://127.0.0.1:1'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert "RuntimeError: Ray is not initialized" in done.stderr


def test_the_driver_killed_and_the_job_run_again(
    ray_workers: set[int], server: LoopbackServer, tmp_path: Path
) -> None:
    server.latency = 0.02
    files = archive(tmp_path / "in", studies=8, per_study=6, prefix="9600")
    journals = tmp_path / "journals"
    concurrency = 4
    # A driver of its own, on the same local Ray (its tasks die with it).
    script = (
        "import sys\n"
        "from dicomweb_async.distributed import Target, store_folders_on_ray\n"
        "store_folders_on_ray(sys.argv[1], Target(sys.argv[2]), address=sys.argv[3],\n"
        f"                     concurrency={concurrency}, shards=8, journal_dir=sys.argv[4])\n"
    )
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "in"), server.url, address, str(journals)]
    )
    try:
        # Kill the driver once some shards have finished and others have not.
        deadline = time.monotonic() + 90
        while len(list(journals.glob("*/report.json"))) < 2:
            assert time.monotonic() < deadline and driver.poll() is None, "no shard finished"
            time.sleep(0.005)
        driver.kill()
    finally:
        driver.wait(timeout=30)
    finished_before = {p.parent.name for p in journals.glob("*/report.json")}
    assert len(finished_before) < 8, "the driver finished before it was killed"

    report = store_folders_on_ray(
        tmp_path / "in",
        Target(server.url),
        concurrency=concurrency,
        shards=8,
        journal_dir=journals,
    )

    assert report.ok, [o.message for o in report.failed]
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    assert_each_once_on_the_server(server, files)
    # Sent twice: at most what the killed run had in flight (its tasks may even have run
    # on beside the new ones, each attempt with a journal of its own).
    sent = received(server)
    assert sum(n - 1 for n in sent.values()) <= concurrency, sent.most_common(8)
