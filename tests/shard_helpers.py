"""What the sharded-run tests on every engine (Dask, Ray) share: an archive of studies on
disk, the loopback server that stores them, and the checks on what it holds."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

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
