"""A throwaway Orthanc server with its DICOMweb plugin, for integration tests.

Mocked transports read a whole request body before answering, so they hide streaming,
reconnection and retry bugs; a real server on a loopback socket does not. Orthanc starts in
a fraction of a second, which makes one server per test session cheap.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeAlias

__all__ = ["OrthancNotAvailable", "OrthancServer"]

_DEFAULT_BINARY = "/usr/sbin/Orthanc"
_DEFAULT_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
_INSTALL_HINT = (
    "install Orthanc and its DICOMweb plugin, e.g. `apt-get install orthanc orthanc-dicomweb` "
    "on Debian or Ubuntu"
)
_HOST = "127.0.0.1"
_START_ATTEMPTS = 3
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 40
_LOG_TAIL_BYTES = 16 * 1024
_STOP_TIMEOUT = 10.0

_Outcome = Literal["ready", "exited", "timeout", "foreign"]
_Finalizer: TypeAlias = "weakref.finalize[[subprocess.Popen[bytes], Path, float], OrthancServer]"


class OrthancNotAvailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is missing, or the server did not come up.

    The message says what was missing and how to install it, or ends with the tail of the
    server's log when it failed to start.
    """


class OrthancServer:
    """A private Orthanc server with the DICOMweb plugin, listening on a free loopback port.

    Each server gets its own temporary configuration and storage directory, which
    :meth:`stop` removes again. The server only answers on 127.0.0.1; nothing is kept
    between runs.

    Parameters
    ----------
    users : Mapping[str, str] or None, optional
        User names and passwords for HTTP Basic authentication. ``None`` (the default)
        turns authentication off.
    binary : str or os.PathLike or None, optional
        The Orthanc executable. By default ``/usr/sbin/Orthanc``, or ``Orthanc`` on the
        ``PATH``.
    plugin : str or os.PathLike or None, optional
        The DICOMweb plugin library. By default
        ``/usr/share/orthanc/plugins/libOrthancDicomWeb.so``.
    startup_timeout : float, optional
        Seconds to wait for the server to answer DICOMweb requests after it was launched.

    Raises
    ------
    ValueError
        If `users` is empty, a user name contains ``:``, or `startup_timeout` is not
        positive.

    See Also
    --------
    OrthancNotAvailable : raised by :meth:`start` when the server cannot be run.

    Examples
    --------
    >>> with OrthancServer() as server:  # doctest: +SKIP
    ...     client = AsyncDICOMwebClient(server.dicomweb_url)
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        plugin: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        if users is not None:
            if not users:
                raise ValueError("users must name at least one user, or be None")
            if any(":" in name for name in users):
                raise ValueError("HTTP Basic user names cannot contain ':'")
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be positive, not {startup_timeout!r}")
        self._users: dict[str, str] | None = dict(users) if users is not None else None
        self._binary = binary
        self._plugin = plugin
        self._startup_timeout = float(startup_timeout)
        # No system proxy may sit between this process and a loopback server.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._finalizer: _Finalizer | None = None

    def __repr__(self) -> str:
        if self._port is None:
            return "<OrthancServer stopped>"
        return f"<OrthancServer {self.url} pid={self.pid}>"

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- properties ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """int : The TCP port the server listens on.

        Raises :class:`RuntimeError` while the server is not running.
        """
        if self._port is None:
            raise RuntimeError("the Orthanc server is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """str : Base URL of the server, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{_HOST}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """str : Base URL of the DICOMweb API, ``url + "/dicom-web"``."""
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int:
        """int : Process id of the running Orthanc.

        Raises :class:`RuntimeError` while the server is not running.
        """
        if self._proc is None:
            raise RuntimeError("the Orthanc server is not running; call start() first")
        return self._proc.pid

    @property
    def auth(self) -> tuple[str, str] | None:
        """tuple of (str, str) or None : Credentials of the first configured user.

        ``None`` when the server runs without authentication.
        """
        if not self._users:
            return None
        return next(iter(self._users.items()))

    @property
    def is_running(self) -> bool:
        """bool : Whether :meth:`start` succeeded and the process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Launch Orthanc and wait until its DICOMweb API answers.

        A port that turns out to be taken when Orthanc binds it (another process won the
        race after the free port was chosen) is replaced by a new one, up to three times.

        Raises
        ------
        OrthancNotAvailable
            If the binary or the plugin is missing, or the server exits or does not answer
            within `startup_timeout` seconds. The message includes the tail of its log.
        RuntimeError
            If the server is already running.
        """
        if self._proc is not None:
            raise RuntimeError("the Orthanc server is already running")
        binary = self._find_binary()
        plugin = self._find_plugin()
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            tmpdir = Path(tempfile.mkdtemp(prefix="orthanc-"))
            name = f"dicomweb-async-{secrets.token_hex(6)}"
            try:
                proc = self._launch(binary, plugin, tmpdir, port, name)
            except BaseException:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
            # Also stops the process if the owner forgets to, e.g. at interpreter exit.
            finalizer = weakref.finalize(self, _shutdown, proc, tmpdir, _STOP_TIMEOUT)
            try:
                outcome, detail = self._wait_ready(proc, port, name)
            except BaseException:
                finalizer()
                raise
            if outcome == "ready":
                self._proc, self._tmpdir, self._port = proc, tmpdir, port
                self._finalizer = finalizer
                return
            log = _log_tail(tmpdir / "orthanc.log")
            finalizer()
            port_taken = outcome == "foreign" or (outcome == "exited" and "already in use" in log)
            if port_taken and attempt < _START_ATTEMPTS:
                continue
            raise OrthancNotAvailable(
                f"Orthanc ({binary}) did not start on port {port}: {detail}\n"
                f"--- last lines of its log ---\n{log}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop the server and delete its storage.

        Sends SIGTERM to the server's own process, waits up to `timeout` seconds, then sends
        SIGKILL. Stopping a server that is not running does nothing.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for a clean shutdown before the process is killed. Orthanc
            usually needs two to three seconds.
        """
        finalizer, proc, tmpdir = self._finalizer, self._proc, self._tmpdir
        self._finalizer = self._proc = self._tmpdir = self._port = None
        if finalizer is None or proc is None or tmpdir is None:
            return
        if finalizer.detach() is not None:
            _shutdown(proc, tmpdir, timeout)

    def reset(self) -> None:
        """Delete every stored study, and the change log, through Orthanc's REST API.

        Lets tests that share one server start from an empty archive.

        Raises
        ------
        RuntimeError
            If the server is not running or refuses a request.
        """
        status, body = self._request("GET", "/studies")
        if status != 200:
            raise RuntimeError(f"GET {self.url}/studies answered HTTP {status}")
        for study in json.loads(body):
            status, _ = self._request("DELETE", f"/studies/{study}")
            # 404: something else deleted it meanwhile, which is just as good.
            if status not in (200, 404):
                raise RuntimeError(f"DELETE {self.url}/studies/{study} answered HTTP {status}")
        status, _ = self._request("DELETE", "/changes")
        if status != 200:
            raise RuntimeError(f"DELETE {self.url}/changes answered HTTP {status}")

    # -- internals ----------------------------------------------------------------------

    def _find_binary(self) -> str:
        if self._binary is not None:
            wanted = os.fspath(self._binary)
            found = shutil.which(wanted)
        else:
            wanted = _DEFAULT_BINARY
            found = shutil.which(_DEFAULT_BINARY) or shutil.which("Orthanc")
        if found is None:
            raise OrthancNotAvailable(
                f"the Orthanc executable was not found ({wanted!r}); {_INSTALL_HINT}, or pass "
                "binary= to OrthancServer"
            )
        return found

    def _find_plugin(self) -> str:
        wanted = os.fspath(self._plugin) if self._plugin is not None else _DEFAULT_PLUGIN
        if not Path(wanted).is_file():
            raise OrthancNotAvailable(
                f"the Orthanc DICOMweb plugin was not found ({wanted!r}); {_INSTALL_HINT}, or "
                "pass plugin= to OrthancServer"
            )
        return wanted

    def _config(self, plugin: str, storage: Path, port: int, name: str) -> dict[str, object]:
        config: dict[str, object] = {
            "Name": name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self._users is not None,
            "Plugins": [plugin],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
            # Without it, includefield asks for tags the index does not hold.
            "StorageAccessOnFind": "Always",
            # Durability is worthless for a server whose storage is deleted on stop.
            "SyncStorageArea": False,
            "SaveJobs": False,
            "StorageCompression": False,
            "KeepAlive": True,
            "TcpNoDelay": True,
            # Enough threads that concurrent clients are not serialized by the server.
            "HttpThreadsCount": 50,
        }
        if self._users is not None:
            config["RegisteredUsers"] = dict(self._users)
        return config

    def _launch(
        self, binary: str, plugin: str, tmpdir: Path, port: int, name: str
    ) -> subprocess.Popen[bytes]:
        storage = tmpdir / "storage"
        storage.mkdir()
        config_path = tmpdir / "orthanc.json"
        config = self._config(plugin, storage, port, name)
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        with open(tmpdir / "orthanc.log", "wb") as log:
            try:
                return subprocess.Popen(
                    [binary, str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmpdir,
                )
            except OSError as exc:
                raise OrthancNotAvailable(
                    f"could not run the Orthanc executable {binary!r}: {exc}; {_INSTALL_HINT}"
                ) from exc

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, name: str
    ) -> tuple[_Outcome, str]:
        deadline = time.monotonic() + self._startup_timeout
        last = "no answer yet"
        while True:
            if proc.poll() is not None:
                return "exited", f"it exited with code {proc.returncode}"
            try:
                status, _ = self._request("GET", "/dicom-web/studies", port=port, timeout=1.0)
            except (OSError, http.client.HTTPException) as exc:
                last = f"last error: {exc}"
            else:
                if status == 200:
                    return self._check_identity(port, name)
                last = f"last answer: HTTP {status}"
            if time.monotonic() >= deadline:
                return "timeout", (
                    f"no HTTP 200 from /dicom-web/studies within {self._startup_timeout:g} s "
                    f"({last})"
                )
            time.sleep(_POLL_INTERVAL)

    def _check_identity(self, port: int, name: str) -> tuple[_Outcome, str]:
        # Another server may have grabbed the port between choosing it and Orthanc binding
        # it; then the answer above came from that one, and ours is about to exit.
        try:
            status, body = self._request("GET", "/system", port=port, timeout=2.0)
            answered = json.loads(body).get("Name") if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            answered = None
        if answered == name:
            return "ready", ""
        return "foreign", "another server answered on its port"

    def _request(
        self,
        method: str,
        path: str,
        *,
        port: int | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        url = f"http://{_HOST}:{self.port if port is None else port}{path}"
        request = urllib.request.Request(url, method=method)
        if self._users:
            user, password = next(iter(self._users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            request.add_header("Authorization", f"Basic {token}")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _shutdown(proc: subprocess.Popen[bytes], tmpdir: Path, timeout: float) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unavailable: {exc})"
    lines = text.splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log is empty)"
