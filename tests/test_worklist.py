"""The worklist (UPS-RS): a workitem's whole life on the emulator, both front ends, with the
status codes the state machine promises for wrong transaction UIDs and illegal moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb_async import (
    AsyncDICOMwebClient,
    ConflictError,
    HTTPStatusError,
    NotFoundError,
    Workitem,
)
from dicomweb_async.testing import AzureDicomEmulator

FRONTS = ["in-process", "loopback"]


@pytest.fixture(params=FRONTS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[AsyncDICOMwebClient]:
    emulator = AzureDicomEmulator()
    if request.param == "in-process":
        import httpx

        async with (
            httpx.AsyncClient(transport=emulator.transport()) as http,
            AsyncDICOMwebClient("http://emulator/v2", http_client=http) as c,
        ):
            yield c
    else:
        async with emulator.serve(api_version=2) as url, AsyncDICOMwebClient(url) as c:
            yield c
    assert emulator.errors == []


def workitem(patient: str, label: str = "Reading") -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName = patient
    ds.PatientID = patient.split("^")[0].upper()
    ds.WorklistLabel = label
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    return ds


def bad_request(raised: pytest.ExceptionInfo[HTTPStatusError]) -> str:
    assert raised.value.status_code == 400, raised.value
    return str(raised.value)


async def test_a_workitem_from_scheduled_to_completed(client: AsyncDICOMwebClient) -> None:
    uid = await client.create_workitem(workitem("Doe^Jane"))
    with pytest.raises(ConflictError):
        await client.create_workitem(workitem("Doe^Jane"), workitem_uid=uid)

    item = await client.retrieve_workitem(uid)
    assert isinstance(item, Workitem) and item.uid == uid and item.state == "SCHEDULED"
    assert item.value("00100010") == "Doe^Jane"

    # Unclaimed: updated without a transaction UID, never with one.
    await client.update_workitem(uid, {"00741202": {"vr": "LO", "Value": ["Urgent"]}})
    assert (await client.retrieve_workitem(uid)).value("00741202") == "Urgent"
    tuid = str(generate_uid())
    with pytest.raises(HTTPStatusError) as raised:
        await client.update_workitem(uid, workitem("Doe^Jane", "X"), transaction_uid=tuid)
    assert "no Transaction UID yet" in bad_request(raised)
    with pytest.raises(HTTPStatusError) as raised:
        await client.change_workitem_state(uid, "COMPLETED", tuid)
    assert "goes IN PROGRESS first" in bad_request(raised)

    # Claimed: the transaction UID is needed, and never shown.
    await client.change_workitem_state(uid, "IN PROGRESS", tuid)
    claimed = await client.retrieve_workitem(uid)
    assert claimed.state == "IN PROGRESS" and "00081195" not in claimed.dataset
    for given in (None, str(generate_uid())):
        with pytest.raises(HTTPStatusError) as raised:
            await client.update_workitem(uid, {"00741202": {"vr": "LO"}}, transaction_uid=given)
        assert "Transaction UID" in bad_request(raised)
    await client.update_workitem(
        uid, {"00741202": {"vr": "LO", "Value": ["Done soon"]}}, transaction_uid=tuid
    )
    with pytest.raises(HTTPStatusError) as raised:
        await client.change_workitem_state(uid, "COMPLETED", str(generate_uid()))
    assert "does not match" in bad_request(raised)
    await client.change_workitem_state(uid, "COMPLETED", tuid)

    # Final: nothing more (409).
    done = await client.retrieve_workitem(uid)
    assert done.state == "COMPLETED" and done.value("00741202") == "Done soon"
    with pytest.raises(HTTPStatusError) as raised:
        await client.update_workitem(uid, {"00741202": {"vr": "LO"}}, transaction_uid=tuid)
    assert "can no longer change" in bad_request(raised)
    with pytest.raises(ConflictError):
        await client.change_workitem_state(uid, "CANCELED", tuid)
    with pytest.raises(ConflictError):
        await client.request_workitem_cancellation(uid, reason="too late")


async def test_cancellation_of_scheduled_and_claimed_workitems(
    client: AsyncDICOMwebClient,
) -> None:
    scheduled = await client.create_workitem(workitem("Roe^Richard"))
    await client.request_workitem_cancellation(scheduled, reason="Patient left")
    assert (await client.retrieve_workitem(scheduled)).state == "CANCELED"

    claimed = await client.create_workitem(workitem("Poe^Edgar"))
    tuid = str(generate_uid())
    await client.change_workitem_state(claimed, "IN PROGRESS", tuid)
    # Passed on to the performer; the state is theirs to change.
    await client.request_workitem_cancellation(
        claimed, dataset_or_json={"0074100C": {"vr": "LO", "Value": ["Front desk"]}}
    )
    assert (await client.retrieve_workitem(claimed)).state == "IN PROGRESS"
    await client.change_workitem_state(claimed, "CANCELED", tuid)
    assert (await client.retrieve_workitem(claimed)).state == "CANCELED"
    with pytest.raises(ConflictError):
        await client.request_workitem_cancellation(claimed)


async def test_search_pages_and_refusals(client: AsyncDICOMwebClient) -> None:
    uids = [await client.create_workitem(workitem(f"Doe^{n}")) for n in ("A", "B", "C")]
    other = await client.create_workitem(workitem("Smith^Zed"))
    await client.request_workitem_cancellation(other)

    found = await client.search_for_workitems({"PatientName": "Doe^*"})
    assert sorted(w.uid for w in found) == sorted(uids)
    assert all(w.state == "SCHEDULED" for w in found)
    paged = [
        w.uid async for w in client.iter_search_for_workitems({"PatientName": "Doe^*"}, limit=1)
    ]
    assert sorted(paged) == sorted(uids)
    canceled = await client.search_for_workitems({"ProcedureStepState": "CANCELED"})
    assert [w.uid for w in canceled] == [other]
    assert await client.search_for_workitems({"PatientName": "Nobody"}) == []

    with pytest.raises(NotFoundError):
        await client.retrieve_workitem(str(generate_uid()))
    with pytest.raises(ValueError, match="state must be one of"):
        await client.change_workitem_state(uids[0], "DONE", str(generate_uid()))
    started = workitem("Doe^D")
    started.ProcedureStepState = "IN PROGRESS"
    with pytest.raises(HTTPStatusError) as raised:
        await client.create_workitem(started)
    assert "created SCHEDULED" in bad_request(raised)
    with pytest.raises(ValueError, match="not a DICOM JSON tag"):
        await client.create_workitem({"PatientName": {"vr": "PN"}})
