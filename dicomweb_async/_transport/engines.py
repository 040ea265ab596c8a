"""The HTTP engine under the client's own httpx client, chosen for the running event loop.

``"aiohttp"`` (:class:`~.aiohttp_engine.AiohttpTransport`) is the fast one and runs on
asyncio only. ``"httpcore"`` is httpx's own engine, split into small pools
(:class:`~.sharded.ShardedTransport`) with large socket reads; it runs on asyncio and trio.
``"auto"`` takes aiohttp on asyncio and httpcore elsewhere; the environment variable
``DICOMWEB_ASYNC_ENGINE`` can name the engine ``"auto"`` stands for, so a deployment can
switch without code changes. The choice is made at the first request, when the event loop
is known, since a client is often created before the loop runs.

Proxies from the environment (:class:`~.proxies.ProxyRules`) apply on both engines.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Literal

import httpx
import sniffio

from .proxies import ProxyRules
from .sharded import ShardedTransport

__all__ = ["ENGINES", "Engine", "EngineTransport", "check_engine"]

Engine = Literal["auto", "aiohttp", "httpcore"]
ENGINES: tuple[str, ...] = ("auto", "aiohttp", "httpcore")
ENGINE_ENV = "DICOMWEB_ASYNC_ENGINE"


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`; ValueError otherwise."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


class EngineTransport(httpx.AsyncBaseTransport):
    """Route requests to the engine chosen for the running event loop.

    Parameters
    ----------
    engine : {"auto", "aiohttp", "httpcore"}
    verify : bool, str or ssl.SSLContext
        TLS verification, as in httpx.
    limits : httpx.Limits
        Connection limits of the engine.
    large_reads : bool
        httpcore engine: read sockets in 1 MiB pieces (see ``network.py``).
    trust_env : bool
        Take proxies from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``.
    """

    def __init__(
        self,
        engine: str = "auto",
        *,
        verify: Any = True,
        limits: httpx.Limits,
        large_reads: bool = True,
        trust_env: bool = True,
    ) -> None:
        self.engine = check_engine(engine)
        # One TLS context for every pool of either engine: building one loads the CA
        # bundle, which costs tens of milliseconds each time. It is built when first
        # needed (see tls_context), so a client that only speaks plain HTTP never pays.
        self._verify = verify
        self._context: ssl.SSLContext | None = None
        self._limits = limits
        self._large_reads = large_reads
        self._trust_env = trust_env
        self.proxies = ProxyRules.from_env() if trust_env else ProxyRules()
        #: The engine in use, once the first request chose it.
        self.chosen: str | None = None
        self._aiohttp: httpx.AsyncBaseTransport | None = None
        # httpcore: one sharded pool per route (direct, or through one proxy).
        self._httpcore: dict[str | None, ShardedTransport] = {}

    def tls_context(self) -> ssl.SSLContext | bool:
        """The TLS verification of every pool: False, or the context (built on first use)."""
        verify = self._verify
        if verify is False or isinstance(verify, ssl.SSLContext):
            return verify
        if self._context is None:
            self._context = httpx.create_ssl_context(verify=verify, trust_env=self._trust_env)
        return self._context

    def _choose(self) -> str:
        engine = self.engine
        if engine == "auto":
            wanted = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
            engine = check_engine(wanted)
        library = sniffio.current_async_library()
        if engine == "auto":
            engine = "aiohttp" if library == "asyncio" else "httpcore"
        if engine == "aiohttp" and library != "asyncio":
            raise RuntimeError(
                f"the aiohttp engine runs on asyncio only, not {library}; "
                "use engine='httpcore' (or 'auto')"
            )
        return engine

    def _aiohttp_transport(self) -> httpx.AsyncBaseTransport:
        if self._aiohttp is None:
            # Imported on first use: a trio program never loads aiohttp.
            from .aiohttp_engine import AiohttpTransport

            self._aiohttp = AiohttpTransport(
                verify=self.tls_context, limits=self._limits, proxies=self.proxies
            )
        return self._aiohttp

    def _httpcore_transport(self, url: httpx.URL) -> ShardedTransport:
        proxy = self.proxies.proxy_for(url.scheme, url.host)
        transport = self._httpcore.get(proxy)
        if transport is None:
            transport = ShardedTransport(
                verify=self.tls_context(),
                limits=self._limits,
                large_reads=self._large_reads,
                trust_env=self._trust_env,
                proxy=proxy,
            )
            self._httpcore[proxy] = transport
        return transport

    def transport_for(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        """The transport that sends a request to ``url`` (choosing the engine if needed)."""
        if self.chosen is None:
            self.chosen = self._choose()
        if self.chosen == "aiohttp":
            return self._aiohttp_transport()
        return self._httpcore_transport(url)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with the chosen engine."""
        return await self.transport_for(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        """Close every transport that was opened, even if closing one of them fails."""
        failure: BaseException | None = None
        transports: list[httpx.AsyncBaseTransport] = list(self._httpcore.values())
        if self._aiohttp is not None:
            transports.append(self._aiohttp)
        for transport in transports:
            try:
                await transport.aclose()
            except BaseException as exc:  # close the others before reporting it
                failure = failure or exc
        if failure is not None:
            raise failure
