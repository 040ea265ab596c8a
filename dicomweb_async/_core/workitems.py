"""Worklist (UPS-RS, PS3.18 chapter 11) data: workitem states and datasets, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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
    "dicom_json",
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

_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")


def dicom_json(value: Any, what: str) -> dict[str, Any]:
    """A DICOM JSON dataset from a pydicom Dataset, a DICOM JSON mapping, or a one-item list.

    Raises
    ------
    TypeError
        If ``value`` is none of those.
    ValueError
        If a key is not a tag of 8 hex digits (a keyword such as ``"PatientName"``), or
        a value is not a DICOM JSON attribute (a mapping with ``vr``).
    """
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != 1:
            raise ValueError(f"{what}: one dataset, not {len(value)}")
        value = value[0]
    if isinstance(value, Mapping):
        data = dict(value)
    else:
        from pydicom.dataset import Dataset

        if not isinstance(value, Dataset):
            raise TypeError(
                f"{what} must be a pydicom Dataset or a DICOM JSON mapping, not "
                f"{type(value).__name__}"
            )
        data = value.to_json_dict()
    for key, attribute in data.items():
        if not isinstance(key, str) or not _TAG_RE.fullmatch(key):
            raise ValueError(f"{what}: key {key!r} is not a DICOM JSON tag (8 hex digits)")
        if not isinstance(attribute, Mapping) or "vr" not in attribute:
            raise ValueError(f"{what}[{key!r}] is not a DICOM JSON attribute with a vr")
    return data


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
