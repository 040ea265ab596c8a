"""Bulk uploads (``store_folder``, ``upload_pipeline``) against real servers.

Everything here runs over real sockets against the loopback server (and, where marked by
its fixtures, the real Orthanc): every input accounted for exactly once, duplicates and
request grouping, retries that lose and repeat nothing (checked byte by byte on the server
side), resuming from a journal after a cancelled run, the concurrency bound, Azure's
45071 answers, pipelines fed by async sources with backpressure, and progress events.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import random
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pydicom
import pytest

from dicomweb_async import (
    AsyncDICOMwebClient,
    BulkTransferError,
    FailureReason,
    FileOutcome,
    Journal,
    Progress,
    UploadReport,
)
from dicomweb_async.testing import OrthancServer
from tests import bulk_fixtures
from tests.bulk_fixtures import RETRY
from tests.loopback_server import (
    BEING_CREATED,
    DUPLICATE_INSTANCE,
    LoopbackServer,
    RequestRecord,
    make_instance_bytes,
    write_instance_files,
)

SIZE = 4096
VALIDATION_FAILED = 43264
STUDY_A = "1.2.826.0.1.3680043.8.498.880001"
STUDY_B = "1.2.826.0.1.3680043.8.498.880002"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers

# Bound to module names so that pytest finds them here.
server = bulk_fixtures.server
client = bulk_fixtures.client


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def posts(server: LoopbackServer) -> list[RequestRecord]:
    return [r for r in server.requests if r.method == "POST"]


def stored_parts(
    server: LoopbackServer, refused: set[str] | frozenset[str] = frozenset()
) -> Counter[str]:
    """SOP Instance UID -> how many successful STOW requests carried it.

    A 202 answer stored some of its parts: ``refused`` names those it did not store.
    """
    return Counter(
        part.sop_uid or ""
        for r in posts(server)
        if r.status in (200, 202)
        for part in r.parts
        if r.status == 200 or part.sop_uid not in refused
    )


def by_path(report: UploadReport) -> dict[Path, FileOutcome]:
    paths = [o.path for o in report.outcomes]
    assert len(paths) == len(set(paths)), "an input was reported more than once"
    return {o.path: o for o in report.outcomes}


def assert_stored_once_and_identical(
    server: LoopbackServer, files: list[Path], refused: set[str] | frozenset[str] = frozenset()
) -> None:
    """Every file went to the server in exactly one successful request, byte for byte."""
    counts = stored_parts(server, refused)
    digests = {
        part.sop_uid: part.sha256
        for r in posts(server)
        if r.status in (200, 202)
        for part in r.parts
        if r.status == 200 or part.sop_uid not in refused
    }
    expected = {sop_of(f): sha256_file(f) for f in files}
    assert set(counts) == set(expected)
    assert all(n == 1 for n in counts.values()), counts
    assert digests == expected
    for sop, digest in expected.items():
        instance = server.get_instance(sop)
        assert instance is not None and instance.path is not None
        assert hashlib.sha256(instance.path.read_bytes()).hexdigest() == digest


def junk_files(root: Path, seed: Path) -> dict[str, Path]:
    """Inputs that are not uploadable, by the status they should get."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    text = root / "notes.txt"
    text.write_text("not a DICOM file\n" * 20)
    empty = root / "docs" / "empty.dat"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    noise = root / "docs" / "noise.bin"
    noise.write_bytes(rng.randbytes(3000))
    truncated = root / "broken" / "truncated.dcm"
    truncated.parent.mkdir(parents=True, exist_ok=True)
    truncated.write_bytes(seed.read_bytes()[:400])
    garbage = root / "broken" / "garbage-after-prefix.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + rng.randbytes(2000))
    return {
        "skipped:text": text,
        "skipped:empty": empty,
        "skipped:noise": noise,
        "failed:truncated": truncated,
        "failed:garbage": garbage,
    }


def assert_junk_reported(outcomes: dict[Path, FileOutcome], junk: dict[str, Path]) -> None:
    for key, path in junk.items():
        outcome = outcomes[path]
        assert outcome.status == key.split(":")[0], (key, outcome)
        assert outcome.message, outcome
        assert outcome.attempts == 0  # nothing was sent for it
    assert not outcomes[junk["failed:truncated"]].ok


# --------------------------------------------------------------------------------------------
# 1. Every input accounted for exactly once


@pytest.mark.parametrize("max_request_bytes", [None, 3 * SIZE])
async def test_mixed_folder_every_file_accounted_for_once(
    server: LoopbackServer,
    client: AsyncDICOMwebClient,
    tmp_path: Path,
    seed_files: list[Path],
    max_request_bytes: int | None,
) -> None:
    root = tmp_path / "in"
    good = write_instance_files(root / "a" / "b", 3, SIZE, study_uid=STUDY_A)
    good += write_instance_files(root / "a" / "c", 2, SIZE, study_uid=STUDY_B)
    good += write_instance_files(root / "deep" / "er" / "est", 2, SIZE, study_uid=STUDY_A)
    hidden = root / "a" / ".hidden.dcm"  # hidden names are inputs like any other
    shutil.move(good[0], hidden)
    good[0] = hidden
    junk = junk_files(root, seed_files[0])

    report = await client.store_folder(root, concurrency=4, max_request_bytes=max_request_bytes)

    outcomes = by_path(report)
    assert set(outcomes) == all_files(root)
    assert len(report.outcomes) == len(good) + len(junk)
    for path in good:
        outcome = outcomes[path]
        assert outcome.status == "stored", outcome
        assert outcome.sop_instance_uid == sop_of(path)
        assert outcome.size == path.stat().st_size
        assert outcome.attempts == 1
    assert_junk_reported(outcomes, junk)
    assert (len(report.stored), len(report.skipped), len(report.failed)) == (7, 3, 2)
    assert not report.ok
    with pytest.raises(BulkTransferError, match="2 of 12 files failed") as raised:
        report.raise_for_failures()
    assert raised.value.report is report
    assert report.bytes_stored == 7 * SIZE
    assert_stored_once_and_identical(server, good)


async def test_mixed_folder_against_orthanc(
    clean_orthanc: OrthancServer, tmp_path: Path, seed_files: list[Path]
) -> None:
    root = tmp_path / "in"
    targets = [root / "x" / "1.dcm", root / "x" / "y" / "2.dcm", root / "z" / "3.dcm"]
    for source, target in zip(seed_files, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    junk = junk_files(root / "z", seed_files[1])

    async with AsyncDICOMwebClient(clean_orthanc.dicomweb_url) as client:
        report = await client.store_folder(root, concurrency=3)
        study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)
        found = await client.search_for_instances(study_instance_uid=study)

    outcomes = by_path(report)
    assert set(outcomes) == all_files(root)
    for target in targets:
        assert outcomes[target].status == "stored", outcomes[target]
    assert_junk_reported(outcomes, junk)
    assert {item["00080018"]["Value"][0] for item in found} == {sop_of(p) for p in seed_files}


# --------------------------------------------------------------------------------------------
# 2. Duplicates and request grouping


async def test_second_upload_reports_already_stored(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.duplicate_policy = "conflict"
    files = write_instance_files(tmp_path / "in", 5, SIZE)
    first = await client.store_folder(tmp_path / "in", concurrency=2)
    assert [o.status for o in first.outcomes] == ["stored"] * 5

    server.reset_stats()
    second = await client.store_folder(tmp_path / "in", concurrency=2)
    assert second.ok
    outcomes = by_path(second)
    assert set(outcomes) == set(files)
    for outcome in outcomes.values():
        assert outcome.status == "already_stored", outcome
        assert outcome.reason == FailureReason.ALREADY_STORED == DUPLICATE_INSTANCE
        assert not outcome.from_journal
    assert [r.status for r in posts(server)] == [409] * 5


async def test_grouping_puts_several_instances_of_one_study_per_request(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    a = write_instance_files(root / "a", 5, SIZE, study_uid=STUDY_A)
    b = write_instance_files(root / "b", 4, SIZE, study_uid=STUDY_B)

    report = await client.store_folder(root, concurrency=2, max_request_bytes=3 * SIZE)

    assert [o.status for o in report.outcomes] == ["stored"] * 9
    requests = posts(server)
    assert sorted(len(r.parts) for r in requests) == [1, 2, 3, 3]
    for request in requests:
        studies = set()
        for part in request.parts:
            instance = server.get_instance(part.sop_uid or "")
            assert instance is not None
            studies.add(instance.study_uid)
        assert len(studies) == 1
        assert request.body_size <= 3 * SIZE + 1024  # the parts plus multipart framing
    assert_stored_once_and_identical(server, a + b)


async def test_mixed_batch_of_new_and_existing_instances(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    server.duplicate_policy = "conflict"
    root = tmp_path / "in"
    files = sorted(write_instance_files(root, 10, SIZE, study_uid=STUDY_A))
    existing = files[::3]
    first = await client.store_folder(existing)
    assert len(first.stored) == len(existing) == 4

    server.reset_stats()
    report = await client.store_folder(root, max_request_bytes=10 * SIZE)

    outcomes = by_path(report)
    assert set(outcomes) == set(files)
    for path in files:
        if path in existing:
            assert outcomes[path].status == "already_stored", outcomes[path]
            assert outcomes[path].reason == DUPLICATE_INSTANCE
        else:
            assert outcomes[path].status == "stored", outcomes[path]
            assert outcomes[path].reason is None
    (request,) = posts(server)
    assert request.status == 202
    assert len(request.parts) == 10


# --------------------------------------------------------------------------------------------
# 3. Retries lose nothing and repeat nothing


async def test_503_answers_are_retried(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = write_instance_files(tmp_path / "in", 8, SIZE)
    server.fail_next(2, 503, retry_after=0, method="POST")

    report = await client.store_folder(tmp_path / "in", concurrency=2)

    assert report.ok and len(report.stored) == 8
    assert sorted(r.status or 0 for r in posts(server)) == [200] * 8 + [503] * 2
    assert_stored_once_and_identical(server, files)


@pytest.mark.parametrize("max_request_bytes", [None, 4 * 65536])
async def test_connection_dropped_mid_body_is_retried(
    server: LoopbackServer,
    client: AsyncDICOMwebClient,
    tmp_path: Path,
    max_request_bytes: int | None,
) -> None:
    files = write_instance_files(tmp_path / "in", 8, 65536)
    server.drop_next_request_after(100_000 if max_request_bytes else 30_000, method="POST")

    report = await client.store_folder(
        tmp_path / "in", concurrency=2, max_request_bytes=max_request_bytes
    )

    assert report.ok and len(report.stored) == 8, report.summary()
    dropped = [r for r in posts(server) if r.status is None]
    assert len(dropped) == 1 and dropped[0].aborted
    assert dropped[0].parts == []  # nothing of the cut request was stored
    assert_stored_once_and_identical(server, files)


async def test_validation_error_is_not_retried_and_fails_only_its_request(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 9, SIZE, study_uid=STUDY_A))
    server.fail_next(1, 400, retry_after=None, body=b"bad request body", method="POST")

    # One sender: the first request (the first three files in walk order) gets the 400.
    report = await client.store_folder(tmp_path / "in", concurrency=1, max_request_bytes=3 * SIZE)

    outcomes = by_path(report)
    assert set(outcomes) == set(files)
    for path in files[:3]:
        assert outcomes[path].status == "failed", outcomes[path]
        assert outcomes[path].attempts == 1
        assert "400" in (outcomes[path].message or "")
    for path in files[3:]:
        assert outcomes[path].status == "stored", outcomes[path]
    assert [r.status for r in posts(server)] == [400, 200, 200]
    assert_stored_once_and_identical(server, files[3:])


async def test_transient_failures_get_one_final_pass(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 4, SIZE))
    # Four tries per request: the first two files use up eight 503s and wait for the
    # final pass, the third needs two tries, the fourth one.
    server.fail_next(10, 503, retry_after=0, method="POST")

    report = await client.store_folder(tmp_path / "in", concurrency=1)

    outcomes = by_path(report)
    assert report.ok
    assert [outcomes[p].status for p in files] == ["stored"] * 4
    assert [outcomes[p].attempts for p in files] == [5, 5, 3, 1]
    assert [r.status for r in posts(server)] == [503] * 10 + [200] * 4
    assert_stored_once_and_identical(server, files)


async def test_retries_are_bounded_by_the_policy(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 3, SIZE))
    server.fail_next(1000, 503, retry_after=0, method="POST")

    report = await client.store_folder(tmp_path / "in", concurrency=1)

    outcomes = by_path(report)
    assert [outcomes[p].status for p in files] == ["failed"] * 3
    # Four tries in the first pass, four in the final one.
    assert [outcomes[p].attempts for p in files] == [8, 8, 8]
    assert "503" in (outcomes[files[0]].message or "")
    assert [r.status for r in posts(server)] == [503] * 24
    assert server.registry() == {}


# --------------------------------------------------------------------------------------------
# 4. Resuming from the journal


def journal_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("interrupt", ["iterator", "progress"])
async def test_cancelled_run_resumes_from_the_journal(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path, interrupt: str
) -> None:
    # "conflict" makes the server refuse a second copy of an instance, so instances sent
    # again by the second run (those in flight when the first was cancelled) show as 409s
    # rather than silently stored twice.
    server.duplicate_policy = "conflict"
    server.latency = 0.03
    root = tmp_path / "in"
    files = write_instance_files(root, 40, SIZE)
    journal = tmp_path / "upload.journal"
    first: list[FileOutcome] = []

    if interrupt == "iterator":
        with anyio.CancelScope() as scope:
            async with client.upload_pipeline(root, concurrency=3, journal=journal) as outcomes:
                async for outcome in outcomes:
                    first.append(outcome)
                    if len(first) == 6:
                        scope.cancel()
        assert scope.cancelled_caught
    else:
        async with anyio.create_task_group() as tg:

            def on_progress(event: Progress) -> None:
                if event.finished >= 6:
                    tg.cancel_scope.cancel()

            async def run() -> None:
                await client.store_folder(
                    root, concurrency=3, journal=journal, progress=on_progress
                )
                pytest.fail("the upload was not cancelled")

            tg.start_soon(run)
            # Waiting here lets the cancellation reach this task, which anyio before 4.6
            # needs to count it as caught.
            await anyio.sleep_forever()
        assert tg.cancel_scope.cancelled_caught

    recorded = {str(line["sop"]) for line in journal_lines(journal)}
    assert 6 <= len(recorded) < len(files)
    assert {o.sop_instance_uid for o in first} <= recorded
    # A request whose body had reached the server when the run was cancelled is still
    # being handled there: let it finish, so that what it stores counts as the first run's.
    with anyio.fail_after(10):
        while server.in_flight:  # noqa: ASYNC110 (the count lives in the server thread)
            await anyio.sleep(0.01)
    first_run_stored = set(stored_parts(server))
    assert recorded <= first_run_stored  # only confirmed instances are recorded

    server.reset_stats()
    server.latency = 0
    second = await client.store_folder(root, concurrency=3, journal=journal)

    second_outcomes = by_path(second)
    assert set(second_outcomes) == set(files)
    assert second.ok
    from_journal = {o.sop_instance_uid for o in second.outcomes if o.from_journal}
    assert from_journal == recorded
    for outcome in second.outcomes:
        if outcome.from_journal:
            assert outcome.status == "already_stored"
        elif outcome.status == "already_stored":
            # In flight when the first run was cancelled: stored then, but never confirmed.
            assert outcome.sop_instance_uid in first_run_stored - recorded
            assert outcome.reason == DUPLICATE_INSTANCE
        else:
            assert outcome.status == "stored", outcome
    # Journaled instances were not sent again.
    resent = {p.sop_uid for r in posts(server) for p in r.parts}
    assert not resent & recorded
    # Across both runs, every instance was stored exactly once.
    assert set(stored_parts(server)).isdisjoint(first_run_stored)
    assert first_run_stored | set(stored_parts(server)) == {sop_of(f) for f in files}
    assert all(n == 1 for n in stored_parts(server).values())
    assert {str(line["sop"]) for line in journal_lines(journal)} == {sop_of(f) for f in files}


async def test_journal_with_a_torn_last_line(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    files = sorted(write_instance_files(root, 10, SIZE))
    journal = tmp_path / "upload.journal"
    first = await client.store_folder(files[:4], journal=journal)
    assert len(first.stored) == 4
    # A run killed while writing leaves half a record without a newline.
    torn_record = b'{"sop":"1.2.826.0.1.3680043.8.498.99","status":"sto'
    await anyio.Path(journal).write_bytes(await anyio.Path(journal).read_bytes() + torn_record)

    server.reset_stats()
    second = await client.store_folder(root, journal=journal)

    outcomes = by_path(second)
    assert {p for p, o in outcomes.items() if o.from_journal} == set(files[:4])
    assert {p for p, o in outcomes.items() if o.status == "stored"} == set(files[4:])
    assert {p.sop_uid for r in posts(server) for p in r.parts} == {sop_of(f) for f in files[4:]}

    raw = journal.read_bytes().splitlines()
    torn = [line for line in raw if line.startswith(b'{"sop":"1.2.826.0.1.3680043.8.498.99"')]
    assert len(torn) == 1
    parsed = [json.loads(line) for line in raw if line.strip() and line not in torn]
    assert {entry["sop"] for entry in parsed} == {sop_of(f) for f in files}

    async with Journal(journal) as reloaded:
        assert reloaded.torn_lines == 1
        assert len(reloaded) == 10
        assert all(sop_of(f) in reloaded for f in files)


# --------------------------------------------------------------------------------------------
# 5. The concurrency bound


async def test_requests_in_flight_stay_within_concurrency(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    write_instance_files(tmp_path / "in", 40, SIZE)
    server.latency = 0.05
    server.reset_stats()

    report = await client.store_folder(tmp_path / "in", concurrency=4)

    assert len(report.stored) == 40
    assert 2 <= server.max_in_flight <= 4


async def test_concurrency_above_the_connection_pool_is_refused(
    server: LoopbackServer, tmp_path: Path
) -> None:
    write_instance_files(tmp_path / "in", 2, SIZE)
    async with AsyncDICOMwebClient(server.url, max_connections=2) as client:
        with pytest.raises(ValueError, match="max_connections"):
            client.upload_pipeline(tmp_path / "in", concurrency=3)
        with pytest.raises(ValueError, match="max_connections"):
            await client.store_folder(tmp_path / "in", concurrency=3)
        with pytest.raises(ValueError, match="concurrency"):
            await client.store_folder(tmp_path / "in", concurrency=0)
        report = await client.store_folder(tmp_path / "in", concurrency=2)
    assert len(report.stored) == 2
    assert len(posts(server)) == 2


# --------------------------------------------------------------------------------------------
# 6. Azure's 45071 ("being created by another process") and other per-instance failures


def stow_body(instances: list[bytes], boundary: str) -> bytes:
    pieces = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in instances
    ]
    return b"".join(pieces) + f"--{boundary}--\r\n".encode()


def test_fail_instances_next_knob(server: LoopbackServer) -> None:
    boundary = uuid.uuid4().hex
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    first, second, third = (make_instance_bytes(2048) for _ in range(3))
    server.fail_instances_next(1)
    with httpx.Client(trust_env=False, timeout=30) as http:
        mixed = http.post(
            f"{server.url}/studies", content=stow_body([first, second], boundary), headers=headers
        )
        assert mixed.status_code == 202
        (failure,) = mixed.json()["00081198"]["Value"]
        assert failure["00081197"]["Value"] == [BEING_CREATED]
        assert len(mixed.json()["00081199"]["Value"]) == 1

        server.fail_instances_next(1, VALIDATION_FAILED)
        refused = http.post(
            f"{server.url}/studies", content=stow_body([third], boundary), headers=headers
        )
        assert refused.status_code == 409
        (failure,) = refused.json()["00081198"]["Value"]
        assert failure["00081197"]["Value"] == [VALIDATION_FAILED]

        server.fail_instances_next(5)
        server.clear_faults()
        again = http.post(
            f"{server.url}/studies", content=stow_body([third], boundary), headers=headers
        )
        assert again.status_code == 200
    assert sum(len(s) for study in server.registry().values() for s in study.values()) == 2


async def test_instances_being_created_are_retried_until_stored(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 6, SIZE))
    server.fail_instances_next(2, BEING_CREATED)

    report = await client.store_folder(tmp_path / "in", concurrency=1)

    outcomes = by_path(report)
    assert report.ok and len(report.stored) == 6
    # One sender: the first file is refused twice, then stored on its third request.
    assert [outcomes[p].attempts for p in files] == [3, 1, 1, 1, 1, 1]
    assert [r.status for r in posts(server)] == [409, 409] + [200] * 6
    assert_stored_once_and_identical(server, files)


async def test_instances_being_created_in_a_grouped_request(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 6, SIZE, study_uid=STUDY_A))
    server.fail_instances_next(2, BEING_CREATED)

    report = await client.store_folder(tmp_path / "in", concurrency=1, max_request_bytes=3 * SIZE)

    outcomes = by_path(report)
    assert report.ok and len(report.stored) == 6
    assert [outcomes[p].attempts for p in files] == [2, 2, 1, 1, 1, 1]
    requests = posts(server)
    assert [(r.status, len(r.parts)) for r in requests] == [(202, 3), (200, 2), (200, 3)]
    # Only the two refused instances were sent again.
    refused = {sop_of(p) for p in files[:2]}
    assert {p.sop_uid for p in requests[1].parts} == refused
    assert_stored_once_and_identical(server, files, refused)


async def test_instances_still_being_created_after_every_attempt_fail(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    (path,) = write_instance_files(tmp_path / "in", 1, SIZE)
    server.fail_instances_next(10, BEING_CREATED)

    report = await client.store_folder(path)

    (outcome,) = report.outcomes
    assert outcome.status == "failed"
    assert outcome.reason == BEING_CREATED
    assert outcome.attempts == RETRY.attempts
    assert [r.status for r in posts(server)] == [409] * RETRY.attempts


async def test_validation_failures_are_not_retried(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = sorted(write_instance_files(tmp_path / "in", 6, SIZE, study_uid=STUDY_A))
    server.fail_instances_next(2, VALIDATION_FAILED)

    report = await client.store_folder(tmp_path / "in", concurrency=1, max_request_bytes=3 * SIZE)

    outcomes = by_path(report)
    for path in files[:2]:
        assert outcomes[path].status == "failed", outcomes[path]
        assert outcomes[path].reason == FailureReason.VALIDATION_FAILED == VALIDATION_FAILED
        assert outcomes[path].attempts == 1
        assert str(VALIDATION_FAILED) in (outcomes[path].message or "")
    assert [outcomes[p].status for p in files[2:]] == ["stored"] * 4
    assert [(r.status, len(r.parts)) for r in posts(server)] == [(202, 3), (200, 3)]
    assert_stored_once_and_identical(server, files[2:], {sop_of(p) for p in files[:2]})
    assert server.get_instance(sop_of(files[0])) is None
    assert server.get_instance(sop_of(files[2])) is not None


# --------------------------------------------------------------------------------------------
# 7. Pipelines


async def test_outcomes_arrive_while_the_source_is_still_producing(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = write_instance_files(tmp_path / "in", 8, SIZE)
    seen = {path: anyio.Event() for path in files}
    pulled: list[Path] = []

    async def source() -> AsyncIterator[Path]:
        for path in files:
            pulled.append(path)
            yield path
            # The next file comes only after this one's outcome reached the consumer: a
            # pipeline that held outcomes back until its source ended would stall here.
            with anyio.fail_after(20):
                await seen[path].wait()

    received: list[FileOutcome] = []
    async with client.upload_pipeline(source(), concurrency=2) as outcomes:
        async for outcome in outcomes:
            assert len(pulled) == len(received) + 1
            received.append(outcome)
            seen[outcome.path].set()

    assert [o.path for o in received] == files
    assert all(o.status == "stored" for o in received)


async def test_a_consumer_that_stops_reading_stalls_the_producer(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    total, concurrency = 120, 2
    files = write_instance_files(tmp_path / "in", total, 1024)
    pulled = 0

    async def source() -> AsyncIterator[Path]:
        nonlocal pulled
        for path in files:
            pulled += 1
            yield path

    received = []
    async with client.upload_pipeline(source(), concurrency=concurrency) as outcomes:
        # Read nothing until the pipeline has come to rest.
        with anyio.fail_after(30):
            steady, last = 0, (-1, -1)
            while steady < 10:
                await anyio.sleep(0.02)
                now = (pulled, len(server.requests))
                steady = steady + 1 if now == last else 0
                last = now
        stalled_at = pulled
        async for outcome in outcomes:
            received.append(outcome)

    # Bounded by the queues (outcomes, requests) and the senders, not by the input size.
    assert stalled_at < total
    assert stalled_at <= 8 * concurrency + 4
    assert len(received) == total and all(o.status == "stored" for o in received)


async def test_leaving_the_pipeline_early_cancels_cleanly(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    write_instance_files(tmp_path / "in", 60, SIZE)
    server.latency = 0.02
    before = asyncio.all_tasks()
    journal = tmp_path / "upload.journal"

    got = []
    async with client.upload_pipeline(tmp_path / "in", concurrency=4, journal=journal) as outcomes:
        async for outcome in outcomes:
            got.append(outcome)
            break
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()

    assert len(got) == 1
    assert asyncio.all_tasks() - before == set()
    # The journal was closed and records at least the outcome handed out.
    assert got[0].sop_instance_uid in {line["sop"] for line in journal_lines(journal)}
    # The client is still usable.
    server.latency = 0
    report = await client.store_folder(tmp_path / "in", journal=journal)
    assert report.ok and len(report.outcomes) == 60


async def test_an_error_inside_the_pipeline_block_propagates_unwrapped(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    write_instance_files(tmp_path / "in", 20, SIZE)
    server.latency = 0.02
    before = asyncio.all_tasks()

    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        async with client.upload_pipeline(tmp_path / "in", concurrency=4) as outcomes:
            async for _ in outcomes:
                raise Stop
    for _ in range(5):
        await asyncio.sleep(0)

    assert asyncio.all_tasks() - before == set()


# --------------------------------------------------------------------------------------------
# 8. Progress events


def assert_monotonic(events: list[Progress]) -> None:
    assert events, "no progress events"
    for earlier, later in itertools.pairwise(events):
        assert later.done >= earlier.done
        assert later.failed >= earlier.failed
        assert later.skipped >= earlier.skipped
        assert later.bytes_done >= earlier.bytes_done
        assert later.elapsed >= earlier.elapsed
    assert [e.final for e in events] == [False] * (len(events) - 1) + [True]


async def test_progress_events_add_up_to_the_report(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path, seed_files: list[Path]
) -> None:
    server.duplicate_policy = "conflict"
    server.latency = 0.01
    root = tmp_path / "in"
    files = sorted(write_instance_files(root / "dicom", 30, SIZE))
    junk_files(root / "junk", seed_files[0])
    journal = tmp_path / "upload.journal"
    await client.store_folder(files[:5], journal=journal)  # recorded in the journal
    await client.store_folder(files[5:8])  # on the server only: 45070

    events: list[Progress] = []
    report = await client.store_folder(
        root, concurrency=2, journal=journal, progress=events.append
    )

    assert_monotonic(events)
    final = events[-1]
    assert final.operation == "upload"
    from_journal = [o for o in report.outcomes if o.from_journal]
    assert len(from_journal) == 5 and len(report.already_stored) == 8
    # Journal hits count as done, as in the report (already stored); skipped is not DICOM.
    assert final.done == len(report.stored) + len(report.already_stored) == 30
    assert final.failed == len(report.failed) == 2
    assert final.skipped == len(report.skipped) == 3
    assert final.bytes_done == report.bytes_stored == 22 * SIZE
    assert final.total == final.finished == len(report.outcomes) == 35


async def test_progress_total_is_known_once_the_scan_ends(
    server: LoopbackServer, client: AsyncDICOMwebClient, tmp_path: Path
) -> None:
    files = write_instance_files(tmp_path / "in", 10, SIZE)
    halfway = anyio.Event()
    source_done = False
    events: list[Progress] = []

    def on_progress(event: Progress) -> None:
        if event.total is not None:
            assert source_done, "total reported before the inputs were all known"
        events.append(event)

    async def source() -> AsyncIterator[Path]:
        nonlocal source_done
        for path in files[:5]:
            yield path
        with anyio.fail_after(20):
            await halfway.wait()
        for path in files[5:]:
            yield path
        source_done = True

    received = 0
    async with client.upload_pipeline(source(), progress=on_progress) as outcomes:
        async for _ in outcomes:
            received += 1
            if received == 5:
                halfway.set()

    assert_monotonic(events)
    assert events[0].total is None
    assert any(e.total == 10 and not e.final for e in events)
    assert events[-1].total == 10 and events[-1].done == 10
