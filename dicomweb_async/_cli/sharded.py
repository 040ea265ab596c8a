"""``--workers``, ``--scheduler`` and ``--ray``: uploads and downloads sharded over a cluster.

``--workers N`` alone starts a local Dask cluster of N processes; ``--scheduler ADDRESS``
uses an existing Dask cluster. ``--ray`` runs the shards on Ray instead: alone, on a local
Ray of ``--workers`` CPUs (all of this machine's by default); ``--ray ADDRESS``, on an
existing Ray cluster. Local clusters listen on 127.0.0.1 only.

Credentials never travel inside a shard: the workers read a bearer token from an
environment variable. With ``--token-env VAR`` that is VAR, which must then be set on the
cluster's workers too. A local cluster inherits this process's environment, so a token
given any other way is handed to it in a variable of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from .. import DownloadReport, ProgressCallback, UploadReport, distributed
from ..distributed import Target, local_cluster, local_ray

__all__ = ["LOCAL_RAY", "TOKEN_ENV", "download", "sharded", "store", "target"]

#: The variable a local cluster's workers read the command's token from.
TOKEN_ENV = "DICOMWEB_ASYNC_SHARD_TOKEN"
#: The value of ``--ray`` given without an address.
LOCAL_RAY = "local"


def sharded(args: argparse.Namespace) -> bool:
    """Whether the command runs over a cluster."""
    return bool(
        getattr(args, "workers", None)
        or getattr(args, "scheduler", None)
        or getattr(args, "ray", None)
    )


def _remote(args: argparse.Namespace) -> str | None:
    """The option naming a cluster this command does not start, if any."""
    if args.scheduler:
        return "--scheduler"
    if args.ray not in (None, LOCAL_RAY):
        return "--ray ADDRESS"
    return None


def target(
    args: argparse.Namespace, url: str, auth: Any, parser: argparse.ArgumentParser
) -> Target:
    """The target the shards talk to; a usage error for what a cluster cannot do."""
    if args.ray is not None:
        if args.scheduler:
            parser.error("--scheduler names a Dask cluster; it does not combine with --ray")
        if args.ray != LOCAL_RAY and args.workers:
            parser.error("--workers starts a local Ray; it does not combine with --ray ADDRESS")
        engine, extra = "ray", "ray"
    else:
        engine, extra = "distributed", "dask"
    try:
        importlib.import_module(engine)
    except ImportError:
        name = extra.capitalize()
        parser.error(f'sharding over {name} needs: pip install "dicomweb-async[{extra}]"')
    if isinstance(auth, tuple):
        parser.error("a cluster takes a bearer token, not --user")
    attempts = args.max_attempts
    if auth is None:
        return Target(url, max_attempts=attempts)
    if args.token_env:
        return Target(url, token_env=args.token_env, max_attempts=attempts)
    remote = _remote(args)
    if remote is not None:
        parser.error(f"{remote} needs --token-env VAR, set on the cluster's workers")
    os.environ[TOKEN_ENV] = str(auth)
    return Target(url, token_env=TOKEN_ENV, max_attempts=attempts)


@contextlib.contextmanager
def _dask(args: argparse.Namespace) -> Iterator[Any]:
    """A Dask client: of a local cluster of ``--workers`` processes, or of ``--scheduler``."""
    dask: Any = importlib.import_module("distributed")
    if args.scheduler:
        with dask.Client(args.scheduler) as client:
            yield client
        return
    with local_cluster(args.workers) as client:
        yield client


@contextlib.contextmanager
def _ray(args: argparse.Namespace) -> Iterator[str | None]:
    """The address to give the Ray functions (None: the local Ray started here)."""
    if args.ray != LOCAL_RAY:
        yield args.ray
        return
    with local_ray(args.workers or os.cpu_count() or 1):
        yield None


def store(args: argparse.Namespace, progress: ProgressCallback) -> UploadReport:
    """``upload`` over the cluster the options name (blocking)."""
    options: dict[str, Any] = {
        "concurrency": args.concurrency,
        "journal_dir": args.journal,
        "max_request_bytes": args.max_request_bytes,
        "progress": progress,
    }
    if args.ray is not None:
        with _ray(args) as address:
            return distributed.store_folders_on_ray(
                args.sources, args.target, address=address, **options
            )
    with _dask(args) as client:
        return distributed.store_folders(args.sources, args.target, client=client, **options)


def download(
    args: argparse.Namespace, studies: Sequence[str], progress: ProgressCallback
) -> DownloadReport:
    """``download`` of ``studies`` over the cluster the options name (blocking)."""
    options: dict[str, Any] = {"concurrency": args.concurrency, "progress": progress}
    if args.ray is not None:
        with _ray(args) as address:
            return distributed.download_studies_on_ray(
                studies, args.target, args.out, address=address, **options
            )
    with _dask(args) as client:
        return distributed.download_studies(
            studies, args.target, args.out, client=client, **options
        )
