"""Worklist (UPS-RS, PS3.18 chapter 11) data: workitem states and datasets, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .datasets import first_value

__all__ = [
    "CANCELED",
    "COMPLETED",
    "IN_PROGRESS",
    "PROCEDURE_STEP_STATE",
    "SCHEDULED",
    "STATES",
    "TRANSACTION_UID",
    "Workitem",
]

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
CANCELED = "CANCELED"
#: The values of Procedure Step State (0074,1000).
STATES = frozenset({SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED})

PROCEDURE_STEP_STATE = "00741000"
TRANSACTION_UID = "00081195"
SOP_INSTANCE_UID = "00080018"


@dataclass(frozen=True)
class Workitem:
    """A UPS workitem as the server returned it.

    Attributes
    ----------
    uid : str
        Its SOP Instance UID.
    state : str or None
        Procedure Step State: ``SCHEDULED``, ``IN PROGRESS``, ``COMPLETED`` or ``CANCELED``.
    dataset : dict
        The whole workitem in DICOM JSON (the server never returns its Transaction UID).
    """

    uid: str
    state: str | None
    dataset: dict[str, Any]

    @classmethod
    def from_json(cls, item: Mapping[str, Any], uid: str | None = None) -> Workitem:
        """Read a workitem from its DICOM JSON (``uid`` when the dataset lacks its own)."""
        found = first_value(item, SOP_INSTANCE_UID) or uid or ""
        return cls(found, first_value(item, PROCEDURE_STEP_STATE), dict(item))

    def value(self, tag: str) -> str | None:
        """The first value of an attribute (8 hex digits), as text."""
        return first_value(self.dataset, tag)
