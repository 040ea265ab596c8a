"""``--workers`` and ``--scheduler``: uploads and downloads sharded over a Dask cluster.

Credentials never travel inside a shard: the workers read a bearer token from an
environment variable. With ``--token-env VAR`` that is VAR, which must then be set on the
cluster's workers too. A local cluster (``--workers``) inherits this process's
environment, so a token given any other way is handed to it in a variable of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any

from ..distributed import Target, local_cluster

__all__ = ["TOKEN_ENV", "cluster", "sharded", "target"]

#: The variable a local cluster's workers read the command's token from.
TOKEN_ENV = "DICOMWEB_ASYNC_SHARD_TOKEN"


def sharded(args: argparse.Namespace) -> bool:
    """Whether the command runs over a cluster."""
    return bool(getattr(args, "workers", None) or getattr(args, "scheduler", None))


def target(
    args: argparse.Namespace, url: str, auth: Any, parser: argparse.ArgumentParser
) -> Target:
    """The target the shards talk to; a usage error for credentials workers cannot get."""
    try:
        importlib.import_module("distributed")
    except ImportError:
        parser.error('--workers and --scheduler need Dask: pip install "dicomweb-async[dask]"')
    if isinstance(auth, tuple):
        parser.error("--workers and --scheduler take a bearer token, not --user")
    if auth is None:
        return Target(url)
    if args.token_env:
        return Target(url, token_env=args.token_env)
    if args.scheduler:
        parser.error("--scheduler needs --token-env VAR, set on the cluster's workers")
    os.environ[TOKEN_ENV] = str(auth)
    return Target(url, token_env=TOKEN_ENV)


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[Any]:
    """A Dask client: of a local cluster of ``--workers`` processes, or of ``--scheduler``."""
    dask: Any = importlib.import_module("distributed")
    if args.scheduler:
        with dask.Client(args.scheduler) as client:
            yield client
        return
    with local_cluster(args.workers) as client:
        yield client
