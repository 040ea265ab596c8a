"""QIDO-RS of the Azure DICOM emulator: query parsing, matching and result building.

The rules are those of the service's conformance statement (v2): which attributes each
route can filter on, which it returns, exact matching (case-insensitive for strings),
date ranges, prefix-of-word fuzzy matching of person names, ``limit`` 1..200 and results
newest first. ``*`` and ``?`` wildcards on string attributes are accepted as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .dicom import attribute_tag, tag_key
from .store import Instance, QueryTag

__all__ = ["MAX_LIMIT", "SEARCHABLE_TAGS", "QueryError", "SearchRoute", "search"]

JSONDict = dict[str, Any]

STUDY, SERIES, INSTANCE = "study", "series", "instance"
MAX_LIMIT = 200
_DEFAULT_LIMIT = 100

_STUDY_UID, _SERIES_UID, _SOP_UID = 0x0020000D, 0x0020000E, 0x00080018
_PATIENT_NAME, _REFERRING_PHYSICIAN = 0x00100010, 0x00080090
_MODALITIES_IN_STUDY, _MODALITY = 0x00080061, 0x00080060
_STUDY_SERIES_COUNT, _STUDY_INSTANCE_COUNT, _SERIES_INSTANCE_COUNT = (
    0x00201206,
    0x00201208,
    0x00201209,
)

#: Attributes every route may filter on at its levels, by the level they belong to.
_SEARCHABLE = {
    _STUDY_UID: STUDY,
    _PATIENT_NAME: STUDY,
    0x00100020: STUDY,  # PatientID
    0x00100030: STUDY,  # PatientBirthDate
    0x00080050: STUDY,  # AccessionNumber
    _REFERRING_PHYSICIAN: STUDY,
    0x00080020: STUDY,  # StudyDate
    0x00081030: STUDY,  # StudyDescription
    _MODALITIES_IN_STUDY: STUDY,
    _SERIES_UID: SERIES,
    _MODALITY: SERIES,
    0x00400244: SERIES,  # PerformedProcedureStepStartDate
    0x00081090: SERIES,  # ManufacturerModelName
    _SOP_UID: INSTANCE,
}
#: Tags searchable without an extended query tag.
SEARCHABLE_TAGS = frozenset(_SEARCHABLE)

_VRS = {
    _STUDY_UID: "UI",
    _SERIES_UID: "UI",
    _SOP_UID: "UI",
    _PATIENT_NAME: "PN",
    _REFERRING_PHYSICIAN: "PN",
    0x00100030: "DA",
    0x00080020: "DA",
    0x00400244: "DA",
    _MODALITIES_IN_STUDY: "CS",
    _MODALITY: "CS",
}
_DEFAULT_TAGS = {
    STUDY: (
        0x00080020,
        0x00080050,
        0x00081030,
        _REFERRING_PHYSICIAN,
        _PATIENT_NAME,
        0x00100020,
        0x00100030,
        _STUDY_UID,
    ),
    SERIES: (_MODALITY, 0x00081090, _SERIES_UID, 0x00400244),
    INSTANCE: (_SOP_UID,),
}
# Returned as well with includefield=all.
_OTHER_TAGS = {
    STUDY: (
        0x00080005,
        0x00080030,
        0x00080056,
        0x00080201,
        0x00080063,
        0x00081032,
        0x00081060,
        0x00081080,
        0x00081110,
        0x00101010,
        0x00101020,
        0x00101030,
        0x00102180,
        0x001021B0,
        0x00100040,
        0x00200010,
        _STUDY_INSTANCE_COUNT,
    ),
    SERIES: (
        0x00080005,
        0x00080201,
        0x00200011,
        0x00200060,
        0x00080021,
        0x00080031,
        0x0008103E,
        0x00400245,
        0x00400275,
        _SERIES_INSTANCE_COUNT,
    ),
    INSTANCE: (
        0x00080005,
        0x00080016,
        0x00080056,
        0x00080201,
        0x00200013,
        0x00280010,
        0x00280011,
        0x00280100,
        0x00280008,
    ),
}
_AGGREGATE_LEVEL = {
    _STUDY_SERIES_COUNT: STUDY,
    _STUDY_INSTANCE_COUNT: STUDY,
    _MODALITIES_IN_STUDY: STUDY,
    _SERIES_INSTANCE_COUNT: SERIES,
}
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
_RANGE_VRS = frozenset({"DA", "DT", "TM"})
_FUZZY_TAGS = frozenset({_PATIENT_NAME, _REFERRING_PHYSICIAN})
_LEVEL_NAMES = {"study": STUDY, "series": SERIES, "instance": INSTANCE}


class QueryError(Exception):
    """The query cannot be answered (the service answers 400)."""


@dataclass(frozen=True)
class SearchRoute:
    """One of the six QIDO-RS routes.

    Attributes
    ----------
    level : str
        What the results are: ``study``, ``series`` or ``instance``.
    study_uid, series_uid : str or None
        UIDs from the path that narrow the search.
    """

    level: str
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def filter_levels(self) -> frozenset[str]:
        """Levels whose attributes this route can filter on."""
        if self.level == STUDY:
            return frozenset({STUDY})
        if self.level == SERIES:
            return frozenset({SERIES} if self.study_uid else {STUDY, SERIES})
        if self.series_uid:
            return frozenset({INSTANCE})
        return frozenset({SERIES, INSTANCE} if self.study_uid else {STUDY, SERIES, INSTANCE})

    @property
    def result_levels(self) -> tuple[str, ...]:
        """Levels whose default attributes the results carry."""
        return tuple(lv for lv in (STUDY, SERIES, INSTANCE) if lv in self.filter_levels)


@dataclass(frozen=True)
class _Filter:
    tag: int
    level: str
    vr: str
    value: str


@dataclass
class _Group:
    """Instances of one study or series, with the newest one standing for the group."""

    members: list[Instance] = field(default_factory=list)

    @property
    def newest(self) -> Instance:
        return max(self.members, key=lambda instance: instance.order)


@dataclass(frozen=True)
class _Row:
    instance: Instance  # the newest instance of the result (or the result itself)
    study: _Group
    series: _Group | None
    study_series: int


def _parse_int(name: str, text: str) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise QueryError(f"the value of '{name}' must be an integer, got {text!r}")
    return int(text)


def _filter_for(
    name: str, value: str, route: SearchRoute, tags: Mapping[int, QueryTag]
) -> _Filter:
    tag = attribute_tag(name)
    if tag is None:
        raise QueryError(f"unknown query parameter or attribute {name!r}")
    if tag in _SEARCHABLE:
        level, vr = _SEARCHABLE[tag], _VRS.get(tag, "LO")
    elif tag in tags:
        extended = tags[tag]
        if extended.status != "Ready":
            raise QueryError(
                f"extended query tag {extended.path} is not ready (status {extended.status})"
            )
        if extended.query_status != "Enabled":
            raise QueryError(f"extended query tag {extended.path} is disabled for querying")
        level, vr = _LEVEL_NAMES[extended.level.lower()], extended.vr
    else:
        raise QueryError(f"the attribute {name!r} is not supported for searching")
    if level not in route.filter_levels:
        raise QueryError(f"the attribute {name!r} cannot be used to search this resource")
    if value == "":
        raise QueryError(f"empty values are not supported (attribute {name!r})")
    if vr in _RANGE_VRS and value.strip() == "-":
        raise QueryError(f"a range needs at least one end (attribute {name!r})")
    return _Filter(tag, level, vr, value)


def _strings(element: JSONDict | None) -> list[str]:
    if not element:
        return []
    found = []
    for value in element.get("Value", []):
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        if value is not None:
            found.append(str(value).rstrip(" \x00"))
    return found


def _wildcard(pattern: str) -> re.Pattern[str]:
    text = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(text, re.IGNORECASE | re.DOTALL)


def _fuzzy(query: str, name: str) -> bool:
    words = [w for w in re.split(r"[\s^=]+", name.lower()) if w]
    wanted = [w for w in re.split(r"[\s^,]+", query.lower()) if w]
    return bool(wanted) and all(any(w.startswith(q) for w in words) for q in wanted)


def _matches(flt: _Filter, element: JSONDict | None, fuzzy: bool) -> bool:
    values = _strings(element)
    if not values:
        return False
    query = flt.value
    if flt.vr == "UI":
        wanted = {uid.strip() for uid in query.split(",")}
        return any(v in wanted for v in values)
    if flt.vr in _RANGE_VRS and "-" in query:
        low, _, high = query.partition("-")
        return any((not low or v >= low) and (not high or v <= high) for v in values)
    if flt.vr in _NUMERIC_VRS:
        try:
            number = float(query)
            return any(float(v) == number for v in values)
        except ValueError:
            return False
    if flt.vr == "PN" and fuzzy and flt.tag in _FUZZY_TAGS:
        return any(_fuzzy(query, v) for v in values)
    if "*" in query or "?" in query:
        pattern = _wildcard(query)
        return any(pattern.fullmatch(v) for v in values)
    return any(v.casefold() == query.casefold() for v in values)


def _aggregate(row: _Row, tag: int) -> JSONDict | None:
    if tag == _MODALITIES_IN_STUDY:
        modalities = sorted(
            {m for i in row.study.members for m in _strings(i.version.metadata.get("00080060"))}
        )
        return {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
    if tag == _STUDY_INSTANCE_COUNT:
        return {"vr": "IS", "Value": [len(row.study.members)]}
    if tag == _STUDY_SERIES_COUNT:
        return {"vr": "IS", "Value": [row.study_series]}
    if tag == _SERIES_INSTANCE_COUNT and row.series is not None:
        return {"vr": "IS", "Value": [len(row.series.members)]}
    return None


def _lookup(row: _Row, tag: int, level: str | None) -> JSONDict | None:
    if tag in _AGGREGATE_LEVEL:
        return _aggregate(row, tag)
    if level == STUDY:
        source = row.study.newest
    elif level == SERIES and row.series is not None:
        source = row.series.newest
    else:
        source = row.instance
    element = source.version.metadata.get(tag_key(tag))
    return element if isinstance(element, dict) else None


def _group(instances: Iterable[Instance], route: SearchRoute) -> list[_Row]:
    studies: dict[str, _Group] = {}
    series: dict[tuple[str, str], _Group] = {}
    for instance in instances:
        studies.setdefault(instance.study_uid, _Group()).members.append(instance)
        key = (instance.study_uid, instance.series_uid)
        series.setdefault(key, _Group()).members.append(instance)
    counts: dict[str, int] = {}
    for study_uid, _ in series:
        counts[study_uid] = counts.get(study_uid, 0) + 1
    rows: list[_Row] = []
    if route.level == STUDY:
        for uid, group in studies.items():
            rows.append(_Row(group.newest, group, None, counts[uid]))
    elif route.level == SERIES:
        for (study_uid, _), group in series.items():
            rows.append(_Row(group.newest, studies[study_uid], group, counts[study_uid]))
    else:
        for (study_uid, series_uid), group in series.items():
            for instance in group.members:
                rows.append(_Row(instance, studies[study_uid], series[(study_uid, series_uid)], 0))
    rows.sort(key=lambda row: row.instance.order, reverse=True)
    return rows


def _level_of(tag: int, tags: Mapping[int, QueryTag]) -> str | None:
    if tag in _SEARCHABLE:
        return _SEARCHABLE[tag]
    if tag in _AGGREGATE_LEVEL:
        return _AGGREGATE_LEVEL[tag]
    if tag in tags:
        return _LEVEL_NAMES.get(tags[tag].level.lower())
    for level, others in _OTHER_TAGS.items():
        if tag in others:
            return level
    return None


def search(
    instances: Iterable[Instance],
    route: SearchRoute,
    params: Sequence[tuple[str, str]],
    tags: Mapping[int, QueryTag],
) -> list[JSONDict]:
    """Run a QIDO-RS search.

    Parameters
    ----------
    instances : iterable of Instance
        The instances of the partition.
    route : SearchRoute
        The route searched.
    params : sequence of (str, str)
        The decoded query parameters.
    tags : mapping of int to QueryTag
        The extended query tags.

    Returns
    -------
    list of dict
        The page of DICOM JSON results (empty when nothing matched or ``offset`` is past
        the end).

    Raises
    ------
    QueryError
        For an invalid query (the service answers 400).
    """
    limit, offset, fuzzy = _DEFAULT_LIMIT, 0, False
    include: list[int] = []
    include_all = False
    filters: dict[int, _Filter] = {}
    seen: set[str] = set()
    for name, value in params:
        lowered = name.lower()
        if lowered in ("limit", "offset", "fuzzymatching"):
            if lowered in seen:
                raise QueryError(f"'{name}' may be given only once")
            seen.add(lowered)
        if lowered == "limit":
            limit = _parse_int(name, value)
            if not 1 <= limit <= MAX_LIMIT:
                raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        elif lowered == "offset":
            offset = _parse_int(name, value)
            if offset < 0:
                raise QueryError(f"offset must not be negative, got {offset}")
        elif lowered == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, got {value!r}")
            fuzzy = value.lower() == "true"
        elif lowered == "includefield":
            for wanted in (v.strip() for v in value.split(",")):
                if wanted.lower() == "all":
                    include_all = True
                    continue
                tag = attribute_tag(wanted)
                if tag is None:
                    raise QueryError(f"unknown attribute in includefield: {wanted!r}")
                include.append(tag)
        else:
            flt = _filter_for(name, value, route, tags)
            if flt.tag in filters:
                raise QueryError(f"the attribute {name!r} is given more than once")
            filters[flt.tag] = flt

    candidates = (
        i
        for i in instances
        if (route.study_uid is None or i.study_uid == route.study_uid)
        and (route.series_uid is None or i.series_uid == route.series_uid)
    )
    rows = [
        row
        for row in _group(candidates, route)
        if all(_matches(f, _lookup(row, f.tag, f.level), fuzzy) for f in filters.values())
    ]

    returned: list[tuple[int, str | None]] = []
    for level in route.result_levels:
        returned += [(tag, level) for tag in _DEFAULT_TAGS[level]]
        if include_all:
            returned += [(tag, level) for tag in _OTHER_TAGS[level]]
    if route.study_uid:
        returned.append((_STUDY_UID, STUDY))
    if route.series_uid:
        returned.append((_SERIES_UID, SERIES))
    returned += [(f.tag, f.level) for f in filters.values()]
    returned += [(tag, _level_of(tag, tags)) for tag in include]

    results: list[JSONDict] = []
    for row in rows[offset : offset + limit]:
        item: JSONDict = {}
        for tag, source_level in returned:
            key = tag_key(tag)
            if key in item:
                continue
            element = _lookup(row, tag, source_level)
            if element is not None:
                item[key] = element
        results.append(dict(sorted(item.items())))
    return results
