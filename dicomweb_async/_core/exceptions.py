"""Exceptions raised by dicomweb-async.

Every exception the library raises on purpose derives from :class:`DICOMwebError`::

    DICOMwebError
    ├── TransportError            the request did not get a complete answer
    │   └── TimeoutError          a connect, read, write or pool timeout
    ├── ProtocolError             the server answered something that cannot be parsed
    │   └── MultipartError        a malformed or truncated multipart/related body
    ├── HTTPStatusError           the server answered with an error status
    │   ├── AuthenticationError   401
    │   ├── PermissionDeniedError 403
    │   ├── NotFoundError         404
    │   ├── MethodNotAllowedError 405 (e.g. DELETE on a server without it)
    │   ├── NotAcceptableError    406 (no acceptable media type / transfer syntax)
    │   ├── ConflictError         409
    │   └── ServerError           5xx
    ├── StoreFailedError          STOW-RS answered, but some instances were not stored
    └── BulkTransferError         a bulk upload or download finished with failures

Errors of the libraries underneath are translated into these at one place each, so callers
never need to import them to handle failures: httpx's in the transport
(``_transport/transport.py``), the ``multipart`` parser's in the multipart reader (the one
module that imports it), pydicom's in ``_core/datasets.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store_result import StoreResult

__all__ = [
    "AuthenticationError",
    "BulkTransferError",
    "ConflictError",
    "DICOMwebError",
    "HTTPStatusError",
    "MethodNotAllowedError",
    "MultipartError",
    "NotAcceptableError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ServerError",
    "StoreFailedError",
    "TimeoutError",
    "TransportError",
    "status_error_class",
]


class DICOMwebError(Exception):
    """Root of every error raised by dicomweb-async.

    Parameters
    ----------
    message : str
        Human-readable description.
    method : str, optional
        HTTP method of the request that failed.
    url : str, optional
        URL of the request that failed (never includes credentials).
    """

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None):
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url

    def __str__(self) -> str:
        if self.method and self.url:
            return f"{self.message} ({self.method} {self.url})"
        return self.message


class TransportError(DICOMwebError):
    """The request failed before a complete response arrived (connection refused, reset...)."""


class TimeoutError(TransportError):
    """A connect, read, write or connection-pool timeout expired."""


class ProtocolError(DICOMwebError):
    """The server's answer does not follow the protocol (bad media type, bad JSON...)."""


class MultipartError(ProtocolError):
    """A multipart/related body is malformed or ended early.

    Attributes
    ----------
    part_index : int or None
        Zero-based index of the part being read when the error happened.
    offset : int or None
        Byte offset in the body at which the problem was detected.
    truncated : bool
        True when the body ended early (the connection closed before the closing
        boundary or the declared length): worth asking again, unlike a malformed body.
    """

    def __init__(
        self,
        message: str,
        *,
        part_index: int | None = None,
        offset: int | None = None,
        method: str | None = None,
        url: str | None = None,
        truncated: bool = False,
    ):
        where = []
        if part_index is not None:
            where.append(f"part {part_index}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        full = f"{message} at {', '.join(where)}" if where else message
        super().__init__(full, method=method, url=url)
        self.part_index = part_index
        self.offset = offset
        self.truncated = truncated


class HTTPStatusError(DICOMwebError):
    """The server answered with a 4xx or 5xx status.

    Attributes
    ----------
    status_code : int
        The HTTP status.
    body_excerpt : str
        The first few hundred characters of the response body, for diagnosis.
    headers : dict of str to str
        Response headers (lower-cased names).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str | None = None,
        url: str | None = None,
        body_excerpt: str = "",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message, method=method, url=url)
        self.status_code = status_code
        self.body_excerpt = body_excerpt
        self.headers = headers or {}

    def __str__(self) -> str:
        text = f"{self.status_code} {self.message}"
        if self.method and self.url:
            text += f" ({self.method} {self.url})"
        if self.body_excerpt:
            text += f": {self.body_excerpt}"
        return text


class AuthenticationError(HTTPStatusError):
    """401: credentials missing, wrong or expired."""


class PermissionDeniedError(HTTPStatusError):
    """403: the credentials are valid but lack the role for this operation."""


class NotFoundError(HTTPStatusError):
    """404: the study, series, instance or route does not exist."""


class MethodNotAllowedError(HTTPStatusError):
    """405: the server does not offer this method on this route (e.g. DICOMweb DELETE)."""


class NotAcceptableError(HTTPStatusError):
    """406: the server cannot produce any of the requested media types or syntaxes."""


class ConflictError(HTTPStatusError):
    """409: e.g. the instance already exists, or a study UID does not match the URL."""


class ServerError(HTTPStatusError):
    """5xx: the server failed or is busy."""


class StoreFailedError(DICOMwebError):
    """A STOW-RS request was answered, but some instances were not stored.

    Attributes
    ----------
    result : StoreResult
        The parsed response with stored, failed and warning outcomes.
    """

    def __init__(self, message: str, *, result: StoreResult, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.result = result


class BulkTransferError(DICOMwebError):
    """A bulk upload or download finished, and some of its files or instances failed.

    Attributes
    ----------
    report : UploadReport or DownloadReport
        Every input with its outcome.
    """

    def __init__(self, message: str, *, report: Any):
        super().__init__(message)
        self.report = report


_BY_STATUS: dict[int, type[HTTPStatusError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    406: NotAcceptableError,
    409: ConflictError,
}


def status_error_class(status_code: int) -> type[HTTPStatusError]:
    """Return the most specific :class:`HTTPStatusError` subclass for a status code."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    return HTTPStatusError
