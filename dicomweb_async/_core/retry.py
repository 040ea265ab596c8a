"""When and how long to wait before retrying a request (no I/O)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


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
        Total tries, the first included; 1 disables retries.
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
    """

    attempts: int = 3
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    retry_connection_errors: bool = True

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
