"""When and how long to wait before retrying a request (no I/O)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from .exceptions import HTTPStatusError, MultipartError, TransportError

__all__ = ["AttemptCounter", "RetryPolicy", "count_attempts", "note_attempt", "parse_retry_after"]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures with jittered exponential backoff.

    Only requests that can be sent again unchanged are retried: idempotent methods, and
    POSTs whose body this package can replay from its sources (files are re-read).

    Parameters
    ----------
    attempts : int
        Total tries, the first included; 1 disables retries (and the final pass of
        bulk transfers).
    statuses : frozenset of int
        Response statuses that are worth another try.
    backoff : float
        Base delay in seconds; try ``n`` waits up to ``backoff * 2**(n-1)``.
    max_backoff : float
        Upper bound of one computed delay.
    max_retry_after : float
        Upper bound of a delay the server asks for with Retry-After.
    retry_connection_errors : bool
        Also retry when the connection failed or broke before a response arrived.
    deadline : float or None
        Seconds one request may take from its first try, waits included: no retry
        starts a wait that would end after it. None: only ``attempts`` bounds it.

    Notes
    -----
    Bulk operations (``store_folder``, ``download_studies``, ``copy_studies`` and their
    pipelines) use :meth:`for_bulk` unless given a policy: one instance more or less
    does not matter to an interactive call, but a migration that needs a second pass by
    hand is not done.
    """

    attempts: int = 3
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    retry_connection_errors: bool = True
    deadline: float | None = None

    @classmethod
    def for_bulk(cls, attempts: int = 8, deadline: float | None = 900.0) -> RetryPolicy:
        """The patient policy of bulk transfers.

        Eight tries with backoff from 0.5 s doubling up to 15 s, Retry-After honoured
        (up to 120 s), and at most 15 minutes per request. With one request in five
        refused, all eight tries of one fail about once in 400,000 requests.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        return cls(attempts=attempts, backoff=0.5, max_backoff=15.0, deadline=deadline)

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a request that ended in ``exc`` may succeed if sent again later.

        Broken and timed-out connections and bodies cut off early (when
        ``retry_connection_errors``) and the statuses in ``statuses``; never a refusal
        of the request itself or a malformed answer.
        """
        if isinstance(exc, TransportError) or (isinstance(exc, MultipartError) and exc.truncated):
            return self.retry_connection_errors
        return isinstance(exc, HTTPStatusError) and exc.status_code in self.statuses

    def within_deadline(self, elapsed: float, delay: float) -> bool:
        """Whether a wait of ``delay`` s after ``elapsed`` s still ends before the deadline."""
        return self.deadline is None or elapsed + delay <= self.deadline

    def should_retry_status(self, attempt: int, status_code: int) -> bool:
        """Whether ``attempt`` (1-based) ended with a status worth retrying."""
        return attempt < self.attempts and status_code in self.statuses

    def should_retry_error(self, attempt: int) -> bool:
        """Whether ``attempt`` (1-based) ended with a connection error worth retrying."""
        return attempt < self.attempts and self.retry_connection_errors

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after the failed ``attempt`` (1-based)."""
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return min(asked, self.max_retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 60))
        # Full jitter spreads clients that failed together instead of retrying in lockstep.
        return random.uniform(ceiling / 2, ceiling)


class AttemptCounter:
    """How many times requests were sent while it was counting (see :func:`count_attempts`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


_COUNTER: ContextVar[AttemptCounter | None] = ContextVar("dicomweb_async_attempts", default=None)


@contextlib.contextmanager
def count_attempts() -> Iterator[AttemptCounter]:
    """Count the tries of the requests sent by this task inside the block, retries included.

    Bulk reports say how many requests carried each item; the transport's own retries
    happen below the code that makes the report, so they are counted through the context.
    """
    counter = AttemptCounter()
    token = _COUNTER.set(counter)
    try:
        yield counter
    finally:
        _COUNTER.reset(token)


def note_attempt() -> None:
    """Called by the transport for every try of a request."""
    counter = _COUNTER.get()
    if counter is not None:
        counter.value += 1
