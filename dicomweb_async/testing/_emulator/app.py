"""Routing, authentication, fault injection and request records of the Azure emulator.

:class:`EmulatorApp` turns a :class:`Request` into a :class:`Response`; it knows nothing
about sockets or httpx, so the in-process transport and the loopback server share it.
"""

from __future__ import annotations

import re
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

import anyio

from .azure import AzureHandlers
from .dicomweb import DicomwebHandlers
from .qido import INSTANCE, SERIES, STUDY, SearchRoute
from .store import DEFAULT_PARTITION, EmulatorState
from .stow import StowHandlers
from .wire import (
    ClientDisconnected,
    Context,
    HttpError,
    Request,
    Response,
    error_response,
)
from .worklist import WorklistHandlers

__all__ = ["EmulatorApp", "RecordedRequest", "TokenValidator"]

#: Decides whether a bearer token is accepted.
TokenValidator = Callable[[str], bool]
_Handler = Callable[[], Awaitable[Response]]

_VERSION_RE = re.compile(r"v(\d+)(?:\.0)?")
_PARTITION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SUPPORTED_VERSIONS = (1, 2)
_RESOURCE = "https://dicom.healthcareapis.azure.com"
_CHALLENGE = (
    'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    f'resource_id="{_RESOURCE}", realm="{_RESOURCE}"'
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request answered by an :class:`AzureDicomEmulator`.

    Attributes
    ----------
    method : str
        The HTTP method.
    path : str
        The request path (percent-encoded, as sent).
    query : str
        The query string, without ``?``.
    status : int
        The status of the answer.
    """

    method: str
    path: str
    query: str
    status: int


def _public_origin(request: Request) -> str:
    """Where clients reach the service: the request's origin, or what a proxy says it is.

    The Azure DICOM service builds the URLs it returns (RetrieveURL, Location, operation
    hrefs) from ``X-Forwarded-Host`` (with ``X-Forwarded-Proto``) and ``X-Forwarded-Prefix``
    when a proxy in front of it sends them.
    """
    host = (request.header("x-forwarded-host") or "").split(",")[0].strip()
    prefix = (request.header("x-forwarded-prefix") or "").split(",")[0].strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    if not host:
        return request.origin + prefix
    scheme = (request.header("x-forwarded-proto") or "").split(",")[0].strip()
    scheme = scheme or request.origin.split("://", 1)[0]
    return f"{scheme}://{host}{prefix}"


class EmulatorApp:
    """Answers requests for one emulator's state."""

    def __init__(
        self,
        state: EmulatorState,
        *,
        require_auth: bool,
        token_validator: TokenValidator | None,
        latency: float,
        data_partitions: bool,
    ) -> None:
        self.state = state
        self.require_auth = require_auth
        self.token_validator = token_validator
        self.latency = latency
        self.data_partitions = data_partitions
        self.dicomweb = DicomwebHandlers(state)
        self.stow = StowHandlers(state)
        self.azure = AzureHandlers(state)
        self.worklist = WorklistHandlers(state)
        self._lock = threading.Lock()
        self.records: list[RecordedRequest] = []
        self.errors: list[str] = []
        self.request_count = 0
        self._fail_every = 0
        self._fail_seen = 0
        self._fail_status = 503
        self._retry_after: float | None = None
        self._drop_after: int | None = None

    # ---- faults -------------------------------------------------------------------------

    def fail_every(self, n: int, status: int, retry_after: float | None) -> None:
        """Answer every ``n``-th request from now on with ``status`` (0 turns this off)."""
        with self._lock:
            self._fail_every = n
            self._fail_seen = 0
            self._fail_status = status
            self._retry_after = retry_after

    def drop_next_response_after(self, n_bytes: int) -> None:
        """Cut the next response that has a body after ``n_bytes`` of it."""
        with self._lock:
            self._drop_after = n_bytes

    def clear_faults(self) -> None:
        """Turn every fault off."""
        with self._lock:
            self._fail_every = 0
            self._drop_after = None

    def reset_records(self) -> None:
        """Forget recorded requests and errors and restart the request count."""
        with self._lock:
            self.records.clear()
            self.errors.clear()
            self.request_count = 0

    def snapshot(self) -> tuple[list[RecordedRequest], list[str]]:
        """Copies of the recorded requests and errors."""
        with self._lock:
            return list(self.records), list(self.errors)

    def record_error(self, text: str) -> None:
        """Keep the traceback of a failure inside the emulator for the tests to see."""
        with self._lock:
            self.errors.append(text)

    def _injected_fault(self) -> Response | None:
        with self._lock:
            self.request_count += 1
            if not self._fail_every:
                return None
            self._fail_seen += 1
            if self._fail_seen % self._fail_every:
                return None
            status, retry_after = self._fail_status, self._retry_after
        headers = []
        if retry_after is not None:
            text = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
            headers.append(("Retry-After", text))
        return error_response(status, "the service is busy (injected fault)", headers)

    # ---- entry point --------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer ``request``; the body of a streamed answer is produced later."""
        fault = self._injected_fault()
        if self.latency > 0:
            await anyio.sleep(self.latency)
        try:
            if fault is not None:
                response = fault
            else:
                response = self._authenticate(request) or await self._dispatch(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except ClientDisconnected:
            raise
        except Exception:  # a bug in the emulator: answer 500 and keep the traceback
            self.record_error(traceback.format_exc())
            response = error_response(500, "internal error in the emulator")
        with self.state.lock:
            # Operations that became due complete before anyone can observe them.
            self.state.advance()
        response.headers.append(("api-supported-versions", "1, 2"))
        with self._lock:
            if self._drop_after is not None and response.content_length > 0:
                response.cut_after = self._drop_after
                self._drop_after = None
            self.records.append(
                RecordedRequest(request.method, request.path, request.query, response.status)
            )
        return response

    def _authenticate(self, request: Request) -> Response | None:
        header = (request.header("authorization") or "").strip()
        if not header:
            if not self.require_auth:
                return None
            return error_response(
                401, "a bearer token is required", [("WWW-Authenticate", _CHALLENGE)]
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        valid = scheme.lower() == "bearer" and bool(token)
        if valid and self.token_validator is not None:
            valid = bool(self.token_validator(token))
        if valid:
            return None
        return error_response(
            401,
            "the bearer token is missing or invalid",
            [("WWW-Authenticate", f'{_CHALLENGE}, error="invalid_token"')],
        )

    # ---- routing ------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        with self.state.lock:
            self.state.advance()
        segments = [unquote(s) for s in request.path.split("/")[1:]]
        if segments and not segments[-1]:
            segments.pop()  # a trailing slash
        match = _VERSION_RE.fullmatch(segments[0]) if segments else None
        if match is None:
            raise HttpError(404, "paths start with the API version, e.g. /v2/studies")
        version = int(match.group(1))
        if version not in _SUPPORTED_VERSIONS:
            raise HttpError(400, f"API version v{version} is not supported (v1, v2)")
        service_url = f"{_public_origin(request)}/{segments[0]}"
        rest = segments[1:]
        if rest[:1] == ["partitions"]:
            if not self.data_partitions:
                raise HttpError(400, "data partitions are not enabled on this service")
            if len(rest) == 1:
                ctx = Context(version, DEFAULT_PARTITION, service_url, service_url)
                return await self._one_of(
                    request, {"GET": lambda: self.azure.list_partitions(request, ctx)}
                )
            name = rest[1]
            if not _PARTITION_RE.fullmatch(name):
                raise HttpError(400, f"the partition name {name!r} is not valid")
            base_url = f"{service_url}/partitions/{quote(name)}"
            ctx = Context(version, name, service_url, base_url)
            rest = rest[2:]
            if not rest or rest[0] not in ("studies", "series", "instances"):
                raise HttpError(404, "no such resource in a partition")
        else:
            ctx = Context(version, DEFAULT_PARTITION, service_url, service_url)
            azure = await self._azure_route(request, ctx, rest)
            if azure is not None:
                return azure
        return await self._study_route(request, ctx, rest)

    async def _one_of(self, request: Request, handlers: dict[str, _Handler]) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            raise HttpError(
                405,
                f"{request.method} is not allowed on this resource",
                [("Allow", ", ".join(handlers))],
            )
        return await handler()

    async def _azure_route(
        self, request: Request, ctx: Context, rest: list[str]
    ) -> Response | None:
        a = self.azure
        handlers: dict[str, _Handler]
        match rest:
            case ["changefeed"]:
                handlers = {"GET": lambda: a.changefeed(request, ctx)}
            case ["changefeed", "latest"]:
                handlers = {"GET": lambda: a.changefeed_latest(request, ctx)}
            case ["extendedquerytags"]:
                handlers = {
                    "GET": lambda: a.list_tags(request, ctx),
                    "POST": lambda: a.add_tags(request, ctx),
                }
            case ["extendedquerytags", tag]:
                handlers = {
                    "GET": lambda: a.get_tag(request, ctx, tag),
                    "PATCH": lambda: a.update_tag(request, ctx, tag),
                    "DELETE": lambda: a.delete_tag(request, ctx, tag),
                }
            case ["extendedquerytags", tag, "errors"]:
                handlers = {"GET": lambda: a.tag_errors(request, ctx, tag)}
            case ["operations", operation_id]:
                handlers = {"GET": lambda: a.operation(request, ctx, operation_id)}
            case ["workitems"]:
                w = self.worklist
                handlers = {
                    "GET": lambda: w.search(request, ctx),
                    "POST": lambda: w.create(request, ctx),
                }
            case ["workitems", uid]:
                w = self.worklist
                handlers = {
                    "GET": lambda: w.retrieve(request, ctx, uid),
                    "POST": lambda: w.update(request, ctx, uid),
                }
            case ["workitems", uid, "state"]:
                handlers = {"PUT": lambda: self.worklist.change_state(request, ctx, uid)}
            case ["workitems", uid, "cancelrequest"]:
                handlers = {"POST": lambda: self.worklist.cancel(request, ctx, uid)}
            case _:
                return None
        return await self._one_of(request, handlers)

    async def _study_route(self, request: Request, ctx: Context, rest: list[str]) -> Response:
        d = self.dicomweb
        handlers: dict[str, _Handler]
        match rest:
            case ["studies"]:
                handlers = {
                    "GET": lambda: d.search(request, ctx, SearchRoute(STUDY)),
                    "POST": lambda: self.stow.store(request, ctx, None),
                }
                if ctx.api_version >= 2:  # upsert came with v2
                    handlers["PUT"] = lambda: self.stow.store(request, ctx, None, upsert=True)
            case ["series"]:
                handlers = {"GET": lambda: d.search(request, ctx, SearchRoute(SERIES))}
            case ["instances"]:
                handlers = {"GET": lambda: d.search(request, ctx, SearchRoute(INSTANCE))}
            case ["studies", action] if action.lower() == "$bulkupdate":
                handlers = {"POST": lambda: self.azure.bulk_update(request, ctx)}
            case ["studies", study]:
                handlers = {
                    "GET": lambda: d.retrieve(request, ctx, study, None, None),
                    "POST": lambda: self.stow.store(request, ctx, study),
                    "DELETE": lambda: d.delete(request, ctx, study, None, None),
                }
                if ctx.api_version >= 2:
                    handlers["PUT"] = lambda: self.stow.store(request, ctx, study, upsert=True)
            case ["studies", study, "thumbnail"]:
                handlers = {"GET": lambda: d.thumbnail(request, ctx, study)}
            case ["studies", study, "series", series, "thumbnail"]:
                handlers = {"GET": lambda: d.thumbnail(request, ctx, study, series)}
            case ["studies", study, "metadata"]:
                handlers = {"GET": lambda: d.metadata(request, ctx, study, None, None)}
            case ["studies", study, "series"]:
                route = SearchRoute(SERIES, study)
                handlers = {"GET": lambda: d.search(request, ctx, route)}
            case ["studies", study, "instances"]:
                route = SearchRoute(INSTANCE, study)
                handlers = {"GET": lambda: d.search(request, ctx, route)}
            case ["studies", study, "series", series]:
                handlers = {
                    "GET": lambda: d.retrieve(request, ctx, study, series, None),
                    "DELETE": lambda: d.delete(request, ctx, study, series, None),
                }
            case ["studies", study, "series", series, "metadata"]:
                handlers = {"GET": lambda: d.metadata(request, ctx, study, series, None)}
            case ["studies", study, "series", series, "instances"]:
                route = SearchRoute(INSTANCE, study, series)
                handlers = {"GET": lambda: d.search(request, ctx, route)}
            case ["studies", study, "series", series, "instances", sop]:
                handlers = {
                    "GET": lambda: d.retrieve(request, ctx, study, series, sop),
                    "DELETE": lambda: d.delete(request, ctx, study, series, sop),
                }
            case ["studies", study, "series", series, "instances", sop, "metadata"]:
                handlers = {"GET": lambda: d.metadata(request, ctx, study, series, sop)}
            case ["studies", study, "series", series, "instances", sop, "rendered"]:
                handlers = {"GET": lambda: d.rendered(request, ctx, study, series, sop)}
            case ["studies", study, "series", series, "instances", sop, "thumbnail"]:
                handlers = {"GET": lambda: d.thumbnail(request, ctx, study, series, sop)}
            case ["studies", study, "series", series, "instances", sop, "frames", n, "thumbnail"]:
                handlers = {"GET": lambda: d.thumbnail(request, ctx, study, series, sop, n)}
            case ["studies", study, "series", series, "instances", sop, "frames", frames]:
                handlers = {"GET": lambda: d.frames(request, ctx, study, series, sop, frames)}
            case ["studies", study, "series", series, "instances", sop, "frames", n, "rendered"]:
                handlers = {"GET": lambda: d.rendered(request, ctx, study, series, sop, n)}
            case _:
                raise HttpError(404, "no such resource")
        return await self._one_of(request, handlers)
