"""Long-running operations of the Azure DICOM service.

Adding extended query tags, bulk-updating studies and exporting answer ``202 Accepted`` with
an operation reference (``{"id": ..., "href": ...}``) and carry on in the background.
``GET {base}/operations/{id}`` reports progress: ``202`` while the operation runs, ``200``
once it has finished, successfully or not. This module parses both answers and polls with
backoff until the operation is done.

The service serialises JSON with camel-case names (``operationId``), while its documentation
writes them in Pascal case (``OperationId``); names are matched without regard to case.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from .._core.exceptions import DICOMwebError, ProtocolError, TimeoutError
from .._transport.transport import Response, Transport
from .json_values import JSON, Fields, JSONDict, json_body, load_json_object

__all__ = [
    "Operation",
    "OperationReference",
    "OperationState",
    "get_operation",
]

# Normalised status names. v1 of the service says "Completed" where v2 says "Succeeded";
# "Canceled" and "Unknown" exist in the service's status enumeration but are rarely seen.
NOT_STARTED = "NotStarted"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELED = "Canceled"
UNKNOWN = "Unknown"

_STATUS_ALIASES = {
    "notstarted": NOT_STARTED,
    "running": RUNNING,
    "succeeded": SUCCEEDED,
    "completed": SUCCEEDED,
    "failed": FAILED,
    "canceled": CANCELED,
    "cancelled": CANCELED,
}
_DONE = frozenset({SUCCEEDED, FAILED, CANCELED})
_FAILED = frozenset({FAILED, CANCELED})

# Operation ids are GUIDs, with or without dashes; anything else must not reach a URL path.
_OPERATION_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z\-]{0,127}")


def check_operation_id(operation_id: str) -> str:
    """Return ``operation_id`` if it is safe to put into a URL path, else raise ValueError."""
    if not isinstance(operation_id, str) or not _OPERATION_ID_RE.fullmatch(operation_id):
        raise ValueError(f"invalid operation id: {operation_id!r}")
    return operation_id


# -- operation reference and state -------------------------------------------------------------


@dataclass(frozen=True)
class OperationReference:
    """The reference to a started operation, from a ``202 Accepted`` answer.

    Attributes
    ----------
    id : str
        The operation id, for ``GET {base}/operations/{id}``.
    href : str or None
        The absolute URL of the operation's status, as the server wrote it.
    """

    id: str
    href: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OperationReference:
        """Build a reference from ``{"id": ..., "href": ...}``.

        Raises
        ------
        ValueError
            If the id is missing or not a well-formed operation id.
        """
        fields = Fields(data)
        operation_id = fields.text("id")
        if operation_id is None:
            raise ValueError("operation reference without an id")
        return cls(check_operation_id(operation_id), fields.text("href"))


def parse_operation_reference(response: Response, body: bytes) -> OperationReference:
    """The operation reference of a ``202 Accepted`` answer.

    The body holds ``{"id", "href"}``; if it is empty, the id is taken from the last
    segment of the ``Location`` header, which points at the same status URL.
    """
    if not body.strip():
        location = response.headers.get("location", "")
        last = location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if last and _OPERATION_ID_RE.fullmatch(last):
            return OperationReference(last, location)
        raise ProtocolError(
            "202 answer without an operation reference",
            method=response.method,
            url=response.url,
        )
    data = load_json_object(response, body, "operation reference")
    try:
        return OperationReference.from_json(data)
    except ValueError as exc:
        raise ProtocolError(str(exc), method=response.method, url=response.url) from None


def _error_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        fields = Fields(item)
        message = fields.text("message") or fields.text("errorMessage") or fields.text("error")
        if message:
            return message
    return json.dumps(item)


def _collect_errors(*sources: Any) -> list[str]:
    errors: list[str] = []
    for source in sources:
        if isinstance(source, list):
            errors.extend(_error_text(item) for item in source)
        elif isinstance(source, str | dict):
            errors.append(_error_text(source))
    return errors


@dataclass(frozen=True)
class OperationState:
    """The state of a long-running operation, from ``GET {base}/operations/{id}``.

    Attributes
    ----------
    operation_id : str
    type : str or None
        What the operation does, e.g. ``"reindex"``, ``"update"``, ``"export"``.
    status : str
        Normalised: ``"NotStarted"``, ``"Running"``, ``"Succeeded"``, ``"Failed"``,
        ``"Canceled"``, or ``"Unknown"`` for a status this client does not know.
        v1's ``"Completed"`` is ``"Succeeded"``.
    raw_status : str
        The status exactly as the server wrote it.
    percent_complete : int or None
    created_time, last_updated_time : datetime or None
        Timezone-aware (UTC).
    resources : list of str
        URLs of what the operation works on (e.g. the extended query tags it indexes).
    results : dict or None
        Operation-specific results, e.g. ``{"studyUpdated": 1, "instanceUpdated": 16}`` for
        a bulk update or ``{"exported": 1000, "skipped": 3, "errorHref": ...}`` for an export.
    errors : list of str
        Error messages, from ``errors`` of the operation or of its ``results``.
    raw : dict
        The whole JSON answer.
    http_status : int
        200 when the server says the operation has finished, 202 while it runs.
    """

    operation_id: str
    type: str | None
    status: str
    raw_status: str
    percent_complete: int | None
    created_time: datetime | None
    last_updated_time: datetime | None
    resources: list[str]
    results: JSONDict | None
    errors: list[str]
    raw: JSONDict = field(repr=False, compare=False)
    http_status: int = field(default=200, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], http_status: int = 200) -> OperationState:
        """Build the state from the service's JSON.

        Raises
        ------
        ValueError
            If the operation id is missing.
        """
        fields = Fields(data)
        operation_id = fields.text("operationId") or fields.text("id")
        if not operation_id:
            raise ValueError("operation status without an operationId")
        raw_status = fields.text("status") or ""
        status = _STATUS_ALIASES.get(raw_status.lower(), UNKNOWN)
        resources = fields.get("resources")
        results = fields.get("results")
        results = results if isinstance(results, dict) else None
        errors = _collect_errors(
            fields.get("errors"), Fields(results).get("errors") if results else None
        )
        return cls(
            operation_id=operation_id,
            type=fields.text("type") or fields.text("operationType"),
            status=status,
            raw_status=raw_status,
            percent_complete=fields.integer("percentComplete"),
            created_time=fields.timestamp("createdTime"),
            last_updated_time=fields.timestamp("lastUpdatedTime"),
            resources=[str(r) for r in resources] if isinstance(resources, list) else [],
            results=results,
            errors=errors,
            raw=dict(data),
            http_status=http_status,
        )

    @property
    def done(self) -> bool:
        """True once the operation has stopped, whether it succeeded or not.

        A status this client does not know counts as done when the server answered 200,
        which the service uses only for finished operations.
        """
        return self.status in _DONE or (self.status == UNKNOWN and self.http_status == 200)

    @property
    def succeeded(self) -> bool:
        """True if the operation finished successfully."""
        return self.status == SUCCEEDED

    @property
    def failed(self) -> bool:
        """True if the operation failed or was canceled."""
        return self.status in _FAILED

    def raise_for_failure(self) -> OperationState:
        """Raise :class:`DICOMwebError` if the operation failed; otherwise return ``self``.

        Raises
        ------
        DICOMwebError
            With the operation's id, type and error messages.
        """
        if self.failed:
            what = f"operation {self.operation_id}"
            if self.type:
                what += f" ({self.type})"
            detail = "; ".join(self.errors) if self.errors else "no error message given"
            raise DICOMwebError(f"{what} {self.raw_status or self.status.lower()}: {detail}")
        return self


def _operation_path(operation_id: str) -> str:
    return f"/operations/{check_operation_id(operation_id)}"


async def get_operation(transport: Transport, operation_id: str) -> OperationState:
    """Fetch the state of an operation (``GET {base}/operations/{id}``).

    Parameters
    ----------
    transport : Transport
    operation_id : str

    Returns
    -------
    OperationState
        Parsed from a ``202`` (still running) or ``200`` (finished) answer.

    Raises
    ------
    NotFoundError
        If the service does not know the operation.
    ProtocolError
        If the answer is not an operation status.
    """
    response, body = await transport.request(
        "GET", _operation_path(operation_id), headers={"Accept": JSON}, ok=(200, 202)
    )
    data = load_json_object(response, body, "operation status")
    try:
        return OperationState.from_json(data, http_status=response.status_code)
    except ValueError as exc:
        raise ProtocolError(str(exc), method=response.method, url=response.url) from None


async def start_operation(transport: Transport, path: str, payload: Any) -> Operation:
    """POST ``payload`` as JSON to ``path`` and return the operation it starts (202)."""
    response, body = await transport.request(
        "POST",
        path,
        headers={"Accept": JSON, "Content-Type": JSON},
        body=json_body(payload),
        ok=(202,),
        once=True,
    )
    return Operation(transport, parse_operation_reference(response, body))


class Operation:
    """A handle on a long-running operation of the service.

    Parameters
    ----------
    transport : Transport
        Where to ask for the operation's state.
    reference : OperationReference or str
        The reference from the ``202`` answer that started it, or just its id.
    """

    def __init__(self, transport: Transport, reference: OperationReference | str):
        if isinstance(reference, str):
            reference = OperationReference(check_operation_id(reference))
        self._transport = transport
        self._reference = reference

    def __repr__(self) -> str:
        return f"<Operation {self._reference.id}>"

    @property
    def id(self) -> str:
        """The operation id."""
        return self._reference.id

    @property
    def reference(self) -> OperationReference:
        """The operation reference (id and status URL)."""
        return self._reference

    async def status(self) -> OperationState:
        """Fetch the operation's current state once."""
        return await get_operation(self._transport, self.id)

    async def wait(
        self,
        *,
        # A parameter rather than the caller's own fail_after: the deadline error then names
        # the operation and its last known progress.
        timeout: float | None = None,  # noqa: ASYNC109
        interval: float = 1.0,
        max_interval: float = 15.0,
    ) -> OperationState:
        """Poll until the operation is done and return its final state.

        The state is returned whether the operation succeeded or failed; call
        :meth:`OperationState.raise_for_failure` to turn a failure into an exception.

        Parameters
        ----------
        timeout : float, optional
            Give up after this many seconds; None waits as long as it takes.
        interval : float
            Seconds before the second poll; the pause doubles after every poll...
        max_interval : float
            ...up to this many seconds.

        Raises
        ------
        TimeoutError
            If the operation is not done within ``timeout`` (the operation itself keeps
            running on the server).
        ValueError
            If an interval is negative, or ``max_interval < interval``.
        """
        if interval < 0 or max_interval < interval:
            raise ValueError("need 0 <= interval <= max_interval")
        last: list[OperationState] = []
        scope: anyio.CancelScope | None = None
        try:
            with anyio.fail_after(timeout) as scope:
                return await self._poll(interval, max_interval, last)
        except builtins.TimeoutError:
            # Only anyio's deadline becomes the library's own error; the builtin is what
            # fail_after raises, and nothing else should be mistaken for it.
            if scope is None or not scope.cancelled_caught:
                raise
        progress = ""
        if last:
            progress = f"; last status {last[-1].raw_status or last[-1].status}"
            if last[-1].percent_complete is not None:
                progress += f", {last[-1].percent_complete}% complete"
        raise TimeoutError(
            f"operation {self.id} did not finish within {timeout} s{progress}",
            method="GET",
            url=self._transport.url(_operation_path(self.id)),
        )

    async def _poll(
        self, interval: float, max_interval: float, last: list[OperationState]
    ) -> OperationState:
        delay = interval
        while True:
            state = await self.status()
            last[:] = [state]
            if state.done:
                return state
            await anyio.sleep(delay)
            delay = min(delay * 2, max_interval)
