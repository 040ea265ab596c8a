"""Tests of the OrthancServer test helper itself."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import dicomweb_async.testing
from dicomweb_async.testing import OrthancNotAvailable, OrthancServer, _orthanc

INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"


def _client(auth: tuple[str, str] | None = None) -> httpx.Client:
    # trust_env=False: a proxy from the environment must not intercept loopback requests.
    return httpx.Client(auth=auth, trust_env=False, timeout=30.0)


def _upload(server: OrthancServer, files: list[Path]) -> None:
    with _client(server.auth) as client:
        for path in files:
            response = client.post(
                f"{server.url}/instances",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            assert response.status_code == 200, response.text


def _studies(server: OrthancServer) -> list[object]:
    with _client(server.auth) as client:
        response = client.get(f"{server.dicomweb_url}/studies")
    assert response.status_code == 200
    studies: list[object] = response.json()
    return studies


def _fake_binary(directory: Path, body: str) -> Path:
    """An executable shell script standing in for Orthanc."""
    script = directory / "fake-orthanc"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- without Orthanc ----------------------------------------------------------------------


def test_public_names() -> None:
    assert dicomweb_async.testing.__all__ == [
        "AzureDicomEmulator",
        "EmulatorServer",
        "OrthancNotAvailable",
        "OrthancServer",
        "RecordedRequest",
    ]
    assert issubclass(OrthancNotAvailable, RuntimeError)


def test_not_running_before_start() -> None:
    server = OrthancServer()
    assert not server.is_running
    assert repr(server) == "<OrthancServer stopped>"
    for name in ("url", "dicomweb_url", "port", "pid"):
        with pytest.raises(RuntimeError, match="not running"):
            getattr(server, name)
    with pytest.raises(RuntimeError, match="not running"):
        server.reset()
    server.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": {}}, "at least one user"),
        ({"users": {"a:b": "c"}}, "cannot contain ':'"),
        ({"startup_timeout": 0}, "must be positive"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OrthancServer(**kwargs)  # type: ignore[arg-type]


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-Orthanc"
    with pytest.raises(OrthancNotAvailable) as caught:
        OrthancServer(binary=missing).start()
    assert str(missing) in str(caught.value)
    assert INSTALL_HINT in str(caught.value)


def test_missing_plugin_says_how_to_install(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "exit 0")
    missing = tmp_path / "libOrthancDicomWeb.so"
    with pytest.raises(OrthancNotAvailable) as caught:
        OrthancServer(binary=binary, plugin=missing).start()
    assert "plugin" in str(caught.value)
    assert str(missing) in str(caught.value)
    assert INSTALL_HINT in str(caught.value)


def test_silent_server_times_out_with_log_and_is_killed(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.so"
    plugin.touch()
    # exec keeps the pid, so the recorded pid is the process the helper must stop.
    binary = _fake_binary(
        tmp_path,
        f'echo $$ > "{tmp_path}/pid"; pwd > "{tmp_path}/cwd"; echo "fake server hello"; '
        "exec sleep 60",
    )
    server = OrthancServer(binary=binary, plugin=plugin, startup_timeout=0.5)
    with pytest.raises(OrthancNotAvailable) as caught:
        server.start()
    assert "within 0.5 s" in str(caught.value)
    assert "fake server hello" in str(caught.value)
    _assert_gone(int((tmp_path / "pid").read_text()))
    assert not Path((tmp_path / "cwd").read_text().strip()).exists()
    assert not server.is_running


def test_early_exit_is_reported_without_retry(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.so"
    plugin.touch()
    binary = _fake_binary(tmp_path, f'echo run >> "{tmp_path}/runs"; echo "boom" >&2; exit 3')
    with pytest.raises(OrthancNotAvailable) as caught:
        OrthancServer(binary=binary, plugin=plugin).start()
    assert "code 3" in str(caught.value)
    assert "boom" in str(caught.value)
    assert (tmp_path / "runs").read_text().count("run") == 1


def test_port_conflict_is_retried_three_times(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.so"
    plugin.touch()
    binary = _fake_binary(
        tmp_path,
        f'echo run >> "{tmp_path}/runs"; '
        'echo "The TCP port of the HTTP server is privileged or already in use"; exit 255',
    )
    with pytest.raises(OrthancNotAvailable, match="code 255"):
        OrthancServer(binary=binary, plugin=plugin).start()
    assert (tmp_path / "runs").read_text().count("run") == 3


# -- with Orthanc -------------------------------------------------------------------------


@pytest.mark.orthanc
def test_serves_dicomweb_on_loopback(orthanc: OrthancServer) -> None:
    assert orthanc.is_running
    assert orthanc.url == f"http://127.0.0.1:{orthanc.port}"
    assert orthanc.dicomweb_url == f"{orthanc.url}/dicom-web"
    assert orthanc.auth is None
    os.kill(orthanc.pid, 0)
    with _client() as client:
        response = client.get(f"{orthanc.dicomweb_url}/studies")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert isinstance(response.json(), list)


@pytest.mark.orthanc
def test_reset_deletes_everything(orthanc: OrthancServer, seed_files: list[Path]) -> None:
    _upload(orthanc, seed_files)
    assert _studies(orthanc)
    orthanc.reset()
    assert _studies(orthanc) == []
    with _client() as client:
        assert client.get(f"{orthanc.url}/instances").json() == []
        assert client.get(f"{orthanc.url}/changes").json()["Changes"] == []


@pytest.mark.orthanc
def test_clean_orthanc_starts_empty(clean_orthanc: OrthancServer) -> None:
    assert _studies(clean_orthanc) == []


@pytest.mark.orthanc
def test_basic_auth(orthanc_basic: OrthancServer, seed_files: list[Path]) -> None:
    assert orthanc_basic.auth == ("user", "pass")
    studies = f"{orthanc_basic.dicomweb_url}/studies"
    with _client() as client:
        assert client.get(studies).status_code == 401
    with _client(("user", "wrong")) as client:
        assert client.get(studies).status_code == 401
    with _client(("user", "pass")) as client:
        assert client.get(studies).status_code == 200
    # reset() has to authenticate as well.
    _upload(orthanc_basic, seed_files[:1])
    orthanc_basic.reset()
    assert _studies(orthanc_basic) == []


@pytest.mark.orthanc
def test_context_manager_stops_process_and_removes_storage() -> None:
    with OrthancServer() as server:
        pid = server.pid
        assert server.is_running
        storage = server._tmpdir
        assert storage is not None
        assert storage.is_dir()
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    _assert_gone(pid)
    assert not storage.exists()
    assert not server.is_running
    with pytest.raises(RuntimeError, match="not running"):
        server.url  # noqa: B018
    server.stop()
    # A stopped server can be started again, with fresh storage.
    server.start()
    try:
        assert server.pid != pid
        assert _studies(server) == []
    finally:
        server.stop()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port with a listening socket that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.orthanc
def test_port_taken_by_silent_socket_is_retried(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken_port])
    real_free_port = _orthanc._free_port
    monkeypatch.setattr(_orthanc, "_free_port", lambda: next(ports, None) or real_free_port())
    with OrthancServer() as server:
        assert server.port != taken_port
        assert _studies(server) == []


class _ImpostorHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a DICOMweb server, but is not the Orthanc that was started."""

    def do_GET(self) -> None:
        body = json.dumps({"Name": "somebody else"} if self.path == "/system" else []).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def impostor_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImpostorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.orthanc
def test_port_taken_by_another_http_server_is_retried(
    impostor_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([impostor_port])
    real_free_port = _orthanc._free_port
    monkeypatch.setattr(_orthanc, "_free_port", lambda: next(ports, None) or real_free_port())
    with OrthancServer() as server:
        assert server.port != impostor_port
        with _client() as client:
            assert client.get(f"{server.url}/system").json()["Name"] != "somebody else"
