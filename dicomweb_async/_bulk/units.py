"""What a bulk retrieval lists, asks for in one request, and does when it brings less.

Downloads and copies take the same studies (:data:`StudySources`), list each one the
same way (:func:`list_study`), and fetch a whole series, or single instances, per WADO-RS
request (:func:`units_for`). An answer can break off after some of its instances
arrived; :func:`after_answer` decides, for both, whether to ask again (for what is
missing), one instance at a time, later (the final pass), or not at all.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import anyio

from .._core.datasets import first_value
from .._core.exceptions import DICOMwebError
from .._core.retry import RetryPolicy
from .._core.urls import check_uid, instance_path, series_path
from .._services import qido as _qido
from .._transport.transport import Transport

__all__ = [
    "FetchUnit",
    "Next",
    "StudySources",
    "after_answer",
    "instance_uids",
    "iter_studies",
    "list_study",
    "units_for",
]

logger = logging.getLogger("dicomweb_async")

#: Studies to fetch: UIDs, or an (async) iterable of them.
StudySources = str | Iterable[str] | AsyncIterable[str]

_STUDY_TAG = "0020000D"
_SERIES_TAG = "0020000E"
_SOP_TAG = "00080018"


async def iter_studies(studies: StudySources) -> AsyncIterator[str]:
    """The UIDs of ``studies``: one, a list of them, or an async iterable of them."""
    if isinstance(studies, str):
        yield studies
    elif isinstance(studies, AsyncIterable):
        async for uid in studies:
            yield uid
    else:
        for uid in studies:
            yield uid


async def list_study(
    transport: Transport, study: str, series: str | None = None
) -> dict[str, list[str]]:
    """Series -> SOP Instance UIDs of ``study`` (of one ``series``), by one QIDO-RS search.

    Every page is fetched. Entries of other studies or series are left out, with a
    warning: a server that ignores the study in a search path answers with every
    instance it has, and taken as they come, one study's download would fetch the whole
    archive.

    Raises
    ------
    DICOMwebError
        If the search fails.
    ValueError, TypeError
        If ``study`` is not a UID.
    """
    check_uid(study, "StudyInstanceUID")
    params = _qido.SearchParams("instances", study, series)
    listing = await _qido.search(transport, params, get_remaining=True)
    by_series: dict[str, list[str]] = {}
    strays = 0
    for item in listing:
        if first_value(item, _STUDY_TAG) not in (None, study) or (
            series is not None and first_value(item, _SERIES_TAG) not in (None, series)
        ):
            strays += 1
            continue
        found_series, sop = first_value(item, _SERIES_TAG), first_value(item, _SOP_TAG)
        if found_series and sop:
            by_series.setdefault(found_series, []).append(sop)
    if strays:
        logger.warning(
            "the listing of study %s held %d instance(s) of other studies or series; "
            "the server seems to ignore the study in the search path, they are left out",
            study,
            strays,
        )
    return by_series


def units_for(study: str, series: str, missing: Sequence[str], *, whole: bool) -> list[FetchUnit]:
    """The requests for ``missing`` instances of a series: one for the series if ``whole``
    (and there is more than one), else one each."""
    if whole and len(missing) > 1:
        return [FetchUnit(study, series, tuple(missing), True)]
    return [FetchUnit(study, series, (sop,), False) for sop in missing]


def instance_uids(listing: dict[str, list[str]]) -> set[str]:
    """Every SOP Instance UID of a :func:`list_study` answer."""
    return {sop for sops in listing.values() for sop in sops}


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
