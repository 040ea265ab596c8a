"""Worklist service (UPS-RS, PS3.18 chapter 11): workitems created, read, changed, searched.

Workitem and transaction UIDs go in query strings bare (``/workitems?{uid}``,
``/workitems/{uid}?{transaction}``), as the Azure DICOM service and its own request
collection write them.
"""

from __future__ import annotations

import json
from typing import Any

from .._core.exceptions import ProtocolError
from .._core.media import DICOM_JSON
from .._core.urls import check_uid
from .._core.workitems import PROCEDURE_STEP_STATE, STATES, TRANSACTION_UID
from .._transport.transport import Transport

__all__ = ["change_state", "create", "request_cancellation", "retrieve", "update"]

JSONDict = dict[str, Any]
_SEND = {"Content-Type": DICOM_JSON}
# The reason given with a cancellation request (Reason For Cancellation, LT).
_REASON = "00741238"


def workitem_path(uid: str) -> str:
    """``/workitems/{uid}`` after checking the UID."""
    return f"/workitems/{check_uid(uid, 'workitem UID')}"


def _body(dataset: JSONDict) -> bytes:
    return json.dumps([dataset]).encode("utf-8")


async def create(transport: Transport, dataset: JSONDict, uid: str) -> None:
    """``POST /workitems?{uid}``: a new workitem (201 Created)."""
    check_uid(uid, "workitem UID")
    # Sent once: a create that may have been applied is not repeated (a second would
    # answer 409 for a workitem that does exist).
    await transport.request(
        "POST",
        "/workitems",
        query=uid,
        headers={"Accept": DICOM_JSON, **_SEND},
        body=_body(dataset),
        ok=(200, 201),
        once=True,
    )


async def retrieve(transport: Transport, uid: str) -> JSONDict:
    """``GET /workitems/{uid}``: the workitem's DICOM JSON."""
    response, body = await transport.request(
        "GET", workitem_path(uid), headers={"Accept": DICOM_JSON}
    )
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"workitem answer is not JSON: {exc}", method="GET", url=response.url
        ) from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise ProtocolError(
            "workitem answer is not one DICOM JSON dataset", method="GET", url=response.url
        )
    return data


async def update(
    transport: Transport, uid: str, dataset: JSONDict, transaction_uid: str | None
) -> None:
    """``POST /workitems/{uid}[?{transaction}]``: change attributes of a workitem."""
    query = ""
    if transaction_uid is not None:
        query = check_uid(transaction_uid, "transaction UID")
    await transport.request(
        "POST", workitem_path(uid), query=query, headers=_SEND, body=_body(dataset)
    )


async def change_state(transport: Transport, uid: str, state: str, transaction_uid: str) -> None:
    """``PUT /workitems/{uid}/state``: claim (IN PROGRESS), complete or cancel a workitem."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(sorted(STATES))}, not {state!r}")
    check_uid(transaction_uid, "transaction UID")
    dataset = {
        PROCEDURE_STEP_STATE: {"vr": "CS", "Value": [state]},
        TRANSACTION_UID: {"vr": "UI", "Value": [transaction_uid]},
    }
    await transport.request(
        "PUT", f"{workitem_path(uid)}/state", headers=_SEND, body=_body(dataset)
    )


async def request_cancellation(
    transport: Transport, uid: str, extra: JSONDict | None, reason: str | None
) -> None:
    """``POST /workitems/{uid}/cancelrequest`` (202 Accepted)."""
    dataset = dict(extra or {})
    if reason is not None:
        dataset[_REASON] = {"vr": "LT", "Value": [reason]}
    await transport.request(
        "POST",
        f"{workitem_path(uid)}/cancelrequest",
        headers=_SEND,
        body=_body(dataset),
        ok=(200, 202),
    )
