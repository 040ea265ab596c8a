"""Tests of media types, Accept headers, resource paths and query strings (no I/O)."""

from __future__ import annotations

from datetime import date, datetime, time
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomweb_async._core.media import MediaType, accept_header, parse_media_type
from dicomweb_async._core.urls import (
    build_query,
    check_uid,
    instance_path,
    search_path,
    series_path,
    study_path,
)

TS = "1.2.840.10008.1.2.1"

# -- parse_media_type -----------------------------------------------------------------------

PARSE_CASES = [
    ("application/dicom", "application/dicom", {}),
    ("  Application/DICOM  ", "application/dicom", {}),
    ("", "", {}),
    ("application/dicom;", "application/dicom", {}),
    ("a/b; flag; k=v", "a/b", {"k": "v"}),
    (" a/b ;  k =  v  ; K2=V2", "a/b", {"k": "v", "k2": "V2"}),
    (
        'multipart/related; type="application/dicom"; boundary=abc',
        "multipart/related",
        {"type": "application/dicom", "boundary": "abc"},
    ),
    (
        "Multipart/Related; BOUNDARY=MiXeD; Type=Application/DICOM",
        "multipart/related",
        {"boundary": "MiXeD", "type": "Application/DICOM"},
    ),
    (
        f'multipart/related; type="application/octet-stream; transfer-syntax={TS}"; '
        'boundary="a;b=c"',
        "multipart/related",
        {"type": f"application/octet-stream; transfer-syntax={TS}", "boundary": "a;b=c"},
    ),
    ('a/b; p="say \\"hi\\"; bye"; q=1', "a/b", {"p": 'say "hi"; bye', "q": "1"}),
    ('a/b; p="back\\\\slash"', "a/b", {"p": "back\\slash"}),
    ('a/b; p="x\\"; q=1"', "a/b", {"p": 'x"; q=1'}),
    ('a/b; p=""', "a/b", {"p": ""}),
    ('a/b; p="x=y"', "a/b", {"p": "x=y"}),
]


@pytest.mark.parametrize(("value", "mime", "params"), PARSE_CASES)
def test_parse_media_type(value: str, mime: str, params: dict[str, str]) -> None:
    parsed = parse_media_type(value)
    assert parsed.mime == mime
    assert parsed.params == params


OCTET = "application/octet-stream"
MEDIA_PROPERTY_CASES = [
    # value, boundary, type_param mime, transfer syntax, is_multipart
    ("application/dicom", None, None, None, False),
    (f"application/dicom; transfer-syntax={TS}", None, None, TS, False),
    (
        'multipart/related; type="application/dicom"; boundary=x',
        "x",
        "application/dicom",
        None,
        True,
    ),
    (
        f'multipart/related; type="{OCTET}; transfer-syntax={TS}"; boundary="q r"',
        "q r",
        OCTET,
        TS,
        True,
    ),
    (f'multipart/related; type="{OCTET}"; transfer-syntax={TS}', None, OCTET, TS, True),
    (
        f'multipart/related; type="{OCTET}; transfer-syntax=1.1"; transfer-syntax=2.2',
        None,
        OCTET,
        "2.2",
        True,
    ),
    ("Multipart/Mixed; boundary=z", "z", None, None, True),
    ("multipartx/related", None, None, None, False),
]


@pytest.mark.parametrize(("value", "boundary", "inner", "ts", "multi"), MEDIA_PROPERTY_CASES)
def test_media_type_properties(
    value: str, boundary: str | None, inner: str | None, ts: str | None, multi: bool
) -> None:
    parsed = parse_media_type(value)
    assert parsed.boundary == boundary
    assert (parsed.type_param.mime if parsed.type_param else None) == inner
    assert parsed.transfer_syntax == ts
    assert parsed.is_multipart is multi


def test_media_type_default_params() -> None:
    assert MediaType("a/b").params == {}
    assert MediaType("a/b").transfer_syntax is None


# -- accept_header ------------------------------------------------------------------------------

ACCEPT_CASES = [
    (None, "application/dicom", True, 'multipart/related; type="application/dicom"'),
    ([], "application/dicom", True, 'multipart/related; type="application/dicom"'),
    ((), "application/dicom+json", False, "application/dicom+json"),
    (
        None,
        ("application/octet-stream", "*"),
        True,
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    ),
    (
        [("application/dicom", TS)],
        "ignored/default",
        True,
        f'multipart/related; type="application/dicom"; transfer-syntax={TS}',
    ),
    (
        [("application/dicom", TS), "application/dicom"],
        "ignored/default",
        True,
        f'multipart/related; type="application/dicom"; transfer-syntax={TS}, '
        'multipart/related; type="application/dicom"',
    ),
    (
        ["image/jpeg", ("image/jp2", "1.2.840.10008.1.2.4.90"), "application/octet-stream"],
        "ignored/default",
        False,
        "image/jpeg, image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90, application/octet-stream",
    ),
    (["application/dicom+json"], "ignored/default", False, "application/dicom+json"),
]


@pytest.mark.parametrize(("media_types", "default", "multipart", "expected"), ACCEPT_CASES)
def test_accept_header(media_types, default, multipart: bool, expected: str) -> None:
    assert accept_header(media_types, default=default, multipart=multipart) == expected


@pytest.mark.parametrize("multipart", [True, False])
def test_accept_header_choices_parse_back(multipart: bool) -> None:
    specs = [("application/dicom", TS), "application/dicom", ("application/octet-stream", "*")]
    header = accept_header(specs, default="x/y", multipart=multipart)
    choices = [parse_media_type(c) for c in header.split(", ")]
    assert len(choices) == len(specs)
    for choice, spec in zip(choices, specs, strict=True):
        mime, ts = spec if isinstance(spec, tuple) else (spec, None)
        if multipart:
            assert choice.mime == "multipart/related"
            assert choice.type_param is not None
            assert choice.type_param.mime == mime
        else:
            assert choice.mime == mime
        assert choice.transfer_syntax == ts


# -- check_uid and paths -------------------------------------------------------------------------

GOOD_UIDS = [
    "1",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25.329800735698586629295641978511506172918",
    "abc-DEF.123",
    "0" * 64,
    "1." + "2" * 62,
]
BAD_UIDS = [
    "",
    "1..2",
    "..",
    "1/2",
    "/",
    "../etc",
    "1.2 3",
    " 1.2",
    "1.2 ",
    "1\t2",
    "1.2\n",
    "1" * 65,
    ".1.2",
    "-1.2",
    "1_2",
    "1%2F2",
    "1?x",
    "1#x",
    "\u0661.2",
    "\uff11.2",
]


@pytest.mark.parametrize("uid", GOOD_UIDS)
def test_check_uid_accepts(uid: str) -> None:
    assert check_uid(uid) == uid


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_check_uid_rejects(uid: str) -> None:
    with pytest.raises(ValueError):
        check_uid(uid)


@pytest.mark.parametrize("uid", [None, 12, 1.2, b"1.2", ["1.2.3"]])
def test_check_uid_rejects_non_strings_with_a_type_error(uid: object) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        check_uid(uid)  # type: ignore[arg-type]


def test_check_uid_message_names_what() -> None:
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        check_uid("a/b", "SeriesInstanceUID")


def test_resource_paths() -> None:
    assert study_path("1.2") == "/studies/1.2"
    assert series_path("1.2", "3.4") == "/studies/1.2/series/3.4"
    assert instance_path("1.2", "3.4", "5.6") == "/studies/1.2/series/3.4/instances/5.6"


@pytest.mark.parametrize(
    ("study", "series", "instance"),
    [("1/2", "3", "4"), ("1", "..", "4"), ("1", "3", "4 5"), ("", "3", "4")],
)
def test_resource_paths_reject_bad_uids(study: str, series: str, instance: str) -> None:
    with pytest.raises(ValueError):
        instance_path(study, series, instance)


SEARCH_CASES = [
    (("studies",), "/studies"),
    (("series",), "/series"),
    (("series", "1.2"), "/studies/1.2/series"),
    (("instances",), "/instances"),
    (("instances", "1.2"), "/studies/1.2/instances"),
    (("instances", "1.2", "3.4"), "/studies/1.2/series/3.4/instances"),
]


@pytest.mark.parametrize(("args", "expected"), SEARCH_CASES)
def test_search_path(args: tuple[str, ...], expected: str) -> None:
    assert search_path(*args) == expected


def test_search_path_all_six_routes_are_distinct() -> None:
    assert len({search_path(*args) for args, _ in SEARCH_CASES}) == 6


def test_search_path_series_without_study() -> None:
    with pytest.raises(ValueError, match="study"):
        search_path("instances", None, "3.4")


@pytest.mark.parametrize(
    "args", [("patients",), ("Studies",), ("",), ("series", "1/2"), ("instances", "1", "a b")]
)
def test_search_path_rejects(args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        search_path(*args)


# -- build_query ---------------------------------------------------------------------------------

QUERY_CASES = [
    ({}, {}, ""),
    ({"PatientName": "Doe*"}, {}, "PatientName=Doe*"),
    ({"PatientName": "D?e^J*,X-Y"}, {}, "PatientName=D?e^J*,X-Y"),
    ({"StudyDate": "20200101-20201231"}, {}, "StudyDate=20200101-20201231"),
    ({"X": "a&b"}, {}, "X=a%26b"),
    ({"X": "a=b"}, {}, "X=a%3Db"),
    ({"X": "a+b"}, {}, "X=a%2Bb"),
    ({"X": "a#b"}, {}, "X=a%23b"),
    ({"X": "100%"}, {}, "X=100%25"),
    ({"X": "a;b"}, {}, "X=a%3Bb"),
    ({"X": "a b"}, {}, "X=a%20b"),
    ({"X": "é"}, {}, "X=%C3%A9"),
    ({"Odd Key&": "v"}, {}, "Odd%20Key%26=v"),
    ({"X": True, "Y": False}, {}, "X=true&Y=false"),
    ({"StudyDate": date(2024, 1, 31)}, {}, "StudyDate=20240131"),
    ({"DT": datetime(2024, 1, 31, 23, 59, 7)}, {}, "DT=20240131235907"),
    ({"StudyTime": time(8, 5, 3)}, {}, "StudyTime=080503"),
    ({"ModalitiesInStudy": ["CT", "MR"]}, {}, "ModalitiesInStudy=CT,MR"),
    ({"ModalitiesInStudy": ("CT",)}, {}, "ModalitiesInStudy=CT"),
    ({"StudyDate": [date(2024, 1, 1), date(2024, 2, 1)]}, {}, "StudyDate=20240101,20240201"),
    ({"00100020": 12, "Missing": None}, {}, "00100020=12"),
    ({}, {"fuzzymatching": True}, "fuzzymatching=true"),
    ({}, {"fuzzymatching": False}, "fuzzymatching=false"),
    ({}, {"limit": 0, "offset": 0}, "limit=0&offset=0"),
    ({}, {"limit": 10, "offset": 20}, "limit=10&offset=20"),
    ({}, {"fields": ["all"]}, "includefield=all"),
    (
        {},
        {"fields": ["00100010", "StudyDescription", "00081030"]},
        "includefield=00100010&includefield=StudyDescription&includefield=00081030",
    ),
    ({}, {"extra": [("x", "1&2"), ("x", "3")]}, "x=1%262&x=3"),
    (
        {"PatientID": "P1"},
        {"fuzzymatching": True, "limit": 5, "offset": 1, "fields": ["all"]},
        "PatientID=P1&fuzzymatching=true&includefield=all&limit=5&offset=1",
    ),
]


@pytest.mark.parametrize(("filters", "options", "expected"), QUERY_CASES)
def test_build_query(filters: dict, options: dict, expected: str) -> None:
    assert build_query(filters, **options) == expected


def test_build_query_none_filters() -> None:
    assert build_query(None) == ""
    assert build_query() == ""


@pytest.mark.parametrize("option", ["limit", "offset"])
@pytest.mark.parametrize("value", [-1, -100])
def test_build_query_rejects_negative_paging(option: str, value: int) -> None:
    with pytest.raises(ValueError, match=option):
        build_query({}, **{option: value})


def test_matching_characters_stay_literal() -> None:
    query = build_query({"PatientName": "*?^,-"})
    assert query == "PatientName=*?^,-"
    assert "%" not in query


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
        max_size=6,
    )
)
def test_build_query_round_trips_through_a_standard_decoder(filters: dict[str, str]) -> None:
    query = build_query(filters)
    # Separators only appear between pairs, never inside an encoded key or value.
    assert query.count("&") == max(0, len(filters) - 1)
    assert query.count("=") == len(filters)
    for reserved in "+# ;":
        assert reserved not in query
    decoded = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(filters))
    assert decoded == list(filters.items())
