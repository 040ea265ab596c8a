"""An upload killed mid-way (SIGKILL, no chance to clean up) and run again with its journal
finishes with every instance stored exactly once and nothing missing."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loopback_server import LoopbackServer, write_instance_files

COUNT = 120


def _upload(server: LoopbackServer, folder: Path, journal: Path) -> subprocess.Popen[str]:
    argv = ["--url", server.url, "-q", "upload", str(folder), "--concurrency", "4"]
    return subprocess.Popen(
        [sys.executable, "-m", "dicomweb_async", *argv, "--journal", str(journal)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _journal_lines(journal: Path) -> int:
    return len(journal.read_bytes().splitlines()) if journal.exists() else 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_upload_resumes_without_losing_or_duplicating(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    files = write_instance_files(folder, COUNT, 64 * 1024, study_uid="1.2.826.0.1.99.7")
    sops = {p.stem for p in files}
    journal = tmp_path / "upload.jsonl"
    # "conflict" answers a second copy of an instance with 409/45070 (as Azure does)
    # instead of storing it again, so the server's log shows any duplicate.
    with LoopbackServer(duplicate_policy="conflict", latency=0.02) as server:
        first = _upload(server, folder, journal)
        deadline = time.monotonic() + 60
        while _journal_lines(journal) < COUNT // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        recorded_before = _journal_lines(journal)
        assert COUNT // 4 <= recorded_before < COUNT

        server.latency = 0.0
        second = _upload(server, folder, journal)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, out + err

        stored = collections.Counter(
            part.sop_uid
            for request in server.requests
            if request.method == "POST" and request.status == 200
            for part in request.parts
        )
        registry = server.registry()
        assert server.errors == []

    # Nothing missing: every file's instance is on the server.
    on_server = {sop for series in registry.values() for s in series.values() for sop in s}
    assert on_server == sops
    # Nothing duplicated: each instance was stored by exactly one request.
    assert set(stored) == sops
    assert max(stored.values()) == 1
    # The journal now records every instance; a kill can tear at most the line being
    # written, which loading skips.
    entries, torn = [], 0
    for line in journal.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            torn += 1
    assert torn <= 1
    assert {e["sop"] for e in entries} == sops
    # The second run accounts for every file: those the journal had, those sent again
    # because the kill came before they were recorded (the server already had them), and
    # the rest.
    rows = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s*(stored|already stored|total)\s+(\d+)", out, re.M)
    }
    assert rows["total"] == COUNT
    assert rows["stored"] + rows["already stored"] == COUNT
    assert rows["already stored"] >= recorded_before
