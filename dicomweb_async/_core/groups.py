"""Unwrapping exceptions that anyio task groups wrap."""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["single_error"]


def single_error(exc: BaseException) -> BaseException:
    """The one exception inside a group of one (nested groups included), else ``exc``.

    A task group reports a failure of one of its tasks as a group; callers of this
    package expect the error itself (a ``TransportError``, a ``MultipartError``...).
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
