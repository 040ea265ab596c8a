"""Fixtures shared by the bulk upload and bulk download tests.

A test module takes them by binding ``server`` and ``client`` to names of its own
(``server = bulk_fixtures.server``), which pytest collects like fixtures defined there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dicomweb_async import AsyncDICOMwebClient, RetryPolicy
from tests.loopback_server import LoopbackServer

RETRY = RetryPolicy(attempts=4, backoff=0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    """A loopback server that keeps what it is sent below ``tmp_path``."""
    with LoopbackServer(storage_dir=tmp_path / "server-store") as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
async def client(server: LoopbackServer) -> AsyncIterator[AsyncDICOMwebClient]:
    """A client of ``server`` that retries at once."""
    async with AsyncDICOMwebClient(server.url, retry=RETRY) as c:
        yield c
