"""Resource paths, UID checks and QIDO-RS query strings (no I/O).

Query values keep DICOM's matching characters (``* ? ^ , -``) literal. Some servers
(Orthanc among them) do not percent-decode query values, so ``PatientName=Anony%2A``
would silently match nothing there; these characters are legal in a URL query as they are
(``^`` is passed through by httpx unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Any
from urllib.parse import quote

__all__ = [
    "build_query",
    "check_partition",
    "check_uid",
    "instance_path",
    "search_path",
    "series_path",
    "study_path",
]

# Azure accepts letters and '-' besides the digits and dots of the standard; anything
# else (slashes, '..', spaces) must never reach a URL path or a file name.
_UID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.\-]{0,63}")

# Characters sent as they are in query values: unreserved ones plus DICOM's matching
# characters. '&', '=', '+', '#', '%', ';' and spaces are always percent-encoded.
_QUERY_SAFE = "*?^,-.:/_~@!$'()"


def check_uid(uid: str, what: str = "UID") -> str:
    """Return ``uid`` if it is a well-formed UID, else raise ``ValueError``.

    Parameters
    ----------
    uid : str
        The value to check.
    what : str
        Name used in the error message (e.g. ``"StudyInstanceUID"``).

    Raises
    ------
    TypeError
        If ``uid`` is not a string (a list of UIDs where one is expected, say).
    ValueError
        If it is not a well-formed UID.
    """
    if not isinstance(uid, str):
        raise TypeError(f"{what} must be a str, not {type(uid).__name__}: {uid!r}")
    if not _UID_RE.fullmatch(uid) or ".." in uid:
        raise ValueError(f"invalid {what}: {uid!r} (1-64 characters of digits, letters, '.', '-')")
    return uid


_PARTITION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_partition(name: str) -> str:
    """Return ``name`` if it is a valid data partition name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _PARTITION_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid partition name: {name!r} (1-64 letters, digits, '.', '_' or '-')"
        )
    return name


def study_path(study: str) -> str:
    """``/studies/{study}``."""
    return f"/studies/{check_uid(study, 'StudyInstanceUID')}"


def series_path(study: str, series: str) -> str:
    """``/studies/{study}/series/{series}``."""
    return f"{study_path(study)}/series/{check_uid(series, 'SeriesInstanceUID')}"


def instance_path(study: str, series: str, instance: str) -> str:
    """``/studies/{study}/series/{series}/instances/{instance}``."""
    return f"{series_path(study, series)}/instances/{check_uid(instance, 'SOPInstanceUID')}"


def search_path(level: str, study: str | None = None, series: str | None = None) -> str:
    """Path of a QIDO-RS route.

    Parameters
    ----------
    level : {"studies", "series", "instances", "workitems"}
        What to search for (``workitems``: the worklist, UPS-RS).
    study, series : str, optional
        Restrict the search to a study, or to a series of a study.
    """
    if level == "studies":
        return "/studies"
    if level == "workitems":
        return "/workitems"
    if level == "series":
        return f"{study_path(study)}/series" if study else "/series"
    if level == "instances":
        if series and not study:
            raise ValueError("series_instance_uid given without study_instance_uid")
        if study and series:
            return f"{series_path(study, series)}/instances"
        if study:
            return f"{study_path(study)}/instances"
        return "/instances"
    raise ValueError(f"unknown search level {level!r}")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, time):
        return value.strftime("%H%M%S")
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def _encode(text: str) -> str:
    return quote(text, safe=_QUERY_SAFE)


def build_query(
    search_filters: Mapping[str, Any] | None = None,
    *,
    fuzzymatching: bool | None = None,
    limit: int | None = None,
    offset: int | None = None,
    fields: Sequence[str] | None = None,
    extra: Iterable[tuple[str, Any]] = (),
) -> str:
    """Build a QIDO-RS query string (without the leading ``?``).

    Parameters
    ----------
    search_filters : mapping, optional
        Attribute keyword or 8-digit hex tag to value. Lists become ``a,b`` (match any);
        dates and datetimes are formatted as DICOM DA / DT.
    fuzzymatching : bool, optional
        Sent as ``fuzzymatching=true|false`` when given.
    limit, offset : int, optional
        Paging.
    fields : sequence of str, optional
        Each becomes an ``includefield`` parameter (``"all"`` for every attribute).
    extra : iterable of (str, value)
        Further parameters appended as they are.

    Returns
    -------
    str
    """
    pairs: list[tuple[str, str]] = []
    for key, value in (search_filters or {}).items():
        if value is None:
            continue
        pairs.append((key, _format_value(value)))
    if fuzzymatching is not None:
        pairs.append(("fuzzymatching", _format_value(fuzzymatching)))
    for name in fields or ():
        pairs.append(("includefield", name))
    if limit is not None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        pairs.append(("limit", str(limit)))
    if offset is not None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        pairs.append(("offset", str(offset)))
    for key, value in extra:
        pairs.append((key, _format_value(value)))
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs)
