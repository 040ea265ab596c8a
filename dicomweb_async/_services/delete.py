"""DELETE of studies, series and instances (not part of every server's DICOMweb)."""

from __future__ import annotations

from .._core.exceptions import MethodNotAllowedError
from .._transport.transport import Transport

__all__ = ["delete"]


async def delete(transport: Transport, path: str) -> None:
    """Delete the study, series or instance at ``path``.

    Raises
    ------
    MethodNotAllowedError
        With a message saying the server offers no DELETE there (and what it allows).
    """
    try:
        await transport.request("DELETE", path, ok=(200, 202, 204))
    except MethodNotAllowedError as exc:
        allow = exc.headers.get("allow")
        exc.message = "the server does not support DELETE on this resource" + (
            f" (Allow: {allow})" if allow else ""
        )
        raise
