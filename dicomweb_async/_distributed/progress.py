"""Progress of a sharded run: throttled snapshots from the workers, summed on the driver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .._bulk.progress import Progress, ProgressCallback

__all__ = ["ProgressMerger", "forwarding"]

#: Seconds between two snapshots a shard sends (the last one is always sent).
INTERVAL = 0.5


def forwarding(
    send: Callable[[dict[str, Any]], None], shard_id: str, attempt: str, interval: float = INTERVAL
) -> ProgressCallback:
    """A progress callback for :func:`run_shard` that sends plain-dict snapshots onwards.

    At most one every ``interval`` seconds per shard, and always the final one, so a
    large run does not flood the engine's event channel.
    """
    last = float("-inf")

    def callback(event: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if event.final or now - last >= interval:
            last = now
            send(
                {
                    "shard": shard_id,
                    "attempt": attempt,
                    "operation": event.operation,
                    "done": event.done,
                    "failed": event.failed,
                    "skipped": event.skipped,
                    "total": event.total,
                    "bytes": event.bytes_done,
                    "final": event.final,
                }
            )

    return callback


class ProgressMerger:
    """Sum the latest snapshot of every shard into one :class:`Progress` for the caller.

    A shard that is run again (its worker died) starts a new attempt; its newer attempt's
    snapshots replace the older one's, so nothing is counted twice.

    Parameters
    ----------
    operation : {"upload", "download"}
    callback : callable or None
        The caller's progress callback.
    total : int or None
        All inputs, when the plan knows them (uploads).
    """

    def __init__(self, operation: str, callback: ProgressCallback | None, total: int | None):
        self.operation = operation
        self.callback = callback
        self.total = total
        self.started = time.monotonic()
        self._latest: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def update(self, fields: dict[str, Any]) -> None:
        """Take one shard snapshot (as sent by :func:`forwarding`) and report the sum."""
        with self._lock:
            shard, attempt = str(fields["shard"]), str(fields["attempt"])
            held = self._latest.get(shard)
            if held is not None and held[0] != attempt and held[1].get("final"):
                return  # a late snapshot of a superseded attempt
            self._latest[shard] = (attempt, fields)
            snapshot = self.snapshot()
        if self.callback is not None:
            self.callback(snapshot)

    def snapshot(self, final: bool = False) -> Progress:
        """The sum of the latest snapshots."""
        latest = [fields for _, fields in self._latest.values()]
        return Progress(
            self.operation,
            sum(int(f["done"]) for f in latest),
            sum(int(f["failed"]) for f in latest),
            sum(int(f["skipped"]) for f in latest),
            self.total,
            sum(int(f["bytes"]) for f in latest),
            time.monotonic() - self.started,
            final,
        )

    def finish(self) -> None:
        """Send the final event."""
        if self.callback is not None:
            with self._lock:
                snapshot = self.snapshot(final=True)
            self.callback(snapshot)
