"""Helpers for testing code that talks to a DICOMweb server.

:class:`AzureDicomEmulator` imitates the Azure Health Data Services DICOM service (API v1
and v2, partitions, change feed, extended query tags, operations, bulk update and bearer
authentication) in memory, in-process through an httpx transport or on a loopback port::

    import httpx
    from dicomweb_async import AsyncDICOMwebClient
    from dicomweb_async.testing import AzureDicomEmulator

    emulator = AzureDicomEmulator()
    http = httpx.AsyncClient(transport=emulator.transport())
    client = AsyncDICOMwebClient("http://emulator/v2", http_client=http)

:class:`OrthancServer` runs a real, private Orthanc server with its DICOMweb plugin on a free
loopback port, for integration tests that must see real sockets and real server behaviour::

    import pytest
    from dicomweb_async.testing import OrthancServer


    @pytest.fixture(scope="session")
    def orthanc():
        with OrthancServer() as server:
            yield server

Orthanc itself is not a Python package; on Debian or Ubuntu install it with
``apt-get install orthanc orthanc-dicomweb``.
"""

from __future__ import annotations

from .. import _present_as_public
from ._emulator.app import RecordedRequest
from ._emulator.emulator import AzureDicomEmulator
from ._emulator.http import EmulatorServer
from ._orthanc import OrthancNotAvailable, OrthancServer

__all__ = [
    "AzureDicomEmulator",
    "EmulatorServer",
    "OrthancNotAvailable",
    "OrthancServer",
    "RecordedRequest",
]

_present_as_public(globals(), __name__)
