"""An append-only record of instances the server has confirmed, for resuming bulk runs.

One JSON object per line. A line is written only after the server confirmed the instance,
and each line goes to the file in a single ``write`` call, so a run that is cancelled or
killed leaves at most one torn last line, which loading ignores. Re-running the same
upload with the same journal skips every instance recorded in it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

__all__ = ["Journal", "JournalEntry"]


@dataclass(frozen=True)
class JournalEntry:
    """One confirmed instance.

    Attributes
    ----------
    sop_instance_uid : str
    status : str
        ``stored`` or ``already_stored`` for uploads, ``downloaded`` for downloads.
    path : str
        The local file.
    size : int
    """

    sop_instance_uid: str
    status: str
    path: str
    size: int


class Journal:
    """Which instances a previous run already finished.

    Parameters
    ----------
    path : str or os.PathLike
        The journal file; created when missing, appended to otherwise.
    also : iterable of str or os.PathLike
        Other journals, only read: what they record counts as finished too. Two runs that
        may overlap (two attempts of one shard) each append to a file of their own and
        read each other's.

    Notes
    -----
    Use as ``async with Journal(path) as journal:`` or pass the path to the bulk methods,
    which open and close it themselves.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, also: Iterable[str | os.PathLike[str]] = ()
    ):
        self.path = Path(path)
        self.also = [Path(p) for p in also if Path(p) != self.path]
        self._done: dict[str, JournalEntry] = {}
        self._fd: int | None = None
        self._lock = anyio.Lock()
        self.torn_lines = 0

    def __repr__(self) -> str:
        return f"<Journal {self.path} entries={len(self._done)}>"

    def __len__(self) -> int:
        return len(self._done)

    def _read(self, path: Path) -> int:
        """Take the records of ``path``; return how many lines were torn."""
        torn = 0
        if path.exists():
            with path.open("rb") as f:
                for raw in f:
                    try:
                        obj: Any = json.loads(raw)
                        entry = JournalEntry(
                            str(obj["sop"]), str(obj["status"]), str(obj["path"]), int(obj["size"])
                        )
                    except (ValueError, KeyError, TypeError):
                        # A run killed mid-write leaves a partial last line; skip it.
                        torn += 1
                        continue
                    self._done[entry.sop_instance_uid] = entry
        return torn

    def _load(self) -> None:
        for other in self.also:
            self._read(other)
        self.torn_lines = self._read(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self.torn_lines:
            # Start on a fresh line so the next record is not glued to a torn one.
            os.write(self._fd, b"\n")

    async def open(self) -> Journal:
        """Load the existing records and open the file for appending."""
        if self._fd is None:
            await anyio.to_thread.run_sync(self._load)
        return self

    def get(self, sop_instance_uid: str) -> JournalEntry | None:
        """The record for an instance, if a previous run finished it."""
        return self._done.get(sop_instance_uid)

    def __contains__(self, sop_instance_uid: object) -> bool:
        return sop_instance_uid in self._done

    def _write(self, lines: bytes) -> None:
        assert self._fd is not None
        view = memoryview(lines)
        while view:
            view = view[os.write(self._fd, view) :]

    async def record(self, entries: Iterable[JournalEntry]) -> None:
        """Append confirmed instances (one line each) and remember them."""
        batch = list(entries)
        if not batch:
            return
        if self._fd is None:
            raise RuntimeError("journal is not open")
        now = time.time()
        lines = b"".join(
            json.dumps(
                {
                    "sop": e.sop_instance_uid,
                    "status": e.status,
                    "path": e.path,
                    "size": e.size,
                    "time": round(now, 3),
                },
                separators=(",", ":"),
            ).encode("utf-8")
            + b"\n"
            for e in batch
        )
        async with self._lock:
            # Shielded: a record the server confirmed must reach the file even when the
            # run is being cancelled, or a re-run would send it again.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._write, lines)
        for e in batch:
            self._done[e.sop_instance_uid] = e

    async def aclose(self) -> None:
        """Flush the journal to stable storage and close it."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_sync_and_close, fd)

    async def __aenter__(self) -> Journal:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
