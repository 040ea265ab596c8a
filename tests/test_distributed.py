"""The engine-neutral core of sharded transfers: plans, shards run for real against the
loopback server, resume across attempts, and a merged report that counts every input once.

Engines (Dask, Ray) are not involved here: they only call ``run_shard`` somewhere.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dicomweb_async import FileOutcome
from dicomweb_async.distributed import (
    ShardReport,
    ShardSpec,
    Target,
    find_studies,
    merge_reports,
    plan_downloads,
    plan_uploads,
    run_shard,
)
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.test_bulk_upload import posts, sop_of, stored_parts

SIZE = 4096
SECRET = "token-that-must-not-leak-3f9a"


@pytest.fixture
def server(tmp_path: Path) -> LoopbackServer:
    with LoopbackServer(storage_dir=tmp_path / "server-store") as srv:
        yield srv  # type: ignore[misc]
        assert srv.errors == []


def _archive(root: Path, studies: dict[str, int]) -> dict[str, list[Path]]:
    """Folders of instances, one study per folder, ``count`` files each."""
    made = {}
    for number, (name, count) in enumerate(studies.items(), start=1):
        uid = f"1.2.826.0.1.3680043.8.498.9100{number}"
        made[uid] = write_instance_files(root / name, count, SIZE, study_uid=uid)
    return made


# -- plans -----------------------------------------------------------------------------------


def test_upload_plans_keep_studies_whole_and_are_the_same_every_time(tmp_path: Path) -> None:
    studies = _archive(tmp_path / "in", {"a": 5, "b": 3, "c": 3, "d": 1})
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    target = Target("http://127.0.0.1:1")

    plan = plan_uploads(tmp_path / "in", target, shards=2, concurrency=3)
    again = plan_uploads([tmp_path / "in"], target, shards=2, concurrency=3)

    assert plan == again and [s.shard_id for s in plan] == [s.shard_id for s in again]
    assert len(plan) == 2 and all(s.kind == "store" and s.concurrency == 3 for s in plan)
    members = [m for s in plan for m in s.members]
    assert sorted(members) == sorted(
        [str(p) for files in studies.values() for p in files] + [str(tmp_path / "in/notes.txt")]
    )
    for files in studies.values():  # no study split over two shards
        holders = {s.shard_id for s in plan for m in s.members if m in map(str, files)}
        assert len(holders) == 1
    # Largest first into the lightest: 5 | 3 + 3 + 1 (the text file is tiny).
    assert sorted(len(s.members) for s in plan) == [6, 7]
    # Another target is another plan.
    assert {
        s.shard_id for s in plan_uploads(tmp_path / "in", Target("http://x"), shards=2)
    }.isdisjoint(s.shard_id for s in plan)


def test_no_more_shards_than_studies_and_none_for_nothing(tmp_path: Path) -> None:
    _archive(tmp_path / "in", {"a": 2})
    assert len(plan_uploads(tmp_path / "in", Target("http://h"), shards=8)) == 1
    (tmp_path / "empty").mkdir()
    assert plan_uploads(tmp_path / "empty", Target("http://h"), shards=8) == []
    with pytest.raises(ValueError, match="shards"):
        plan_uploads(tmp_path / "in", Target("http://h"), shards=0)


def test_download_plans_deduplicate_and_deal_studies_out(tmp_path: Path) -> None:
    uids = ["1.2.3", "1.2.4", "1.2.3", "1.2.5", "1.2.6", "1.2.4"]
    plan = plan_downloads(uids, Target("http://h"), tmp_path, shards=3)
    assert sorted(m for s in plan for m in s.members) == ["1.2.3", "1.2.4", "1.2.5", "1.2.6"]
    assert sorted(len(s.members) for s in plan) == [1, 1, 2]
    assert plan == plan_downloads(reversed(uids), Target("http://h"), tmp_path, shards=3)


def test_specs_carry_settings_never_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMWEB_TOKEN", SECRET)
    _archive(tmp_path / "in", {"a": 1})
    target = Target("http://127.0.0.1:1", token_env="DICOMWEB_TOKEN")
    (spec,) = plan_uploads(tmp_path / "in", target, shards=1)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert SECRET.encode() not in pickle.dumps(spec)
    assert SECRET not in repr(spec) + repr(target) + str(spec)
    with pytest.raises(ValueError, match="not both"):
        Target("http://h", token_env="X", auth_factory=dict)
    monkeypatch.delenv("DICOMWEB_TOKEN")
    with pytest.raises(KeyError, match="DICOMWEB_TOKEN"):
        target.client(max_connections=1)


# -- running shards --------------------------------------------------------------------------


def test_shards_run_for_real_and_a_rerun_skips_finished_ones(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMWEB_TOKEN", SECRET)
    studies = _archive(tmp_path / "in", {"a": 4, "b": 3, "c": 2})
    files = [p for group in studies.values() for p in group]
    target = Target(server.url, token_env="DICOMWEB_TOKEN")
    plan = plan_uploads(
        tmp_path / "in", target, shards=2, concurrency=2, journal_dir=tmp_path / "j"
    )

    reports = [run_shard(spec) for spec in plan]

    merged = merge_reports(plan, reports)
    assert sorted(o.path for o in merged.outcomes) == sorted(files)
    assert {o.status for o in merged.outcomes} == {"stored"} and merged.ok
    assert Counter(stored_parts(server).values()) == Counter({1: len(files)})
    # The token went to the server, read on the "worker" from its environment.
    sent_auth = {v for r in posts(server) for k, v in r.headers if k.lower() == "authorization"}
    assert sent_auth == {f"Bearer {SECRET}"}
    for spec in plan:
        folder = tmp_path / "j" / spec.shard_id
        assert json.loads((folder / "report.json").read_text())["shard_id"] == spec.shard_id
        assert SECRET not in (folder / "report.json").read_text()

    sent = len(posts(server))
    again = [run_shard(spec) for spec in plan]
    assert all(r.reused for r in again) and len(posts(server)) == sent
    assert merge_reports(plan, again).outcomes == merged.outcomes


def test_an_attempt_resumes_from_what_others_recorded(
    server: LoopbackServer, tmp_path: Path
) -> None:
    files = _archive(tmp_path / "in", {"a": 6})["1.2.826.0.1.3680043.8.498.91001"]
    (spec,) = plan_uploads(
        tmp_path / "in", Target(server.url), shards=1, journal_dir=tmp_path / "j"
    )
    # An earlier attempt, killed, had two instances confirmed (and a torn last line).
    folder = tmp_path / "j" / spec.shard_id
    folder.mkdir(parents=True)
    done = sorted(files)[:2]
    lines = [
        json.dumps({"sop": sop_of(p), "status": "stored", "path": str(p), "size": SIZE})
        for p in done
    ]
    (folder / "earlier-attempt.jsonl").write_text("\n".join(lines) + '\n{"sop": "1.2')

    report = run_shard(spec, attempt="second")

    outcomes = {o.path: o for o in report.report.outcomes}
    assert all(outcomes[p].from_journal for p in done)
    assert all(outcomes[p].status == "stored" for p in sorted(files)[2:])
    assert sorted(stored_parts(server)) == sorted(sop_of(p) for p in sorted(files)[2:])
    # The earlier attempt's file was read, not written to.
    assert (folder / "earlier-attempt.jsonl").read_text().endswith('{"sop": "1.2')
    second = [json.loads(x) for x in (folder / "second.jsonl").read_text().splitlines()]
    assert sorted(e["sop"] for e in second) == sorted(sop_of(p) for p in sorted(files)[2:])


def test_two_attempts_of_one_shard_at_once(server: LoopbackServer, tmp_path: Path) -> None:
    files = _archive(tmp_path / "in", {"a": 12})["1.2.826.0.1.3680043.8.498.91001"]
    (spec,) = plan_uploads(
        tmp_path / "in", Target(server.url), shards=1, concurrency=2, journal_dir=tmp_path / "j"
    )
    server.latency = 0.01
    results: dict[str, ShardReport] = {}

    def attempt(name: str) -> None:
        results[name] = run_shard(spec, attempt=name)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert set(results) == {"one", "two"} and all(r.ok for r in results.values())
    # One attempt held the shard's lock and ran it; the other waited and took its report:
    # nothing was sent twice.
    ran = [name for name, r in results.items() if not r.reused]
    assert len(ran) == 1
    assert Counter(stored_parts(server).values()) == Counter({1: len(files)})
    folder = tmp_path / "j" / spec.shard_id
    entries = [json.loads(x) for x in (folder / f"{ran[0]}.jsonl").read_text().splitlines()]
    assert {e["sop"] for e in entries} == {sop_of(p) for p in files}
    assert not (folder / "active.lock").exists()  # the lock goes with its attempt
    merged = merge_reports([spec], results.values())
    assert sorted(o.path for o in merged.outcomes) == sorted(files) and merged.ok
    report = json.loads((folder / "report.json").read_text())
    assert report["attempt"] == ran[0] and len(report["outcomes"]) == len(files)


def test_a_held_lock_makes_an_attempt_wait_and_a_stale_one_does_not(
    server: LoopbackServer, tmp_path: Path
) -> None:
    _archive(tmp_path / "in", {"a": 3})
    (spec,) = plan_uploads(
        tmp_path / "in", Target(server.url), shards=1, journal_dir=tmp_path / "j"
    )
    folder = tmp_path / "j" / spec.shard_id
    folder.mkdir(parents=True)
    lock = folder / "active.lock"
    lock.write_text("another-attempt")
    released_at: list[float] = []

    def hold_then_release() -> None:
        for _ in range(10):  # renewed as a live attempt renews it, for about a second
            os.utime(lock)
            time.sleep(0.1)
        released_at.append(time.monotonic())
        lock.unlink()

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    report = run_shard(spec, lease_ttl=5)
    holder.join()
    assert report.ok and released_at
    assert min(r.started for r in posts(server)) >= released_at[0]

    # A lock nobody renews (its process died) holds an attempt only until it goes stale.
    _archive(tmp_path / "in2", {"b": 2})
    (spec2,) = plan_uploads(
        tmp_path / "in2", Target(server.url), shards=1, journal_dir=tmp_path / "j"
    )
    folder2 = tmp_path / "j" / spec2.shard_id
    folder2.mkdir(parents=True)
    dead = folder2 / "active.lock"
    dead.write_text("a-dead-attempt")
    os.utime(dead, (time.time() - 60, time.time() - 60))
    started = time.monotonic()
    assert run_shard(spec2, lease_ttl=30).ok
    assert time.monotonic() - started < 10
    assert not dead.exists()


def test_download_shards_write_every_study(server: LoopbackServer, tmp_path: Path) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.9200{n}" for n in range(1, 5)]
    for uid in uids:
        server.add_synthetic_study(uid, 3, SIZE)
    plan = plan_downloads(uids, Target(server.url), tmp_path / "out", shards=2, concurrency=2)

    merged = merge_reports(plan, [run_shard(spec) for spec in plan])

    assert merged.ok and len(merged.outcomes) == 12
    assert {o.study_instance_uid for o in merged.outcomes} == set(uids)
    assert all(o.path is not None and o.path.stat().st_size == SIZE for o in merged.outcomes)


def test_downloads_planned_from_one_search(server: LoopbackServer, tmp_path: Path) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.9210{n}" for n in range(1, 6)]
    for uid in uids:
        server.add_synthetic_study(uid, 2, SIZE)
    wanted = sorted(uids[:3])
    filters = {"StudyInstanceUID": ",".join(wanted)}

    def study_searches() -> int:
        return sum(1 for r in server.requests if r.method == "GET" and r.path == "/studies")

    assert sorted(find_studies(Target(server.url), filters)) == wanted
    plan = plan_downloads(filters, Target(server.url), tmp_path / "out", shards=8)

    assert sorted(m for spec in plan for m in spec.members) == wanted
    assert len(plan) == 3
    searched = study_searches()
    assert searched >= 2
    merged = merge_reports(plan, [run_shard(spec) for spec in plan])
    assert merged.ok and {o.study_instance_uid for o in merged.outcomes} == set(wanted)
    assert study_searches() == searched  # the shards list their own studies only


# -- merging ---------------------------------------------------------------------------------


def test_merge_counts_each_input_once_and_names_lost_shards(tmp_path: Path) -> None:
    from dicomweb_async import UploadReport

    target = Target("http://h")
    a = ShardSpec("store-a", "store", ("x.dcm", "y.dcm"), target)
    b = ShardSpec("store-b", "store", ("z.dcm",), target)
    first = UploadReport(
        [FileOutcome(Path("x.dcm"), "failed"), FileOutcome(Path("y.dcm"), "stored")]
    )
    retry = UploadReport(
        [FileOutcome(Path("x.dcm"), "stored"), FileOutcome(Path("y.dcm"), "already_stored")]
    )

    merged = merge_reports(
        [a, b],
        [ShardReport("store-a", "store", "1", first), ShardReport("store-a", "store", "2", retry)],
    )

    by_path = {str(o.path): o for o in merged.outcomes}
    assert len(merged.outcomes) == 3
    assert by_path["x.dcm"].status == "stored" and by_path["y.dcm"].status == "stored"
    assert by_path["z.dcm"].status == "failed"
    assert "store-b did not report" in (by_path["z.dcm"].message or "")
    with pytest.raises(ValueError, match="not in the plan"):
        merge_reports([b], [ShardReport("store-a", "store", "1", first)])
