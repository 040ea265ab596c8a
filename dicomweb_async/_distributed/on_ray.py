"""Run a sharded migration on a Ray cluster (``pip install "dicomweb-async[ray]"``).

The driver plans the shards and keeps ``window`` of them submitted as Ray tasks; each runs
:func:`~.run.run_shard` in a worker process, which owns an event loop of its own. Ray runs
a task again when its worker dies (and, here, when it raised), and the per-attempt
journals bound what is sent twice to what was in flight. Progress goes from the tasks to a
small actor the driver polls while it waits for shards to finish.

At most ``concurrency`` requests are in flight over the whole cluster: only this driver
submits the run's tasks, and it keeps at most ``window = min(2 x CPUs, concurrency)`` of
them submitted (half a CPU each), each with ``concurrency // window`` requests. (A retried
task replaces its dead attempt; with a ``journal_dir``, the shard lock of
:func:`run_shard` keeps a stray live one from running beside it.)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._bulk.download import DownloadReport
from .._bulk.progress import ProgressCallback
from .._bulk.upload import UploadReport
from .jobs import DEFAULT_SHARDS, sharded_download, sharded_upload
from .progress import ProgressMerger, forwarding
from .run import ShardReport, new_attempt_id, run_shard
from .spec import ShardSpec, Target

__all__ = ["download_studies_on_ray", "local_ray", "store_folders_on_ray"]

#: Shards run at once per CPU of the cluster (each in a worker process of its own): while
#: one shard's last requests finish, the other keeps the CPU busy (as two threads per Dask
#: worker do).
SHARDS_PER_CPU = 2
#: Seconds between two polls of the progress actor while no shard finishes.
POLL = 0.25
_SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_ray(workers: int) -> Iterator[None]:
    """Ray on this machine, in this process, with ``workers`` CPUs for tasks.

    Every server Ray starts is bound to 127.0.0.1, and the dashboard is off. Ray is shut
    down again at the end.

    Raises
    ------
    RuntimeError
        If Ray is already initialized in this process.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    ray = _single_node_ray()
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialized in this process")
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _single_node_ray() -> Any:
    """Ray, switched to a single-node setup whose servers listen on 127.0.0.1 only.

    ``_node_ip_address="127.0.0.1"`` alone still leaves its gRPC servers listening on every
    interface. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's switch between one machine
    and a cluster) binds them to the loopback address, but Ray reads it once, when it is
    imported: set before the import, or on Ray's constants where it was imported already.
    """
    os.environ[_SINGLE_NODE_VAR] = "0"
    already = "ray" in sys.modules
    ray: Any = importlib.import_module("ray")
    if already:
        constants: Any = importlib.import_module("ray._private.ray_constants")
        constants.ENABLE_RAY_CLUSTER = False
    return ray


def store_folders_on_ray(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    target: Target,
    *,
    address: str | None = None,
    concurrency: int = 16,
    shards: int = DEFAULT_SHARDS,
    journal_dir: str | os.PathLike[str] | None = None,
    max_request_bytes: int | None = None,
    progress: ProgressCallback | None = None,
    retries: int = 2,
) -> UploadReport:
    """Upload files and folders over a Ray cluster, whole studies per shard.

    Parameters
    ----------
    sources : path or iterable of paths
        Files and folders, on storage every worker can read at the same paths.
    target : Target
        The server, as settings (credentials are taken on the workers).
    address : str, optional
        A Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...) and
        disconnect from at the end, when Ray is not initialized in this process yet
        (otherwise the running Ray is used and ``address`` is ignored). Without it, Ray
        must be initialized already (``ray.init(...)`` or :func:`local_ray`).
    concurrency : int
        Requests in flight over the whole cluster.
    shards : int
        How many shards the upload is cut into (at most one per study).
    journal_dir : path, optional
        Shared storage for per-attempt journals and finished shards' reports: a re-run
        with the same sources, target and ``shards`` skips what is done.
    max_request_bytes : int, optional
        As in ``store_folder``.
    progress : callable, optional
        Called with summed :class:`~dicomweb_async.Progress` events (in this thread).
    retries : int
        Times Ray runs a shard again after its worker died or it raised.

    Returns
    -------
    UploadReport
        Every input file exactly once.
    """
    with _Connection(address, concurrency) as (window, per_shard):
        run = functools.partial(_run_all, window=window, retries=retries)
        return sharded_upload(
            sources,
            target,
            run,
            shards=shards,
            per_shard=per_shard,
            journal_dir=journal_dir,
            max_request_bytes=max_request_bytes,
            progress=progress,
        )


def download_studies_on_ray(
    studies: Iterable[str] | Mapping[str, Any],
    target: Target,
    output_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    concurrency: int = 16,
    shards: int = DEFAULT_SHARDS,
    journal_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    retries: int = 2,
) -> DownloadReport:
    """Download studies over a Ray cluster into ``output_dir`` (shared by the workers).

    Parameters are those of :func:`store_folders_on_ray`; ``studies`` are
    StudyInstanceUIDs (duplicates dropped), or QIDO-RS search filters (a mapping) whose
    studies are found with one search on the driver. Instances already complete on disk
    are skipped.

    Returns
    -------
    DownloadReport
    """
    with _Connection(address, concurrency) as (window, per_shard):
        run = functools.partial(_run_all, window=window, retries=retries)
        return sharded_download(
            studies,
            target,
            output_dir,
            run,
            shards=shards,
            per_shard=per_shard,
            journal_dir=journal_dir,
            progress=progress,
        )


class _Connection:
    """Ray (connected here if given an address) and the concurrency split."""

    def __init__(self, address: str | None, concurrency: int):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._address = address
        self._concurrency = concurrency
        self._owned = False

    def __enter__(self) -> tuple[int, int]:
        ray: Any = importlib.import_module("ray")
        if not ray.is_initialized():
            if self._address is None:
                raise RuntimeError(
                    "Ray is not initialized: call ray.init(...) or use local_ray(n) first, "
                    "or pass address="
                )
            ray.init(address=self._address, log_to_driver=False)
            self._owned = True
        slots = int(ray.cluster_resources().get("CPU", 1) * SHARDS_PER_CPU)
        window = max(1, min(slots, self._concurrency))
        return window, max(1, self._concurrency // window)

    def __exit__(self, *exc_info: object) -> None:
        if self._owned:
            importlib.import_module("ray").shutdown()


class _ProgressSink:
    """A Ray actor holding the shards' progress snapshots until the driver takes them."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []

    def put(self, fields: dict[str, Any]) -> None:
        self._events.append(fields)

    def take(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


def _task(spec: ShardSpec, sink: Any) -> ShardReport:
    """What a Ray worker runs: one attempt of one shard, sending progress to ``sink``."""
    attempt = new_attempt_id()

    def send(fields: dict[str, Any]) -> None:
        sent = sink.put.remote(fields)
        if fields["final"]:
            # The last snapshot is in the actor before the task's result is: the driver
            # takes what the actor holds after each shard finishes.
            importlib.import_module("ray").get(sent)

    return run_shard(spec, attempt=attempt, progress=forwarding(send, spec.shard_id, attempt))


def _run_all(
    plan: list[ShardSpec], merger: ProgressMerger, *, window: int, retries: int
) -> tuple[list[ShardReport], dict[str, str]]:
    ray: Any = importlib.import_module("ray")
    sink = ray.remote(num_cpus=0)(_ProgressSink).remote()
    task = ray.remote(num_cpus=1 / SHARDS_PER_CPU, max_retries=retries, retry_exceptions=True)(
        _task
    )
    reports: list[ShardReport] = []
    errors: dict[str, str] = {}
    waiting = iter(plan)
    running: dict[Any, ShardSpec] = {}

    def submit_next() -> None:
        spec = next(waiting, None)
        if spec is not None:
            running[task.remote(spec, sink)] = spec

    def take_progress() -> None:
        for fields in ray.get(sink.take.remote()):
            merger.update(fields)

    try:
        for _ in range(window):
            submit_next()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL)
            take_progress()
            for ref in ready:
                spec = running.pop(ref)
                try:
                    reports.append(ray.get(ref))
                except Exception as exc:  # the shard's last error, after Ray's retries
                    cause = getattr(exc, "cause", None) or exc
                    errors[spec.shard_id] = f"{type(cause).__name__}: {cause}"
                submit_next()
        take_progress()
    finally:
        ray.kill(sink)
    merger.finish()
    return reports, errors
