"""The shape every bulk report shares: one outcome per input, counted by status."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .._core.exceptions import BulkTransferError
from .pipeline import Pipeline

__all__ = ["Outcome", "Report", "run_to_report"]


class Outcome(Protocol):
    """What a report needs of an outcome."""

    @property
    def status(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def message(self) -> str | None: ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome)
ReportT = TypeVar("ReportT", bound="Report[Any]")


@dataclass
class Report(Generic[OutcomeT]):
    """Every input of a bulk transfer with its outcome.

    Attributes
    ----------
    outcomes : list
        One per input, in completion order.
    elapsed : float
        Seconds the transfer took.
    """

    outcomes: list[OutcomeT] = field(default_factory=list)
    elapsed: float = 0.0

    #: The status of outcomes whose bytes moved in this run.
    _moved = ""

    def _with(self, status: str) -> list[OutcomeT]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[OutcomeT]:
        """Inputs that could not be transferred."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def _moved_bytes(self) -> int:
        return sum(o.size for o in self._with(self._moved))

    def _totals(self) -> str:
        moved = self._moved_bytes()
        rate = moved / self.elapsed / 1e6 if self.elapsed > 0 else 0.0
        return f"{moved / 1e6:.1f} MB in {self.elapsed:.2f} s ({rate:.1f} MB/s)"

    def _failure_message(self, failed: Sequence[OutcomeT]) -> str:
        raise NotImplementedError

    def raise_for_failures(self: ReportT) -> ReportT:
        """Raise :class:`BulkTransferError` if anything failed; else return self."""
        failed = self.failed
        if failed:
            raise BulkTransferError(self._failure_message(failed), report=self)
        return self


async def run_to_report(pipeline: Pipeline[OutcomeT], report: ReportT) -> ReportT:
    """Run ``pipeline`` to the end, collecting its outcomes into ``report``."""
    started = time.perf_counter()
    async with pipeline as outcomes:
        async for outcome in outcomes:
            report.outcomes.append(outcome)
    report.elapsed = time.perf_counter() - started
    return report
