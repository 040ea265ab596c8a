"""Progress events of bulk transfers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "ProgressCallback", "ProgressTracker"]


@dataclass(frozen=True)
class Progress:
    """A snapshot of a bulk transfer.

    Attributes
    ----------
    operation : str
        ``"upload"`` or ``"download"``.
    done : int
        Instances finished successfully (stored, already there, or written to disk).
    failed : int
        Instances that failed.
    skipped : int
        Inputs skipped: not DICOM (uploads), or already complete on disk (downloads).
        Instances an earlier upload's journal records count as done.
    total : int or None
        All instances, once known (uploads know it when the scan ends).
    bytes_done : int
        Bytes of instances finished so far.
    elapsed : float
        Seconds since the transfer started.
    final : bool
        True for the last event of a transfer.
    """

    operation: str
    done: int
    failed: int
    skipped: int
    total: int | None
    bytes_done: int
    elapsed: float
    final: bool = False

    @property
    def rate(self) -> float:
        """Average bytes per second so far."""
        return self.bytes_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def finished(self) -> int:
        """Inputs dealt with in any way."""
        return self.done + self.failed + self.skipped


#: Receives :class:`Progress` events; called on the event loop, so keep it quick.
ProgressCallback = Callable[[Progress], None]


class ProgressTracker:
    """Counts outcomes and reports them to a callback, at most every ``interval`` seconds."""

    def __init__(
        self,
        operation: str,
        callback: ProgressCallback | None,
        *,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.operation = operation
        self.callback = callback
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = float("-inf")
        self.done = self.failed = self.skipped = 0
        self.bytes_done = 0
        self.total: int | None = None

    def snapshot(self, final: bool = False) -> Progress:
        """The current state as a :class:`Progress`."""
        return Progress(
            self.operation,
            self.done,
            self.failed,
            self.skipped,
            self.total,
            self.bytes_done,
            self.clock() - self.started,
            final,
        )

    def _emit(self, force: bool = False, final: bool = False) -> None:
        if self.callback is None:
            return
        now = self.clock()
        if force or now - self._last >= self.interval:
            self._last = now
            self.callback(self.snapshot(final))

    def add(self, *, done: int = 0, failed: int = 0, skipped: int = 0, nbytes: int = 0) -> None:
        """Count finished inputs and report."""
        self.done += done
        self.failed += failed
        self.skipped += skipped
        self.bytes_done += nbytes
        self._emit()

    def set_total(self, total: int) -> None:
        """The number of inputs is now known."""
        self.total = total
        self._emit(force=True)

    def finish(self) -> Progress:
        """Report the final state (always delivered) and return it."""
        self._emit(force=True, final=True)
        return self.snapshot(final=True)
