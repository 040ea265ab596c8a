"""What a bulk retrieval asks for in one request, and what to do when it brings less.

Downloads and copies fetch a whole series, or single instances, per WADO-RS request. An
answer can break off after some of its instances arrived; :func:`after_answer` decides,
for both, whether to ask again (for what is missing), one instance at a time, later (the
final pass), or not at all.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from .._core.exceptions import DICOMwebError
from .._core.retry import RetryPolicy
from .._core.urls import instance_path, series_path

__all__ = ["FetchUnit", "Next", "after_answer"]

logger = logging.getLogger("dicomweb_async")


@dataclass(frozen=True)
class FetchUnit:
    """One request: a whole series, or one instance."""

    study: str
    series: str
    sops: tuple[str, ...]  # the instances expected in the answer
    whole_series: bool

    @property
    def path(self) -> str:
        """The resource asked for."""
        if self.whole_series:
            return series_path(self.study, self.series)
        return instance_path(self.study, self.series, self.sops[0])

    def singles(self, sops: Sequence[str]) -> list[FetchUnit]:
        """One request per instance of ``sops``."""
        return [FetchUnit(self.study, self.series, (sop,), False) for sop in sops]

    def only(self, sops: tuple[str, ...]) -> FetchUnit:
        """The same request, expecting only ``sops``."""
        return FetchUnit(self.study, self.series, sops, self.whole_series)


class Next(enum.Enum):
    """What to do about the instances an answer did not bring."""

    AGAIN = "ask for the missing ones with the same request"
    SINGLES = "ask for each missing one alone"
    DEFER = "leave them to the final pass"
    FAIL = "report them failed"


async def after_answer(
    retry: RetryPolicy,
    unit: FetchUnit,
    error: DICOMwebError | OSError | None,
    *,
    answered: bool,
    rounds: int,
    started: float,
    got_some: bool,
    missing: int,
    final: bool,
    split_on_failure: bool = False,
) -> Next:
    """Decide what to do about ``missing`` instances (more than none) of ``unit``.

    The transport retries a request until an answer starts; an answer cut off after that
    (transient, ``answered``) is asked for again here, after the policy's delay, up to its
    tries and deadline: the same request, or one per instance once some arrived (asking
    for the series again would bring those twice). Past that, a transient failure waits
    for the final pass, unless this is it. ``split_on_failure`` asks for each instance
    alone after any other error, so that one bad instance fails alone.
    """
    transient = error is not None and retry.is_transient(error)
    if transient and answered and rounds < retry.attempts:
        delay = retry.delay(rounds)
        if retry.within_deadline(time.monotonic() - started, delay):
            logger.warning(
                "GET %s broke off (%s); retry %d in %.2fs", unit.path, error, rounds, delay
            )
            await anyio.sleep(delay)
            return Next.SINGLES if got_some and missing > 1 else Next.AGAIN
    if transient and not final and retry.attempts > 1:
        return Next.DEFER
    if split_on_failure and error is not None and not transient and missing > 1:
        return Next.SINGLES
    return Next.FAIL
