"""What a shard is: a picklable description of one slice of a migration.

A shard names its inputs and the server by *settings* only. Workers rebuild the client
from them, so no live token, connection or event loop ever crosses a process boundary.
The same inputs always make the same shard id. A re-run finds the journals and the
report of an earlier run under that id, so finished shards are skipped and unfinished ones
resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .._client.client import AsyncDICOMwebClient

__all__ = ["Kind", "ShardSpec", "Target", "shard_id"]

Kind = Literal["store", "download"]


@dataclass(frozen=True)
class Target:
    """The DICOMweb server a shard talks to, as settings a worker can rebuild a client from.

    Parameters
    ----------
    url : str
        Service root (for Azure: the versioned URL, ``https://.../v2``).
    token_env : str, optional
        Name of an environment variable that holds a bearer token *on the worker*; it is
        read when the shard starts, never stored here.
    auth_factory : callable, optional
        A picklable function (a module-level function, not a lambda) returning what
        ``AsyncDICOMwebClient(auth=...)`` takes, called on the worker; for example one
        that builds :class:`~dicomweb_async.AzureADAuth` from a managed identity.
    azure : bool
        Build an :class:`~dicomweb_async.AzureDICOMwebClient` (its page cap and implicit
        VR refusal) instead of the generic client.
    timeout : float or None
        Seconds, as ``AsyncDICOMwebClient(timeout=...)``.
    verify : bool or str
        TLS verification: True, False or a CA bundle path.
    engine : {"auto", "aiohttp", "httpcore"}
    max_attempts : int or None
        Tries per request (:meth:`RetryPolicy.for_bulk`); None: that policy's default.
    """

    url: str
    token_env: str | None = None
    auth_factory: Callable[[], Any] | None = None
    azure: bool = False
    timeout: float | None = 60.0
    verify: bool | str = True
    engine: str = "auto"
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.token_env is not None and self.auth_factory is not None:
            raise ValueError("give token_env or auth_factory, not both")

    def client(self, max_connections: int) -> AsyncDICOMwebClient:
        """A client for this target, with its credentials taken where the shard runs.

        Raises
        ------
        KeyError
            If ``token_env`` names a variable that is not set on this machine.
        """
        from .._azure.client import AzureDICOMwebClient
        from .._client.client import AsyncDICOMwebClient
        from .._core.retry import RetryPolicy

        auth: Any = None
        if self.token_env is not None:
            try:
                auth = os.environ[self.token_env]
            except KeyError:
                raise KeyError(
                    f"the environment variable {self.token_env} (the target's token) is "
                    "not set where the shard runs"
                ) from None
        elif self.auth_factory is not None:
            auth = self.auth_factory()
        cls = AzureDICOMwebClient if self.azure else AsyncDICOMwebClient
        return cls(
            self.url,
            auth=auth,
            timeout=self.timeout,
            verify=self.verify,
            max_connections=max_connections,
            engine=self.engine,  # type: ignore[arg-type]
            retry=None if self.max_attempts is None else RetryPolicy.for_bulk(self.max_attempts),
        )


@dataclass(frozen=True)
class ShardSpec:
    """One slice of a migration, to be run by :func:`run_shard` anywhere.

    Attributes
    ----------
    shard_id : str
        Derived from the kind, the target URL and the members: the same inputs give the
        same id.
    kind : {"store", "download"}
    members : tuple of str
        File paths (``store``) or StudyInstanceUIDs (``download``).
    target : Target
    concurrency : int
        Requests this shard keeps in flight.
    journal_dir : str or None
        Where attempts keep their journals (``<journal_dir>/<shard_id>/``) and a finished
        shard its report; None: no resume.
    output_dir : str or None
        Where a download shard writes ``<study>/<series>/<sop>.dcm``.
    max_request_bytes : int or None
        Uploads: group one study's instances into requests up to this size.
    """

    shard_id: str
    kind: Kind
    members: tuple[str, ...]
    target: Target
    concurrency: int = 8
    journal_dir: str | None = None
    output_dir: str | None = None
    max_request_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("store", "download"):
            raise ValueError(f"kind must be 'store' or 'download', got {self.kind!r}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.kind == "download" and self.output_dir is None:
            raise ValueError("a download shard needs output_dir")

    def __repr__(self) -> str:
        return (
            f"ShardSpec({self.shard_id}, {self.kind}, {len(self.members)} members, "
            f"{self.target.url}, concurrency={self.concurrency})"
        )


def shard_id(kind: str, target_url: str, members: tuple[str, ...]) -> str:
    """A short id that depends only on the kind, the target and the members."""
    text = json.dumps([kind, target_url.rstrip("/"), sorted(members)], separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"
