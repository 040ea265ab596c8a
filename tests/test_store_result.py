"""Tests of STOW-RS response parsing and of the retry policy (no I/O)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from dicomweb_async import (
    DICOMwebError,
    FailureReason,
    ProtocolError,
    RetryPolicy,
    StoreFailedError,
    StoreOutcome,
    StoreResult,
)
from dicomweb_async._core.retry import parse_retry_after
from dicomweb_async._core.store_result import parse_store_response

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
BASE = "http://pacs.example/dicom-web"


# -- DICOM JSON builders ----------------------------------------------------------------------


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def sop_item(
    sop_class: str,
    sop_instance: str,
    *,
    url: str | None = None,
    failure: int | None = None,
    warning: int | None = None,
    comments: tuple[str, ...] = (),
) -> dict[str, Any]:
    item = {"00081150": element("UI", sop_class), "00081155": element("UI", sop_instance)}
    if url is not None:
        item["00081190"] = element("UR", url)
    if failure is not None:
        item["00081197"] = element("US", failure)
    if warning is not None:
        item["00081196"] = element("US", warning)
    if comments:
        item["00741048"] = element("SQ", *({"00000902": element("LO", c)} for c in comments))
    return item


def response(
    stored: list[dict[str, Any]] = (),  # type: ignore[assignment]
    failed: list[dict[str, Any]] = (),  # type: ignore[assignment]
    url: str | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if url is not None:
        obj["00081190"] = element("UR", url)
    if failed:
        obj["00081198"] = element("SQ", *failed)
    if stored:
        obj["00081199"] = element("SQ", *stored)
    return obj


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


# -- parse_store_response -------------------------------------------------------------------


def test_all_stored() -> None:
    body = response(
        stored=[
            sop_item(CT, "1.2.3.1", url=f"{BASE}/studies/1.2.3/series/4/instances/1.2.3.1"),
            sop_item(CT, "1.2.3.2", url=f"{BASE}/studies/1.2.3/series/4/instances/1.2.3.2"),
        ],
        url=f"{BASE}/studies/1.2.3",
    )
    result = parse_store_response(200, encode(body))
    assert result.status_code == 200
    assert result.ok
    assert result.retrieve_url == f"{BASE}/studies/1.2.3"
    assert result.stored == [
        StoreOutcome(CT, "1.2.3.1", None, f"{BASE}/studies/1.2.3/series/4/instances/1.2.3.1"),
        StoreOutcome(CT, "1.2.3.2", None, f"{BASE}/studies/1.2.3/series/4/instances/1.2.3.2"),
    ]
    assert result.failed == []
    assert result.warnings == []
    assert result.raise_for_failures() is result
    # The body is also available as a Dataset.
    assert len(result.dataset.ReferencedSOPSequence) == 2
    assert result.dataset.ReferencedSOPSequence[1].ReferencedSOPInstanceUID == "1.2.3.2"


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        (45070, "ALREADY_STORED"),
        (43265, "STUDY_UID_MISMATCH"),
        (272, "PROCESSING_FAILURE"),
    ],
)
def test_failure_reasons(reason: int, name: str) -> None:
    assert getattr(FailureReason, name) == reason
    body = response(
        stored=[sop_item(SC, "9.1")],
        failed=[sop_item(SC, "9.2", failure=reason)],
    )
    result = parse_store_response(202, encode(body))
    assert not result.ok
    assert [o.sop_instance_uid for o in result.stored] == ["9.1"]
    assert result.failed == [StoreOutcome(SC, "9.2", reason)]
    with pytest.raises(StoreFailedError) as info:
        result.raise_for_failures()
    error = info.value
    assert isinstance(error, DICOMwebError)
    assert error.result is result
    assert str(reason) in str(error)
    assert "1 instance(s) not stored" in str(error)
    assert "1 stored" in str(error)


def test_failed_attributes_error_comments() -> None:
    body = response(
        failed=[
            sop_item(
                CT,
                "7.7",
                failure=43264,
                comments=("PatientID is missing", "StudyDate is malformed"),
            ),
            sop_item(CT, "7.8", failure=45070),
        ]
    )
    result = parse_store_response(409, encode(body))
    assert result.stored == []
    assert [o.reason for o in result.failed] == [43264, 45070]
    assert result.failed[0].error_comments == ("PatientID is missing", "StudyDate is malformed")
    assert result.failed[1].error_comments == ()
    with pytest.raises(StoreFailedError) as info:
        result.raise_for_failures()
    assert "43264" in str(info.value)
    assert "45070" in str(info.value)
    assert "409" in str(info.value)


def test_warning_reason() -> None:
    body = response(
        stored=[
            sop_item(CT, "5.1"),
            sop_item(CT, "5.2", warning=45056),
            sop_item(CT, "5.3", warning=49442),
        ]
    )
    result = parse_store_response(202, encode(body))
    assert [o.sop_instance_uid for o in result.stored] == ["5.1", "5.2", "5.3"]
    assert [(o.sop_instance_uid, o.reason) for o in result.warnings] == [
        ("5.2", 45056),
        ("5.3", 49442),
    ]
    assert result.failed == []
    # Warnings alone are not failures.
    assert result.ok
    assert result.raise_for_failures() is result


@pytest.mark.parametrize("body", [b"", b"  \r\n\t "])
@pytest.mark.parametrize("status", [200, 202, 409])
def test_empty_body(body: bytes, status: int) -> None:
    result = parse_store_response(status, body)
    assert result.status_code == status
    assert result.stored == result.failed == result.warnings == []
    assert result.retrieve_url is None
    assert len(result.dataset) == 0
    assert result.ok is (status < 300)


def test_empty_body_with_error_status_raises() -> None:
    result = parse_store_response(409, b"")
    with pytest.raises(StoreFailedError) as info:
        result.raise_for_failures()
    assert info.value.result is result
    assert "409" in str(info.value)


def test_list_wrapped_object() -> None:
    body = [response(stored=[sop_item(SC, "3.1")], failed=[sop_item(SC, "3.2", failure=272)])]
    result = parse_store_response(202, encode(body))
    assert [o.sop_instance_uid for o in result.stored] == ["3.1"]
    assert [(o.sop_instance_uid, o.reason) for o in result.failed] == [("3.2", 272)]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Internal Server Error</html>",
        b"{not json",
        b"\xff\xfe\x00",
        b'"just a string"',
        b"42",
        b"null",
        b"[]",
        b"[{}, {}]",
        b'{"00081199": {"vr": "SQ", "Value": "not a list"}}',
    ],
)
def test_not_a_dicom_json_object(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_store_response(200, body)


def test_items_without_values_are_tolerated() -> None:
    body = {
        "00081199": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI"}}]},
        "00081198": {"vr": "SQ"},
    }
    result = parse_store_response(200, encode(body))
    assert result.stored == [StoreOutcome(None, None)]
    assert result.failed == []


def test_store_result_ok_status_rules() -> None:
    assert StoreResult(200).ok
    assert StoreResult(202, warnings=[StoreOutcome(SC, "1", 45056)]).ok
    assert not StoreResult(300).ok
    assert not StoreResult(500).ok
    assert not StoreResult(200, failed=[StoreOutcome(SC, "1")]).ok


# -- parse_retry_after ------------------------------------------------------------------------

NOW = datetime(2024, 5, 6, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("2.5", 2.5),
        ("-5", 0.0),
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("Mon, 32 Foo 2024 99:99:99 GMT", None),
        ("12 apples", None),
    ],
)
def test_parse_retry_after_seconds_and_garbage(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("seconds", [1, 30, 3600, 86400 * 2])
def test_parse_retry_after_future_date(seconds: int) -> None:
    value = format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [1, 3600, 86400 * 365])
def test_parse_retry_after_past_date(seconds: int) -> None:
    value = format_datetime(NOW - timedelta(seconds=seconds), usegmt=True)
    assert parse_retry_after(value, now=NOW) == 0.0


def test_parse_retry_after_date_forms() -> None:
    # IMF-fixdate, and the same instant with a numeric zone and with "-0000" (no zone).
    assert parse_retry_after("Mon, 06 May 2024 12:01:00 GMT", now=NOW) == 60.0
    assert parse_retry_after("Mon, 06 May 2024 14:01:00 +0200", now=NOW) == 60.0
    assert parse_retry_after("Mon, 06 May 2024 12:01:00 -0000", now=NOW) == 60.0


def test_parse_retry_after_defaults_to_current_time() -> None:
    future = datetime.now(timezone.utc) + timedelta(seconds=100)
    waited = parse_retry_after(format_datetime(future, usegmt=True))
    assert waited is not None
    assert 95 <= waited <= 100


# -- RetryPolicy --------------------------------------------------------------------------------


@pytest.fixture
def seeded() -> Iterator[None]:
    state = random.getstate()
    random.seed(1234)
    yield
    random.setstate(state)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("policy", "attempt", "low", "high"),
    [
        (RetryPolicy(), 1, 0.25, 0.5),
        (RetryPolicy(), 2, 0.5, 1.0),
        (RetryPolicy(), 3, 1.0, 2.0),
        (RetryPolicy(backoff=1.0, max_backoff=5.0), 3, 2.0, 4.0),
        (RetryPolicy(backoff=1.0, max_backoff=5.0), 4, 2.5, 5.0),
        (RetryPolicy(backoff=1.0, max_backoff=5.0), 20, 2.5, 5.0),
        (RetryPolicy(backoff=0.0), 5, 0.0, 0.0),
    ],
)
def test_delay_without_retry_after(policy: RetryPolicy, attempt: int, low: float, high: float):
    delays = [policy.delay(attempt) for _ in range(300)]
    assert all(low <= d <= high for d in delays), (min(delays), max(delays))
    if high > low:
        # Jittered: not every client waits the same time.
        assert len(set(delays)) > 1
        assert min(delays) < low + (high - low) / 4
        assert max(delays) > high - (high - low) / 4


def test_delay_capped_for_any_attempt() -> None:
    policy = RetryPolicy(attempts=5000, backoff=0.5, max_backoff=30.0)
    assert 15.0 <= policy.delay(2000) <= 30.0


@pytest.mark.parametrize(
    ("policy", "header", "expected"),
    [
        (RetryPolicy(), "0", 0.0),
        (RetryPolicy(), "7", 7.0),
        (RetryPolicy(), "120", 120.0),
        (RetryPolicy(), "121", 120.0),
        (RetryPolicy(max_retry_after=10.0), "3600", 10.0),
        # Retry-After is not limited by max_backoff, only by max_retry_after.
        (RetryPolicy(max_backoff=1.0), "50", 50.0),
    ],
)
def test_delay_with_retry_after(policy: RetryPolicy, header: str, expected: float) -> None:
    for attempt in (1, 2, 10):
        assert policy.delay(attempt, header) == expected


def test_delay_with_retry_after_date() -> None:
    policy = RetryPolicy(max_retry_after=1000.0)
    future = datetime.now(timezone.utc) + timedelta(seconds=300)
    delay = policy.delay(1, format_datetime(future, usegmt=True))
    assert 295 <= delay <= 300
    past = datetime.now(timezone.utc) - timedelta(seconds=300)
    assert policy.delay(1, format_datetime(past, usegmt=True)) == 0.0
    far = datetime.now(timezone.utc) + timedelta(days=3)
    assert policy.delay(1, format_datetime(far, usegmt=True)) == 1000.0


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("header", [None, "", "garbage", "Thu, 99 Nope"])
def test_delay_with_unusable_retry_after_falls_back_to_backoff(header: str | None) -> None:
    policy = RetryPolicy(backoff=2.0, max_backoff=100.0)
    for _ in range(100):
        # Try 2 waits between half and all of backoff * 2.
        assert 2.0 <= policy.delay(2, header) <= 4.0


@pytest.mark.parametrize(
    ("attempts", "attempt", "status", "expected"),
    [
        (3, 1, 503, True),
        (3, 2, 503, True),
        (3, 3, 503, False),
        (3, 4, 503, False),
        (3, 1, 429, True),
        (3, 1, 502, True),
        (3, 1, 504, True),
        (3, 1, 500, False),
        (3, 1, 404, False),
        (3, 1, 200, False),
        (1, 1, 503, False),
    ],
)
def test_should_retry_status(attempts: int, attempt: int, status: int, expected: bool) -> None:
    assert RetryPolicy(attempts=attempts).should_retry_status(attempt, status) is expected


def test_should_retry_status_custom_statuses() -> None:
    policy = RetryPolicy(attempts=2, statuses=frozenset({500}))
    assert policy.should_retry_status(1, 500)
    assert not policy.should_retry_status(1, 503)
    assert not policy.should_retry_status(2, 500)


@pytest.mark.parametrize(
    ("attempts", "attempt", "connection_errors", "expected"),
    [
        (3, 1, True, True),
        (3, 2, True, True),
        (3, 3, True, False),
        (1, 1, True, False),
        (3, 1, False, False),
    ],
)
def test_should_retry_error(
    attempts: int, attempt: int, connection_errors: bool, expected: bool
) -> None:
    policy = RetryPolicy(attempts=attempts, retry_connection_errors=connection_errors)
    assert policy.should_retry_error(attempt) is expected


def test_the_bulk_policy() -> None:
    policy = RetryPolicy.for_bulk()
    assert policy.attempts == 8 and policy.deadline == 900.0
    assert policy.max_backoff == 15.0 and policy.statuses == RetryPolicy().statuses
    assert RetryPolicy.for_bulk(3, deadline=None) == RetryPolicy(
        attempts=3, backoff=0.5, max_backoff=15.0, deadline=None
    )
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy.for_bulk(0)


def test_deadline_bounds_the_waits() -> None:
    policy = RetryPolicy(deadline=10.0)
    assert policy.within_deadline(4.0, 6.0)
    assert not policy.within_deadline(4.0, 6.5)
    assert RetryPolicy().within_deadline(1e9, 1e9)


def test_what_is_transient() -> None:
    from dicomweb_async import HTTPStatusError, MultipartError, ProtocolError, TransportError
    from dicomweb_async import TimeoutError as RequestTimeout

    policy = RetryPolicy()
    assert policy.is_transient(TransportError("connection reset"))
    assert policy.is_transient(RequestTimeout("read timed out"))
    assert policy.is_transient(MultipartError("body ended early", truncated=True))
    assert not policy.is_transient(MultipartError("bad boundary"))
    assert not policy.is_transient(ProtocolError("not JSON"))
    assert policy.is_transient(HTTPStatusError("busy", status_code=503))
    assert not policy.is_transient(HTTPStatusError("bad", status_code=400))
    assert not policy.is_transient(ValueError("no"))
    assert not RetryPolicy(retry_connection_errors=False).is_transient(TransportError("x"))
