"""The worklist (UPS-RS) of the emulator, with the state machine of PS3.4 annex CC.

States and transitions:

* a workitem is created ``SCHEDULED`` (creating it in any other state: 400; again: 409);
* ``SCHEDULED`` to ``IN PROGRESS`` by a state change that brings a Transaction UID, which
  the workitem keeps (and never shows);
* ``IN PROGRESS`` to ``COMPLETED`` or ``CANCELED`` by a state change with that same UID;
* a cancellation request cancels a ``SCHEDULED`` workitem at once and is noted on one
  ``IN PROGRESS`` (its performer decides).

Status codes (PS3.18 11.4-11.8): 400 for a request the current state does not allow (a
missing or wrong Transaction UID, ``SCHEDULED`` straight to ``COMPLETED``, an update of a
claimed workitem without its UID, and, as 11.6.3 lists it, an update of a ``COMPLETED`` or
``CANCELED`` one); 404 for an unknown workitem; 409 for a state change or cancellation
request that the state is inconsistent with (the workitem already final, or already
``IN PROGRESS``) and for a second create. Updates cannot change the state or the
Transaction UID (400).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ..._core.media import DICOM_JSON
from ..._core.workitems import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    PROCEDURE_STEP_STATE,
    SCHEDULED,
    STATES,
    TRANSACTION_UID,
)
from .negotiation import check_json_accept, check_uid
from .store import EmulatorState
from .wire import Context, HttpError, Request, Response, json_response, read_json

__all__ = ["WorklistHandlers"]

JSONDict = dict[str, Any]
_SOP_INSTANCE = "00080018"
_SOP_CLASS = "00080016"
_UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
_FINAL = frozenset({COMPLETED, CANCELED})
# Search keys by keyword as well as by tag (the ones a worklist is searched by).
_KEYWORDS = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "ProcedureStepState": PROCEDURE_STEP_STATE,
    "SOPInstanceUID": _SOP_INSTANCE,
    "ScheduledProcedureStepPriority": "00741200",
    "WorklistLabel": "00741202",
    "ScheduledProcedureStepStartDateTime": "00404005",
}


@dataclass
class _Workitem:
    uid: str
    dataset: JSONDict
    transaction_uid: str | None = None
    cancel_requests: list[JSONDict] = field(default_factory=list)

    @property
    def state(self) -> str:
        values = self.dataset.get(PROCEDURE_STEP_STATE, {}).get("Value") or [SCHEDULED]
        return str(values[0])

    def set_state(self, state: str) -> None:
        self.dataset[PROCEDURE_STEP_STATE] = {"vr": "CS", "Value": [state]}

    def shown(self) -> JSONDict:
        """The dataset as retrieved: never the Transaction UID."""
        return {k: v for k, v in sorted(self.dataset.items()) if k != TRANSACTION_UID}


def _one_dataset(data: Any) -> JSONDict:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a DICOM JSON array of one dataset")
    for key, value in data.items():
        if len(key) != 8 or not isinstance(value, dict) or "vr" not in value:
            raise HttpError(400, f"{key!r} is not a DICOM JSON attribute")
    return data


def _first(dataset: JSONDict, tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value")
    return values[0] if isinstance(values, list) and values else None


def _text(value: Any) -> str:
    if isinstance(value, dict):  # a person name
        return str(value.get("Alphabetic", ""))
    return "" if value is None else str(value)


def _bare_uid(query: str, name: str) -> str | None:
    """A UID given bare (``?1.2.3``, as Azure writes it) or as ``name=1.2.3``."""
    if not query:
        return None
    pairs = parse_qsl(query, keep_blank_values=True)
    for key, value in pairs:
        if key == name and value:
            return value
    if len(pairs) == 1 and pairs[0][1] == "":
        return pairs[0][0]
    return None


class WorklistHandlers:
    """``/workitems`` of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.items: dict[tuple[str, str], _Workitem] = {}

    def _find(self, ctx: Context, uid: str) -> _Workitem:
        check_uid(uid, "workitem UID")
        found = self.items.get((ctx.partition, uid))
        if found is None:
            raise HttpError(404, f"the workitem {uid} was not found")
        return found

    async def create(self, request: Request, ctx: Context) -> Response:
        """``POST /workitems?{uid}``."""
        dataset = _one_dataset(await read_json(request))
        uid = _bare_uid(request.query, "workitem") or _first(dataset, _SOP_INSTANCE)
        if not uid:
            raise HttpError(400, "the workitem UID is missing (POST /workitems?{uid})")
        check_uid(uid, "workitem UID")
        state = _first(dataset, PROCEDURE_STEP_STATE)
        if state != SCHEDULED:
            raise HttpError(400, f"a workitem is created SCHEDULED, not {state!r}")
        if TRANSACTION_UID in dataset and _first(dataset, TRANSACTION_UID):
            raise HttpError(400, "a new workitem has no Transaction UID")
        with self.state.lock:
            key = (ctx.partition, uid)
            if key in self.items:
                raise HttpError(409, f"the workitem {uid} already exists")
            dataset = dict(dataset)
            dataset[_SOP_INSTANCE] = {"vr": "UI", "Value": [uid]}
            dataset.setdefault(_SOP_CLASS, {"vr": "UI", "Value": [_UPS_PUSH]})
            dataset.pop(TRANSACTION_UID, None)
            self.items[key] = _Workitem(uid, dataset)
        location = f"{ctx.base_url}/workitems/{uid}"
        return Response(201, [("Location", location), ("Content-Type", DICOM_JSON)], b"")

    async def retrieve(self, request: Request, ctx: Context, uid: str) -> Response:
        """``GET /workitems/{uid}``."""
        check_json_accept(request)
        with self.state.lock:
            item = self._find(ctx, uid)
            return json_response(200, [item.shown()], DICOM_JSON)

    async def update(self, request: Request, ctx: Context, uid: str) -> Response:
        """``POST /workitems/{uid}[?{transaction}]``."""
        changes = _one_dataset(await read_json(request))
        given = _bare_uid(request.query, "transaction-uid")
        for tag, what in ((PROCEDURE_STEP_STATE, "state"), (TRANSACTION_UID, "Transaction UID")):
            if tag in changes:
                raise HttpError(400, f"an update cannot change the {what}; change the state")
        with self.state.lock:
            item = self._find(ctx, uid)
            if item.state in _FINAL:
                raise HttpError(400, f"the workitem is {item.state} and can no longer change")
            if item.state == IN_PROGRESS and given != item.transaction_uid:
                why = "is missing" if given is None else "does not match"
                raise HttpError(400, f"the workitem is IN PROGRESS: its Transaction UID {why}")
            if item.state == SCHEDULED and given is not None:
                raise HttpError(400, "the workitem is SCHEDULED: it has no Transaction UID yet")
            item.dataset.update(changes)
        return Response(200)

    async def change_state(self, request: Request, ctx: Context, uid: str) -> Response:
        """``PUT /workitems/{uid}/state``."""
        body = _one_dataset(await read_json(request))
        wanted = _first(body, PROCEDURE_STEP_STATE)
        given = _first(body, TRANSACTION_UID)
        if wanted not in STATES:
            raise HttpError(400, f"Procedure Step State {wanted!r} is not a state")
        if not given:
            raise HttpError(400, "the Transaction UID is missing")
        check_uid(str(given), "Transaction UID")
        with self.state.lock:
            item = self._find(ctx, uid)
            current = item.state
            if current in _FINAL:
                raise HttpError(409, f"the workitem is already {current}")
            if current == SCHEDULED:
                if wanted != IN_PROGRESS:
                    raise HttpError(
                        400, f"a SCHEDULED workitem goes IN PROGRESS first, not {wanted}"
                    )
                item.transaction_uid = str(given)
            else:  # IN PROGRESS
                if given != item.transaction_uid:
                    raise HttpError(400, "the Transaction UID does not match the workitem's")
                if wanted == IN_PROGRESS:
                    raise HttpError(409, "the workitem is already IN PROGRESS")
            item.set_state(wanted)
        return Response(200)

    async def cancel(self, request: Request, ctx: Context, uid: str) -> Response:
        """``POST /workitems/{uid}/cancelrequest``."""
        data = await read_json(request) if request.header("content-length") != "0" else [{}]
        reason = _one_dataset(data) if data else {}
        with self.state.lock:
            item = self._find(ctx, uid)
            if item.state in _FINAL:
                raise HttpError(409, f"the workitem is already {item.state}")
            item.cancel_requests.append(reason)
            if item.state == SCHEDULED:
                item.set_state(CANCELED)
        return Response(202)

    async def search(self, request: Request, ctx: Context) -> Response:
        """``GET /workitems?...``: exact or wildcard (``*``, ``?``) matches, limit, offset."""
        check_json_accept(request)
        wanted: list[tuple[str, str]] = []
        limit, offset = 100, 0
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            if key == "limit":
                limit = int(value)
            elif key == "offset":
                offset = int(value)
            elif key in ("includefield", "fuzzymatching"):
                continue
            else:
                tag = _KEYWORDS.get(key, key.upper())
                if len(tag) != 8:
                    raise HttpError(400, f"{key!r} is not a worklist search key")
                wanted.append((tag, value))
        if not 1 <= limit <= 200:
            raise HttpError(400, f"limit must be from 1 to 200, not {limit}")
        with self.state.lock:
            found = [
                item.shown()
                for (partition, _), item in sorted(self.items.items())
                if partition == ctx.partition
                and all(_matches(_text(_first(item.dataset, t)), v) for t, v in wanted)
            ]
        page = found[offset : offset + limit]
        if not page:
            return Response(204)
        return json_response(200, page, DICOM_JSON)

    def clear(self) -> None:
        with self.state.lock:
            self.items.clear()


def _matches(value: str, pattern: str) -> bool:
    import fnmatch

    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value.upper(), pattern.upper())
    return value == pattern
