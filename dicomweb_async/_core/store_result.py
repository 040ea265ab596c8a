"""STOW-RS responses parsed into per-instance outcomes (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .datasets import dataset_from_json, first_value
from .exceptions import ProtocolError, StoreFailedError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["FailureReason", "StoreOutcome", "StoreResult", "parse_store_response"]

_RETRIEVE_URL = "00081190"
_FAILED_SEQ = "00081198"
_REFERENCED_SEQ = "00081199"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_FAILED_ATTRIBUTES = "00741048"
_ERROR_COMMENT = "00000902"


class FailureReason:
    """FailureReason (0008,1197) and WarningReason (0008,1196) codes seen from servers."""

    PROCESSING_FAILURE = 272
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 45063
    VALIDATION_FAILED = 43264
    STUDY_UID_MISMATCH = 43265
    ALREADY_STORED = 45070
    BEING_CREATED = 45071


@dataclass(frozen=True)
class StoreOutcome:
    """What the server said about one instance of a STOW-RS request.

    Attributes
    ----------
    sop_class_uid : str or None
    sop_instance_uid : str or None
    reason : int or None
        FailureReason for failed instances, WarningReason for warnings, else None.
    retrieve_url : str or None
        Where a stored instance can be retrieved.
    error_comments : tuple of str
        ErrorComment values from FailedAttributesSequence, if any.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int | None = None
    retrieve_url: str | None = None
    error_comments: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreResult:
    """The parsed answer to a STOW-RS request.

    Attributes
    ----------
    status_code : int
        200 (all stored), 202 (some failed or warnings) or 409 (none stored), or
        another status a server chose.
    json : dict
        The response body as DICOM JSON (empty if the server sent none); also available
        as a pydicom Dataset through :attr:`dataset`.
    stored : list of StoreOutcome
        Instances in ReferencedSOPSequence.
    failed : list of StoreOutcome
        Instances in FailedSOPSequence, with their FailureReason.
    warnings : list of StoreOutcome
        Stored instances that carry a WarningReason.
    retrieve_url : str or None
        The study's RetrieveURL, if given.
    """

    status_code: int
    json: dict[str, Any] = field(default_factory=dict, repr=False)
    stored: list[StoreOutcome] = field(default_factory=list)
    failed: list[StoreOutcome] = field(default_factory=list)
    warnings: list[StoreOutcome] = field(default_factory=list)
    retrieve_url: str | None = None

    @cached_property
    def dataset(self) -> Dataset:
        """The response as a pydicom Dataset (built on first use; empty if no body)."""
        return dataset_from_json(self.json or {}, "STOW-RS response")

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed and self.status_code < 300

    def raise_for_failures(self) -> StoreResult:
        """Raise :class:`StoreFailedError` if any instance failed; else return self."""
        if not self.ok:
            reasons = sorted({str(f.reason) for f in self.failed})
            detail = f" (FailureReason {', '.join(reasons)})" if reasons else ""
            raise StoreFailedError(
                f"{len(self.failed)} instance(s) not stored, {len(self.stored)} stored, "
                f"status {self.status_code}{detail}",
                result=self,
            )
        return self


def _items(obj: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = obj.get(tag)
    if element is None:
        return []
    values = element.get("Value", []) if isinstance(element, Mapping) else None
    if not isinstance(values, list) or not all(isinstance(v, Mapping) for v in values):
        raise ProtocolError(
            f"STOW-RS response: ({tag[:4]},{tag[4:]}) is not a DICOM JSON sequence"
        )
    return values


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _outcome(item: Mapping[str, Any], reason_tag: str) -> StoreOutcome:
    comments: list[str] = []
    for attr in _items(item, _FAILED_ATTRIBUTES):
        comment = first_value(attr, _ERROR_COMMENT)
        if comment:
            comments.append(str(comment))
    return StoreOutcome(
        sop_class_uid=first_value(item, _SOP_CLASS),
        sop_instance_uid=first_value(item, _SOP_INSTANCE),
        reason=_int_or_none(first_value(item, reason_tag)),
        retrieve_url=first_value(item, _RETRIEVE_URL),
        error_comments=tuple(comments),
    )


def parse_store_response(status_code: int, body: bytes) -> StoreResult:
    """Parse a STOW-RS response body.

    Parameters
    ----------
    status_code : int
        The HTTP status of the response.
    body : bytes
        The DICOM JSON body (may be empty).

    Returns
    -------
    StoreResult

    Raises
    ------
    ProtocolError
        If the body is not a DICOM JSON object.
    """
    if not body.strip():
        return StoreResult(status_code=status_code)
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"STOW-RS response is not JSON: {exc}") from None
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        raise ProtocolError("STOW-RS response is not a DICOM JSON object")
    stored = [_outcome(i, _WARNING_REASON) for i in _items(obj, _REFERENCED_SEQ)]
    warnings = [o for o in stored if o.reason is not None]
    failed = [_outcome(i, _FAILURE_REASON) for i in _items(obj, _FAILED_SEQ)]
    return StoreResult(
        status_code=status_code,
        json=obj,
        stored=stored,
        failed=failed,
        warnings=warnings,
        retrieve_url=first_value(obj, _RETRIEVE_URL),
    )
