"""Fixtures shared by the whole test suite.

Real-server fixtures start Orthanc with its DICOMweb plugin once per session (see
:mod:`dicomweb_async.testing`). Tests that use them are marked ``orthanc`` automatically, so
``-m "not orthanc"`` deselects them. With ``DICOMWEB_ASYNC_NO_ORTHANC=1`` they are skipped;
without it, a missing Orthanc is an error, so that a CI run cannot pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomweb_async.testing import OrthancServer

DATA_DIR = Path(__file__).parent / "data"
SEED_NAMES = ("blue-circle.dcm", "green-square.dcm", "red-triangle.dcm")
BASIC_USERS = {"user": "pass"}

_NO_ORTHANC_VAR = "DICOMWEB_ASYNC_NO_ORTHANC"
_ORTHANC_FIXTURES = frozenset(
    {"orthanc", "orthanc_basic", "clean_orthanc", "second_orthanc", "clean_second_orthanc"}
)


def _orthanc_disabled() -> bool:
    return os.environ.get(_NO_ORTHANC_VAR, "").strip().lower() in {"1", "true", "yes"}


# tryfirst: the markers must be in place before `-m` deselection looks at them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"{_NO_ORTHANC_VAR}=1: tests needing Orthanc are skipped")
    for item in items:
        # fixturenames is the transitive closure, so fixtures built on these count too.
        if _ORTHANC_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.orthanc)
        if _orthanc_disabled() and item.get_closest_marker("orthanc") is not None:
            item.add_marker(skip)


# -- real servers -------------------------------------------------------------------------


def _serve(users: dict[str, str] | None = None) -> Iterator[OrthancServer]:
    if _orthanc_disabled():
        pytest.skip(f"{_NO_ORTHANC_VAR}=1: tests needing Orthanc are skipped")
    with OrthancServer(users=users) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """An Orthanc server without authentication, shared by the whole session."""
    yield from _serve()


@pytest.fixture(scope="session")
def orthanc_basic() -> Iterator[OrthancServer]:
    """An Orthanc server requiring HTTP Basic auth as ``user`` / ``pass``."""
    yield from _serve(BASIC_USERS)


@pytest.fixture
def clean_orthanc(orthanc: OrthancServer) -> OrthancServer:
    """The session's `orthanc` server, emptied before the test."""
    orthanc.reset()
    return orthanc


@pytest.fixture(scope="session")
def second_orthanc() -> Iterator[OrthancServer]:
    """Another Orthanc server, for copies from one server to another."""
    yield from _serve()


@pytest.fixture
def clean_second_orthanc(second_orthanc: OrthancServer) -> OrthancServer:
    """The session's `second_orthanc` server, emptied before the test."""
    second_orthanc.reset()
    return second_orthanc


# -- data -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    """The directory with the seed instances and ``dicom-metadata.csv``."""
    return DATA_DIR


@pytest.fixture(scope="session")
def seed_files(seed_dir: Path) -> list[Path]:
    """The three seed DICOM files, sorted by path."""
    return sorted(seed_dir / name for name in SEED_NAMES)


# -- HTTP engines -----------------------------------------------------------------------------

_ENGINE_VAR = "DICOMWEB_ASYNC_ENGINE"
ENGINES = ("aiohttp", "httpcore")
# respx intercepts httpcore, so the wire-format tests that use it run on that engine.
_RESPX_MODULES = frozenset(
    {
        "test_wire",
        "test_azure_admin",
        "test_azure_client",
        "test_changefeed",
        "test_conformance_collection",
        "test_server_quirks",
    }
)
# Real transfers over loopback sockets (streaming, truncation, replay after 401 and 503,
# dropped connections, TLS, cancellation, bulk transfer, kill and resume) run on every engine.
_EVERY_ENGINE_MODULES = frozenset(
    {"test_streaming", "test_bulk_upload", "test_bulk_download", "test_kill_resume"}
)


def _module_name(module: object) -> str:
    return str(getattr(module, "__name__", "")).rsplit(".", 1)[-1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _module_name(metafunc.module) in _EVERY_ENGINE_MODULES:
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture(autouse=True)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The engine that ``engine="auto"`` stands for in this test (None: the usual choice)."""
    chosen: str | None = getattr(request, "param", None)
    if chosen is None and _module_name(request.module) in _RESPX_MODULES:
        chosen = "httpcore"
    if chosen is None:
        monkeypatch.delenv(_ENGINE_VAR, raising=False)
    else:
        monkeypatch.setenv(_ENGINE_VAR, chosen)
    return chosen
