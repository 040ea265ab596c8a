"""HTTP transport: requests with retries, and the one place httpx's errors are translated.

It sends requests with retries, turns error statuses and httpx exceptions into this
package's exceptions, and hands response bodies to the caller as an async iterator of
bytes. Above the transport layer only the client facade imports httpx, for the types of
its parameters; the services, bulk transfer and Azure modules talk to this class.
"""

from __future__ import annotations

import copy
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from .._core.exceptions import DICOMwebError, TimeoutError, TransportError, status_error_class
from .._core.retry import RetryPolicy, note_attempt
from .bodies import FileBody
from .engines import EngineTransport

__all__ = ["Body", "Response", "Transport", "make_http_client", "translate_error"]

logger = logging.getLogger("dicomweb_async")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_NOT_PROCESSED = frozenset({429, 503})
_EXCERPT_BYTES = 2048
_EXCERPT_CHARS = 300
_MAX_URLS = 64

#: What a request body may be: bytes, or a replayable stream from ``_body``.
Body = bytes | httpx.AsyncByteStream | None


def make_http_client(
    *,
    auth: httpx.Auth | tuple[str, str] | None,
    headers: Mapping[str, str] | None,
    timeout: httpx.Timeout | float | None,
    verify: Any,
    max_connections: int,
    large_reads: bool = True,
    engine: str = "auto",
    trust_env: bool = True,
) -> httpx.AsyncClient:
    """Create the ``httpx.AsyncClient`` that an :class:`AsyncDICOMwebClient` owns.

    Requests go through the engine chosen for the running event loop (see ``engines``):
    aiohttp on asyncio, or httpcore split over small pools (``sharded``) with the
    large-read network backend (``network``) unless ``large_reads`` is False. TLS
    verification is httpx's own; with ``trust_env`` proxies come from the environment,
    as httpx would take them.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = EngineTransport(
        engine, verify=verify, limits=limits, large_reads=large_reads, trust_env=trust_env
    )
    client = httpx.AsyncClient(
        auth=auth,
        headers=headers,
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
        trust_env=trust_env,
    )
    # httpx hands every response to the cookie jar, building urllib stand-ins for the
    # request and the response first: about a tenth of the CPU of a small upload. The jar
    # of this client skips responses that set no cookie; cookies that are set (a load
    # balancer's affinity cookie, say) are kept and sent as before.
    if isinstance(getattr(client, "_cookies", None), httpx.Cookies):
        client._cookies = _Cookies()
    return client


class _Cookies(httpx.Cookies):
    """A cookie jar that looks at a response only if it sets a cookie."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


def _safe_url(url: httpx.URL) -> str:
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    return str(url)


def translate_error(exc: BaseException, method: str, url: httpx.URL | str) -> DICOMwebError:
    """Map an httpx exception to this package's exception tree."""
    safe = _safe_url(url) if isinstance(url, httpx.URL) else url
    kind = type(exc).__name__
    detail = str(exc) or kind
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"timed out ({kind}: {detail})", method=method, url=safe)
    if isinstance(exc, httpx.RemoteProtocolError):
        return TransportError(
            f"connection closed before the response was complete ({detail})",
            method=method,
            url=safe,
        )
    return TransportError(f"{kind}: {detail}", method=method, url=safe)


class Response:
    """A response whose body is read as a stream.

    Attributes
    ----------
    status_code : int
    headers : dict of str to str
        Lower-cased header names.
    method, url : str
        The request, for error messages.
    """

    def __init__(self, response: httpx.Response, method: str):
        self._response = response
        self.status_code = response.status_code
        # Decoded here from the raw pairs: httpx's own accessors work out the encoding of
        # the whole header block again for each name and value they hand out.
        raw = response.headers.raw
        self.raw_headers: tuple[tuple[str, str], ...] = tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in raw
        )
        headers: dict[str, str] = {}
        for name, value in self.raw_headers:
            key = name.lower()
            # Repeated fields read as one, comma-separated, as httpx's mapping reads them.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers = headers
        self.method = method
        self._url = response.request.url

    @property
    def url(self) -> str:
        """The request's URL, without credentials (for error messages)."""
        return _safe_url(self._url)

    @property
    def content_type(self) -> str:
        """The Content-Type header, or an empty string."""
        return self.headers.get("content-type", "")

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length, if any."""
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; transport failures raise ``TransportError``."""
        try:
            async for chunk in self._response.aiter_bytes():
                if chunk:
                    yield chunk
        except httpx.HTTPError as exc:
            raise translate_error(exc, self.method, self._response.request.url) from exc

    async def read(self) -> bytes:
        """Read the whole body (for small JSON answers)."""
        return b"".join([chunk async for chunk in self.iter_bytes()])


async def _excerpt(response: httpx.Response) -> str:
    collected = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            collected += chunk
            if len(collected) >= _EXCERPT_BYTES:
                break
    except httpx.HTTPError:
        pass
    text = " ".join(collected[:_EXCERPT_BYTES].decode("utf-8", "replace").split())
    return text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "")


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_QUOTED_TYPE = re.compile(r'type="([^"]*)"')
_MAX_HOPS = 5
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _port(url: httpx.URL) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def _may_carry_credentials(source: httpx.URL, target: httpx.URL) -> bool:
    """Whether a redirect stays within what the credentials were given for.

    The same origin, or the same host upgraded from http to https on the default ports.
    """
    if source.host.lower() != target.host.lower():
        return False
    if source.scheme == target.scheme:
        return _port(source) == _port(target)
    upgrade = source.scheme == "http" and target.scheme == "https"
    return upgrade and _port(source) == 80 and _port(target) == 443


def _redirect_target(
    response: httpx.Response, request: httpx.Request, replayable: bool
) -> tuple[httpx.URL | None, str]:
    """Where to follow a redirect, or None and why not.

    Followed: redirects of safe requests on the same host (another port or the https
    upgrade included), and of requests with a body only for 307 and 308 (which keep the
    method and body) when the body can be sent again. Never to another host.
    """
    location = response.headers.get("location")
    if not location:
        return None, "no Location header"
    try:
        target = request.url.join(location)
    except httpx.InvalidURL:
        return None, "the Location is not a valid URL"
    if target.scheme not in ("http", "https"):
        return None, f"the Location's scheme is {target.scheme!r}"
    if target.host.lower() != request.url.host.lower():
        return None, "another host; give that URL as the base if it is meant"
    if request.method not in _SAFE:
        if response.status_code not in (307, 308):
            return None, f"a {request.method} is re-sent only after 307 or 308"
        if not replayable:
            return None, "the request's body cannot be sent again"
    return target, ""


class Transport:
    """Sends requests relative to a base URL, with retries and error translation.

    Parameters
    ----------
    base_url : str
        Service root, e.g. ``https://host/dicom-web`` or ``.../v2``.
    client : httpx.AsyncClient
        The client to send with.
    owns_client : bool
        Whether :meth:`aclose` closes ``client``.
    retry : RetryPolicy
        When to retry.
    quote_multipart_type : bool
        False writes ``type=...`` unquoted in multipart Accept headers, for servers that
        want it so (the server profile's knob).
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        owns_client: bool,
        retry: RetryPolicy,
        quote_multipart_type: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.owns_client = owns_client
        self.retry = retry
        self.quote_multipart_type = quote_multipart_type
        # Parsed URLs of the paths asked for again and again (``/studies`` for every
        # upload): parsing one costs more than the rest of building the request.
        self._urls: dict[str, httpx.URL] = {}

    def with_retry(self, retry: RetryPolicy) -> Transport:
        """This transport (the same connections) sending with another retry policy.

        The copy never closes the client: its owner still does.
        """
        if retry == self.retry:
            return self
        other = copy.copy(self)
        other.retry = retry
        other.owns_client = False
        return other

    async def aclose(self) -> None:
        """Close the HTTP client if this transport created it."""
        if self.owns_client:
            await self.client.aclose()

    def url(self, path: str, query: str = "") -> str:
        """Absolute URL for ``path`` (relative to the base) or an absolute URL as is."""
        full = path if path.startswith(("http://", "https://")) else self.base_url + path
        if query:
            full += ("&" if "?" in full else "?") + query
        return full

    def _parsed(self, url: str) -> httpx.URL | str:
        parsed = self._urls.get(url)
        if parsed is None:
            if "?" in url:  # queries differ from request to request: not worth keeping
                return url
            parsed = httpx.URL(url)
            if len(self._urls) < _MAX_URLS:
                self._urls[url] = parsed
        return parsed

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Body,
        ok: Collection[int],
        once: bool = False,
    ) -> httpx.Response:
        # Given as content, httpx wraps a stream in a stream of its own; set as the
        # request's stream, the body reaches the engine as it is (and a small one can go in
        # one write). Only with a declared length: without one, httpx sends it chunked.
        stream = body if isinstance(body, httpx.AsyncByteStream) else None
        if stream is not None and not any(k.lower() == "content-length" for k in headers or ()):
            stream = None
        if not self.quote_multipart_type and headers:
            headers = {
                k: _QUOTED_TYPE.sub(r"type=\1", v) if k.lower() == "accept" else v
                for k, v in headers.items()
            }

        def build(target: httpx.URL | str) -> httpx.Request:
            built = self.client.build_request(
                method, target, headers=headers, content=None if stream else body
            )
            if stream is not None:
                built.stream = stream
            return built

        request = build(self._parsed(url))
        replayable = method in IDEMPOTENT or body is None or isinstance(body, bytes)
        replayable = replayable or isinstance(body, httpx.AsyncByteStream)
        attempt = 0
        hops = 0
        credentials = True  # false once redirected to another origin
        started = time.monotonic()
        while True:
            attempt += 1
            note_attempt()
            try:
                response = await self.client.send(
                    request, stream=True, auth=httpx.USE_CLIENT_DEFAULT if credentials else None
                )
            except ssl.SSLError as exc:
                # httpcore 1.0.0 lets certificate errors through unwrapped; a failed
                # verification is not worth a retry.
                raise translate_error(exc, method, request.url) from exc
            except httpx.HTTPError as exc:
                delay = self.retry.delay(attempt)
                if (
                    replayable
                    and not once
                    and self.retry.should_retry_error(attempt)
                    and self.retry.within_deadline(time.monotonic() - started, delay)
                ):
                    logger.warning(
                        "%s %s failed (%s); retry %d in %.2fs",
                        method,
                        _safe_url(request.url),
                        type(exc).__name__,
                        attempt,
                        delay,
                    )
                    await anyio.sleep(delay)
                    continue
                raise translate_error(exc, method, request.url) from exc
            status = response.status_code
            if status in ok:
                return response
            if status in _REDIRECTS:
                target, why = _redirect_target(response, request, replayable)
                if target is not None and hops < _MAX_HOPS:
                    hops += 1
                    await response.aclose()
                    logger.warning(
                        "%s %s redirected (%d) to %s; following it (give that URL as the "
                        "base to save the round trip)",
                        method,
                        _safe_url(request.url),
                        status,
                        _safe_url(target),
                    )
                    credentials = credentials and _may_carry_credentials(request.url, target)
                    request = build(target)
                    if not credentials:
                        for name in ("authorization", "cookie"):
                            request.headers.pop(name, None)
                    attempt -= 1  # a redirect is not a failed try
                    continue
                await response.aclose()
                cls = status_error_class(status)
                location = response.headers.get("location", "")
                raise cls(
                    f"{response.reason_phrase or 'Redirect'} to {location} (not followed: "
                    f"{why if target is None else 'too many redirects'})",
                    status_code=status,
                    method=method,
                    url=_safe_url(request.url),
                    headers={k.lower(): v for k, v in response.headers.items()},
                )
            # A request that must not run twice is only repeated when the server said it
            # did not process it (429, 503); after a 502, 504 or a dropped connection it
            # may have.
            retryable = status in _NOT_PROCESSED if once else True
            delay = self.retry.delay(attempt, response.headers.get("retry-after"))
            if (
                replayable
                and retryable
                and self.retry.should_retry_status(attempt, status)
                and self.retry.within_deadline(time.monotonic() - started, delay)
            ):
                await response.aclose()
                logger.warning(
                    "%s %s answered %d; retry %d in %.2fs",
                    method,
                    _safe_url(request.url),
                    status,
                    attempt,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            try:
                excerpt = await _excerpt(response)
            finally:
                await response.aclose()
            cls = status_error_class(status)
            raise cls(
                response.reason_phrase or "HTTP error",
                status_code=status,
                method=method,
                url=_safe_url(request.url),
                body_excerpt=excerpt,
                headers={k.lower(): v for k, v in response.headers.items()},
            )

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        ok: Collection[int] = (200,),
        once: bool = False,
    ) -> AsyncIterator[Response]:
        """Send a request and yield the response with its body unread.

        Raises
        ------
        HTTPStatusError
            (a subclass by status) if the final status is not in ``ok``.
        TransportError
            If no response arrived.
        """
        response = await self._send(method, self.url(path, query), headers, body, ok, once)
        try:
            yield Response(response, method)
        finally:
            await response.aclose()
            if isinstance(body, FileBody):
                body.release()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        ok: Collection[int] = (200,),
        once: bool = False,
    ) -> tuple[Response, bytes]:
        """Send a request and read its whole (small) body.

        ``once=True`` marks a request that must not take effect twice (it starts a
        server-side operation): it is retried only after 429 or 503.
        """
        async with self.stream(
            method, path, query=query, headers=headers, body=body, ok=ok, once=once
        ) as response:
            return response, await response.read()
