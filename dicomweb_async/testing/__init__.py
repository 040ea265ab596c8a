"""Helpers for testing code that talks to a DICOMweb server.

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

from ._orthanc import OrthancNotAvailable, OrthancServer

__all__ = ["OrthancNotAvailable", "OrthancServer"]
