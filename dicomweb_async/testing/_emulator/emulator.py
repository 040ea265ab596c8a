"""An emulator of the Azure Health Data Services DICOM service for tests."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from .app import EmulatorApp, RecordedRequest, TokenValidator
from .http import EmulatorServer, EmulatorTransport
from .store import DEFAULT_PARTITION, EmulatorState

__all__ = ["AzureDicomEmulator"]


class AzureDicomEmulator:
    """An in-memory (or on-disk) stand-in for the Azure DICOM service, API v1 and v2.

    Reach it in-process through :meth:`transport`, or over a real loopback socket with
    :meth:`serve`; both front ends share the same data. Paths start with ``/v1`` or ``/v2``,
    optionally followed by ``/partitions/{name}``::

        emulator = AzureDicomEmulator()
        http = httpx.AsyncClient(transport=emulator.transport())
        client = AsyncDICOMwebClient("http://emulator/v2", http_client=http)

        with emulator.serve() as url:  # "http://127.0.0.1:{port}/v2"
            ...

    What is emulated: STOW-RS (multipart or single ``application/dicom``, with the
    service's validation, FailureReason codes and 200/202/409), WADO-RS of studies, series
    and instances (stored bytes, no transcoding: another transfer syntax answers 406),
    native frames, metadata with ETag, QIDO-RS on the six routes with the service's
    matching rules, DELETE, the change feed (v1 and v2 paging), extended query tags,
    operations, bulk update (keeping originals for ``msdicom-request-original``), data
    partitions and bearer authentication. Rendered images answer 406; export, import and
    the worklist service are not emulated.

    Parameters
    ----------
    storage_dir : str or os.PathLike, optional
        Keep instance files in this directory instead of memory. Files are stored exactly
        as received; the directory itself is left in place.
    require_auth : bool, optional
        Refuse requests without ``Authorization: Bearer ...`` (401 with a
        ``WWW-Authenticate: Bearer`` challenge). Defaults to True when `token_validator`
        is given, else False. A present but malformed or rejected header is always
        refused.
    token_validator : callable, optional
        ``token_validator(token) -> bool`` decides which bearer tokens are accepted; by
        default any is.
    operation_delay : float
        Seconds before an operation (extended query tag indexing, bulk update) completes;
        0 completes it before the request that started it is answered.
    latency : float
        Seconds added before every answer.
    sequence_step : int
        Distance between consecutive change feed sequence numbers (1: no gaps). Larger
        steps leave gaps, as the service's feed may have.
    data_partitions : bool
        Whether ``/partitions/...`` paths are accepted (the service's data partitions
        feature); without it they answer 400.

    Raises
    ------
    ValueError
        If a number is out of range or `storage_dir` is not a directory.
    """

    def __init__(
        self,
        *,
        storage_dir: str | os.PathLike[str] | None = None,
        require_auth: bool | None = None,
        token_validator: TokenValidator | None = None,
        operation_delay: float = 0.0,
        latency: float = 0.0,
        sequence_step: int = 1,
        data_partitions: bool = True,
    ) -> None:
        if operation_delay < 0 or latency < 0:
            raise ValueError("operation_delay and latency must not be negative")
        if sequence_step < 1:
            raise ValueError(f"sequence_step must be at least 1, got {sequence_step}")
        directory = Path(storage_dir) if storage_dir is not None else None
        if directory is not None and not directory.is_dir():
            raise ValueError(f"storage_dir {directory} is not a directory")
        self._state = EmulatorState(
            storage_dir=directory, operation_delay=operation_delay, sequence_step=sequence_step
        )
        self._app = EmulatorApp(
            self._state,
            require_auth=token_validator is not None if require_auth is None else require_auth,
            token_validator=token_validator,
            latency=latency,
            data_partitions=data_partitions,
        )

    def __repr__(self) -> str:
        return f"<AzureDicomEmulator {self.instance_count()} instances>"

    # ---- front ends ---------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that answers from this emulator in-process.

        Returns
        -------
        httpx.AsyncBaseTransport
            For ``httpx.AsyncClient(transport=...)``; any host name works, e.g.
            ``http://emulator/v2``.
        """
        return EmulatorTransport(self._app)

    def serve(
        self, *, port: int = 0, api_version: int = 2, partition: str | None = None
    ) -> EmulatorServer:
        """A loopback HTTP/1.1 server for this emulator (started when entered).

        Parameters
        ----------
        port : int
            Port on 127.0.0.1; 0 picks a free one.
        api_version : int
            Version segment of the URL the context manager gives (1 or 2).
        partition : str, optional
            Put ``/partitions/{partition}`` in that URL.

        Returns
        -------
        EmulatorServer
            ``with emulator.serve() as url:`` or ``async with``.
        """
        if api_version not in (1, 2):
            raise ValueError(f"api_version must be 1 or 2, got {api_version}")
        return EmulatorServer(self._app, port=port, api_version=api_version, partition=partition)

    # ---- knobs --------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added before every answer."""
        return self._app.latency

    @latency.setter
    def latency(self, value: float) -> None:
        if value < 0:
            raise ValueError("latency must not be negative")
        self._app.latency = value

    @property
    def operation_delay(self) -> float:
        """Seconds before new operations complete."""
        return self._state.operation_delay

    @operation_delay.setter
    def operation_delay(self, value: float) -> None:
        if value < 0:
            raise ValueError("operation_delay must not be negative")
        self._state.operation_delay = value

    def fail_every(self, n: int, status: int = 503, retry_after: float | None = 1.0) -> None:
        """Answer every ``n``-th request from now on with ``status``.

        Parameters
        ----------
        n : int
            1 fails every request, 3 every third; 0 turns the fault off.
        status : int
            The status to answer with.
        retry_after : float or None
            Seconds for the ``Retry-After`` header; None leaves the header out.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        self._app.fail_every(n, status, retry_after)

    def drop_next_response_after(self, n_bytes: int) -> None:
        """Break the connection after ``n_bytes`` of the next response body.

        Applies to the next answer that has a body. Over the loopback server the
        connection closes before the announced Content-Length is reached; in-process
        the body raises ``httpx.ReadError``. A body of at most ``n_bytes`` is sent whole.
        """
        if n_bytes < 0:
            raise ValueError(f"n_bytes must not be negative, got {n_bytes}")
        self._app.drop_next_response_after(n_bytes)

    def clear_faults(self) -> None:
        """Turn off :meth:`fail_every` and a pending :meth:`drop_next_response_after`."""
        self._app.clear_faults()

    def skip_sequences(self, count: int) -> None:
        """Leave ``count`` change feed sequence numbers unused before the next entry."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        with self._state.lock:
            self._state.skip_sequences(count)

    def complete_operations(self) -> None:
        """Complete every running operation now, whatever its delay."""
        with self._state.lock:
            self._state.advance(force=True)

    # ---- observation --------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Requests received since creation or :meth:`reset_counters`."""
        return self._app.request_count

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests answered since creation or :meth:`reset_counters`, in order."""
        return self._app.snapshot()[0]

    @property
    def errors(self) -> list[str]:
        """Tracebacks of failures inside the emulator itself (should stay empty)."""
        return self._app.snapshot()[1]

    def reset_counters(self) -> None:
        """Forget recorded requests and errors and restart :attr:`request_count`."""
        self._app.reset_records()

    def instance_count(self, partition: str = DEFAULT_PARTITION) -> int:
        """Number of instances stored in ``partition``."""
        with self._state.lock:
            return len(self._state.partition_instances(partition))

    def partitions(self) -> list[str]:
        """Names of the partitions in use (the default one always)."""
        with self._state.lock:
            return list(self._state.partitions)

    def clear(self) -> None:
        """Delete all data: instances (and their files), change feed, tags, operations,
        workitems."""
        with self._state.lock:
            self._state.clear()
            self._app.worklist.clear()
