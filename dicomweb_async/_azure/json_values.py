"""JSON bodies, fields and timestamps as the Azure DICOM service's own APIs write them.

Shared by the change feed, operations, extended query tags and administration modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .._core.exceptions import ProtocolError
from .._transport.transport import Response

__all__ = [
    "JSON",
    "Fields",
    "JSONDict",
    "format_timestamp",
    "json_body",
    "load_json",
    "load_json_object",
    "load_json_objects",
    "parse_time",
    "parse_timestamp",
]

JSON = "application/json"
JSONDict = dict[str, Any]

# Azure writes seven fractional digits (.NET ticks); other servers and older entries may
# write none or fewer, and an offset instead of "Z".
_TIMESTAMP_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp as the change feed writes it.

    Parameters
    ----------
    text : str
        E.g. ``"2020-09-17T22:09:56.1234567Z"``: any number of fractional digits (beyond
        six they are truncated, as ``datetime`` holds microseconds), ``Z`` or an offset
        such as ``+02:00``. Without either, the time is taken as UTC, which is what the
        service stores.

    Returns
    -------
    datetime
        Timezone-aware, in UTC.

    Raises
    ------
    ValueError
        If ``text`` is not such a timestamp.
    """
    match = _TIMESTAMP_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    # Truncated, not rounded: rounding .9999999 up would have to carry into the seconds.
    micro = int((fraction or "")[:6].ljust(6, "0"))
    tz = timezone.utc
    if sign:
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-delta if sign == "-" else delta)
    value = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tz
    )
    return value.astimezone(timezone.utc)


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC with a ``Z``, as the service expects.

    Parameters
    ----------
    value : datetime
        Must carry a timezone: a naive time is ambiguous (local or UTC?) and a wrong guess
        would silently shift the window by hours.

    Returns
    -------
    str
        E.g. ``"2024-01-02T03:04:05Z"`` or ``"2024-01-02T03:04:05.250000Z"``.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware (e.g. tzinfo=timezone.utc): {value}")
    u = value.astimezone(timezone.utc)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += f".{u.microsecond:06d}"
    return text + "Z"


def parse_time(value: str) -> datetime | None:
    """Like :func:`parse_timestamp`, but None for text that is not a timestamp."""
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def json_body(payload: Any) -> bytes:
    """Encode ``payload`` as a UTF-8 JSON request body."""
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def load_json(response: Response, body: bytes, what: str) -> Any:
    """Decode a JSON response body, or raise :class:`ProtocolError` naming ``what``."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(
            f"{what} is not JSON: {exc}", method=response.method, url=response.url
        ) from None


def load_json_object(response: Response, body: bytes, what: str) -> JSONDict:
    """Decode a JSON object from a response body."""
    data = load_json(response, body, what)
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{what} is not a JSON object", method=response.method, url=response.url
        )
    return data


def load_json_objects(response: Response, body: bytes, what: str) -> list[JSONDict]:
    """Decode a JSON array of objects; an empty body (204) is an empty list."""
    if response.status_code == 204 or not body.strip():
        return []
    data = load_json(response, body, what)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ProtocolError(
            f"{what} is not a JSON array of objects", method=response.method, url=response.url
        )
    return data


class Fields:
    """Case-insensitive, type-checked access to the members of a JSON object."""

    def __init__(self, data: Mapping[str, Any]):
        self._lowered = {str(key).lower(): value for key, value in data.items()}

    def get(self, name: str) -> Any:
        """The member ``name`` whatever its case, or None."""
        return self._lowered.get(name.lower())

    def text(self, name: str) -> str | None:
        """A string member; other JSON types are read as absent."""
        value = self.get(name)
        return value if isinstance(value, str) else None

    def integer(self, name: str) -> int | None:
        """An integer member (bool excluded; a whole float is accepted)."""
        value = self.get(name)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None

    def timestamp(self, name: str) -> datetime | None:
        """A timestamp member (see :func:`parse_timestamp`); None if it is not one."""
        value = self.get(name)
        return parse_time(value) if isinstance(value, str) else None

    def child(self, name: str) -> Fields | None:
        """A nested object member."""
        value = self.get(name)
        return Fields(value) if isinstance(value, dict) else None
