"""Sharded transfers on a real local Dask cluster: 2 worker processes on 127.0.0.1, no
dashboard, against the loopback server, including a worker killed mid-shard."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomweb_async import Progress, UploadReport
from dicomweb_async.distributed import Target, download_studies, local_cluster, store_folders
from tests.loopback_server import LoopbackServer
from tests.shard_helpers import (
    SIZE,
    archive,
    assert_each_once_on_the_server,
    assert_nothing_lost_or_doubled,
    kill_a_worker_that_confirmed,
    received,
)
from tests.test_bulk_upload import posts, stored_parts

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_cluster(2, threads_per_worker=2) as client:
        _assert_loopback_only(client)
        yield client


def _assert_loopback_only(client: Any) -> None:
    """Every socket the cluster's processes listen on is bound to 127.0.0.1."""
    import psutil

    # The scheduler runs in this process (which also holds other tests' servers); the
    # workers and their nannies are processes of their own.
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    pids: set[int] = set()
    for pid in client.run(os.getpid).values():
        worker = psutil.Process(pid)
        pids |= {pid, worker.ppid(), *(c.pid for c in worker.children(recursive=True))}
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening and all(ip == "127.0.0.1" for ip in listening), listening


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "server-store") as srv:
        yield srv
        assert srv.errors == []


def test_an_upload_over_two_workers(
    dask_client: Any, server: LoopbackServer, tmp_path: Path
) -> None:
    files = archive(tmp_path / "in", studies=6, per_study=4)
    events: list[Progress] = []
    server.latency = 0.005

    report = store_folders(
        tmp_path / "in",
        Target(server.url),
        client=dask_client,
        concurrency=4,
        shards=6,
        journal_dir=tmp_path / "journals",
        progress=events.append,
    )

    assert isinstance(report, UploadReport) and report.ok
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    assert Counter(stored_parts(server).values()) == Counter({1: len(files)})
    assert_each_once_on_the_server(server, files)
    # Never more requests at once than the total bound, over all workers.
    assert 1 <= server.max_in_flight <= 4
    assert events and events[-1].final and events[-1].done == len(files)
    assert events[-1].total == len(files)

    # A re-run finds every shard finished and sends nothing.
    sent = len(posts(server))
    again = store_folders(
        tmp_path / "in",
        Target(server.url),
        client=dask_client,
        concurrency=4,
        shards=6,
        journal_dir=tmp_path / "journals",
    )
    assert again.ok and len(posts(server)) == sent
    assert sorted(o.path for o in again.outcomes) == sorted(files)


@pytest.mark.parametrize("mode", ["azure", "orthanc"])
def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(
    dask_client: Any, server: LoopbackServer, tmp_path: Path, mode: str
) -> None:
    # Azure answers a second copy with 409 (45070, already stored); Orthanc with 200.
    server.duplicate_policy = "conflict" if mode == "azure" else "accept"
    server.latency = 0.03
    files = archive(tmp_path / "in", studies=4, per_study=10)
    # All four worker threads up (a worker killed by the other mode may still be coming
    # back), so that the bound splits into one request per shard.
    dask_client.wait_for_workers(2, timeout=60)
    concurrency, shards = 4, 4
    result: dict[str, UploadReport] = {}

    def upload() -> None:
        result["report"] = store_folders(
            tmp_path / "in",
            Target(server.url),
            client=dask_client,
            concurrency=concurrency,
            shards=shards,
            journal_dir=tmp_path / "journals",
        )

    driver = threading.Thread(target=upload)
    driver.start()
    workers = set(dask_client.run(os.getpid).values())
    kill_a_worker_that_confirmed(tmp_path / "journals", lambda: workers)
    driver.join(timeout=180)
    assert not driver.is_alive()

    # The bound is shared by 2 workers x 2 threads: one request per shard. The killed
    # worker ran at most two shards, so at most two instances were in flight on it.
    assert_nothing_lost_or_doubled(
        result["report"],
        server,
        files,
        tmp_path / "journals",
        twice_at_most=2 * (concurrency // 4),
        mode=mode,
    )


def test_a_download_over_two_workers(
    dask_client: Any, server: LoopbackServer, tmp_path: Path
) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.9400{n}" for n in range(1, 6)]
    for uid in uids:
        server.add_synthetic_study(uid, 3, SIZE)

    report = download_studies(
        uids + uids[:2], Target(server.url), tmp_path / "out", client=dask_client, concurrency=4
    )

    assert report.ok and len(report.outcomes) == 15
    assert {o.study_instance_uid for o in report.outcomes} == set(uids)
    assert all(o.path is not None and o.path.stat().st_size == SIZE for o in report.outcomes)


def test_the_driver_killed_and_the_job_run_again(
    dask_client: Any, server: LoopbackServer, tmp_path: Path
) -> None:
    server.latency = 0.02
    files = archive(tmp_path / "in", studies=8, per_study=6)
    journals = tmp_path / "journals"
    dask_client.wait_for_workers(2, timeout=60)
    address = dask_client.scheduler.address
    concurrency = 4
    script = (
        "import sys\n"
        "from dicomweb_async.distributed import Target, store_folders\n"
        "store_folders(sys.argv[1], Target(sys.argv[2]), client=sys.argv[3],\n"
        f"              concurrency={concurrency}, shards=8, journal_dir=sys.argv[4])\n"
    )
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

    report = store_folders(
        tmp_path / "in",
        Target(server.url),
        client=dask_client,
        concurrency=concurrency,
        shards=8,
        journal_dir=journals,
    )

    assert report.ok, [o.message for o in report.failed]
    assert sorted(o.path for o in report.outcomes) == sorted(files)
    assert_each_once_on_the_server(server, files)
    # Sent twice: at most what the killed run had in flight (its tasks may even have run on
    # beside the new ones, each attempt with a journal of its own).
    sent = received(server)
    assert sum(n - 1 for n in sent.values()) <= concurrency, sent.most_common(8)
