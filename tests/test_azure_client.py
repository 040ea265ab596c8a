"""Addressing of the Azure DICOM service: versioned base URL, partitions, defaults."""

from __future__ import annotations

import httpx
import pytest
import respx
from azure.core.credentials import AccessToken

from dicomweb_async import AsyncDICOMwebClient, AzureADAuth

SERVICE = "http://127.0.0.1:8042"


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("token-1", 4_000_000_000)


async def test_base_url_version_and_defaults() -> None:
    async with AsyncDICOMwebClient.for_azure(SERVICE + "/") as client:
        assert client.base_url == SERVICE + "/v2"
        assert client.service_root == SERVICE + "/v2"
        assert client.max_page_size == 200
        assert client.reject_implicit_vr is True
    async with AsyncDICOMwebClient.for_azure(
        SERVICE, api_version="v1", max_page_size=50, reject_implicit_vr=False
    ) as client:
        assert client.base_url == SERVICE + "/v1"
        assert client.max_page_size == 50
        assert client.reject_implicit_vr is False


async def test_partition_addresses_every_request() -> None:
    with respx.mock(base_url=SERVICE, assert_all_mocked=True) as router:
        route = router.get("/v2/partitions/Microsoft.Default/studies").mock(
            return_value=httpx.Response(204)
        )
        async with AsyncDICOMwebClient.for_azure(SERVICE, partition="Microsoft.Default") as c:
            assert c.service_root == SERVICE + "/v2"
            assert await c.search_for_studies(limit=500) == []
    assert route.calls.last.request.url.query == b"limit=200"


@pytest.mark.parametrize("name", ["", "a/b", "..", "x y", "p" * 65])
def test_bad_partition_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="partition"):
        AsyncDICOMwebClient.for_azure(SERVICE, partition=name)


async def test_credential_becomes_azure_ad_auth() -> None:
    credential = FakeCredential()
    with respx.mock(base_url=SERVICE, assert_all_mocked=True) as router:
        route = router.get("/v2/studies").mock(return_value=httpx.Response(200, json=[]))
        async with AsyncDICOMwebClient.for_azure(SERVICE, credential) as client:
            assert isinstance(client.http_client.auth, AzureADAuth)
            await client.search_for_studies()
    assert route.calls.last.request.headers["Authorization"] == "Bearer token-1"
    assert credential.scopes == [("https://dicom.healthcareapis.azure.com/.default",)]


def test_credential_and_auth_together_are_refused() -> None:
    with pytest.raises(ValueError, match="credential or auth"):
        AsyncDICOMwebClient.for_azure(SERVICE, FakeCredential(), auth="token")


async def test_admin_routes_use_the_versioned_root_and_updates_the_partition() -> None:
    operation = {
        "operationId": "0f0e",
        "type": "update",
        "status": "succeeded",
        "percentComplete": 100,
        "createdTime": "2026-11-25T10:00:00.1234567Z",
        "lastUpdatedTime": "2026-11-25T10:00:01Z",
    }
    with respx.mock(base_url=SERVICE, assert_all_mocked=True) as router:
        partitions = router.get("/v2/partitions").mock(
            return_value=httpx.Response(
                200, json=[{"partitionKey": 1, "partitionName": "Microsoft.Default"}]
            )
        )
        tags = router.get("/v2/extendedquerytags").mock(return_value=httpx.Response(200, json=[]))
        status = router.get("/v2/operations/0f0e").mock(
            return_value=httpx.Response(200, json=operation)
        )
        update = router.post("/v2/partitions/p1/studies/$bulkUpdate").mock(
            return_value=httpx.Response(202, json={"id": "0f0e", "href": "x"})
        )
        async with AsyncDICOMwebClient.for_azure(SERVICE, partition="p1") as client:
            assert [p.name for p in await client.list_partitions()] == ["Microsoft.Default"]
            assert await client.list_extended_query_tags() == []
            op = await client.update_studies(
                ["1.2.3"], {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}
            )
            state = await op.wait(interval=0.0)
            assert state.succeeded
            assert (await client.get_operation("0f0e")).operation_id == "0f0e"
    assert partitions.call_count == tags.call_count == update.call_count == 1
    assert status.call_count == 2
