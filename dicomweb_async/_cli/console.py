"""The command's standard error: progress bar or plain progress lines, messages and logs."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TextIO

from .. import Progress
from .text import megabytes, megabytes_per_second, one_line

__all__ = ["Console", "logging_to"]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Console:
    """Progress display and messages on one stream (standard error).

    On a terminal the progress is a bar redrawn in place with ``\\r``; otherwise it is a
    plain line at most every ``interval`` seconds (and always the last one), which suits
    log files and CI output. Messages and log records clear the bar before they print.

    Parameters
    ----------
    stream : text stream
    redact : callable
        Applied to every message.
    show_progress : bool
        False draws nothing for progress events (``--quiet``).
    tty : bool, optional
        Whether ``stream`` is a terminal (detected when not given).
    interval : float
        Seconds between plain progress lines.
    clock : callable
        Monotonic time source.
    """

    def __init__(
        self,
        stream: TextIO,
        redact: Callable[[str], str] = lambda text: text,
        *,
        show_progress: bool = True,
        tty: bool | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.redact = redact
        self.show_progress = show_progress
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval
        self.clock = clock
        self._last_plain = float("-inf")
        self._bar = ""  # what is drawn on the current line, if anything
        # Log records can arrive from worker threads while the event loop draws progress.
        self._lock = threading.RLock()

    # -- messages ---------------------------------------------------------------------

    def message(self, text: str) -> None:
        """Print a line, keeping the progress bar below it."""
        with self._lock:
            bar = self._bar
            self._erase()
            self.stream.write(self.redact(text) + "\n")
            if bar:
                self._draw(bar)
            self.stream.flush()

    def error(self, text: str) -> None:
        """Print ``error: text`` on one line."""
        self.close()
        self.message(f"error: {one_line(text)}")

    def close(self) -> None:
        """End a bar left on the current line, so what follows starts on a fresh one."""
        with self._lock:
            if self._bar:
                self.stream.write("\n")
                self.stream.flush()
                self._bar = ""

    # -- progress ---------------------------------------------------------------------

    def progress(self, event: Progress) -> None:
        """Receive a :class:`Progress` event (the ``progress`` callback of bulk methods)."""
        if not self.show_progress:
            return
        with self._lock:
            if self.tty:
                self._draw(self._bar_line(event, self._width()))
                if event.final:
                    self.close()
                return
            now = self.clock()
            if event.final or now - self._last_plain >= self.interval:
                self._last_plain = now
                self.stream.write(self.plain_line(event) + "\n")
                self.stream.flush()

    @staticmethod
    def _finished(event: Progress) -> str:
        total = "?" if event.total is None else str(event.total)
        unit = "files" if event.operation == "upload" else "instances"
        return f"{event.finished}/{total} {unit}"

    @classmethod
    def plain_line(cls, event: Progress) -> str:
        """One progress line for logs: counts, megabytes, rate and time."""
        return (
            f"{event.operation}: {cls._finished(event)} "
            f"({event.done} ok, {event.failed} failed, {event.skipped} skipped), "
            f"{megabytes(event.bytes_done)}, {megabytes_per_second(event.rate)}, "
            f"{event.elapsed:.1f} s"
        )

    @classmethod
    def _bar_line(cls, event: Progress, width: int) -> str:
        details = (
            f"{event.done} ok  {event.failed} failed  {event.skipped} skipped  "
            f"{megabytes(event.bytes_done)}  {megabytes_per_second(event.rate)}  "
            f"{_clock(event.elapsed)}"
        )
        text = f"{cls._finished(event)}  {details}"
        room = width - len(event.operation) - len(text) - 5
        if room >= 5:
            cells = min(room, 25)
            if event.total:
                filled = min(cells, cells * event.finished // event.total)
                bar = "#" * filled + "-" * (cells - filled)
            else:
                # Unknown total: a marker that moves as inputs finish.
                spot = event.finished % cells
                bar = "-" * spot + "#" + "-" * (cells - spot - 1)
            text = f"[{bar}] {text}"
        return f"{event.operation} {text}"[: max(width - 1, 1)]

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            columns = 0
        if columns <= 0:
            env = os.environ.get("COLUMNS", "")
            columns = int(env) if env.isdigit() else 80
        return columns

    def _draw(self, line: str) -> None:
        pad = max(len(self._bar) - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._bar = line

    def _erase(self) -> None:
        if self._bar:
            self.stream.write("\r" + " " * len(self._bar) + "\r")
            self._bar = ""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _ConsoleHandler(logging.Handler):
    """Sends log records through the console, so they neither break nor leak anything."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record))
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def logging_to(console: Console, verbose: bool) -> Iterator[None]:
    """Route the package's log records (and, with ``verbose``, warnings) to the console.

    Parameters
    ----------
    console : Console
    verbose : bool
        True logs at debug level, with one line per HTTP request, and shows warnings;
        False shows errors only and silences warnings.
    """
    level = logging.DEBUG if verbose else logging.ERROR
    targets = [logging.getLogger("dicomweb_async")]
    if verbose:
        # One line per HTTP request (method, URL, status); httpx never logs header values.
        targets += [logging.getLogger("httpx"), logging.getLogger("py.warnings")]
    handler = _ConsoleHandler(console, level)
    saved = [(log, log.level, log.propagate) for log in targets]
    for log in targets:
        log.addHandler(handler)
        log.setLevel(logging.INFO if log.name == "httpx" else level)
        # Without a handler of ours, Python's last-resort handler would print the library's
        # retry warnings bare, which would break the one-line error contract.
        log.propagate = False
    with warnings.catch_warnings():
        if verbose:
            logging.captureWarnings(True)
        else:
            # Files that fail are reported in the summary with their reason; pydicom's
            # warnings about the same damaged headers would only clutter the output.
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.captureWarnings(False)
            for log, old_level, old_propagate in saved:
                log.removeHandler(handler)
                log.setLevel(old_level)
                log.propagate = old_propagate
