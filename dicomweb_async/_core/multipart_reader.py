"""Incremental multipart/related reader (no I/O).

This is the only module that imports the third-party ``multipart`` package. Its
``PushMultipartParser`` is written for ``multipart/form-data`` and insists on a
Content-Disposition header in every part; DICOMweb parts have none, so the parser's
``_create_segment`` hook is overridden. That hook exists from ``multipart`` 2.0 on; a test
checks that it is still there.

The reader is fed bytes as they arrive and produces events:
:class:`PartStart` (with the part's headers), :class:`PartData` (a piece of its body) and
:class:`PartEnd`. It never holds more than one network chunk plus a boundary's length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import multipart

from .exceptions import MultipartError
from .media import MediaType, parse_media_type

logger = logging.getLogger("dicomweb_async")

__all__ = [
    "BoundarySniffer",
    "Event",
    "MultipartReader",
    "PartData",
    "PartEnd",
    "PartHeaders",
    "PartStart",
    "SinglePartReader",
    "make_reader",
]


def _length(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() else None


@dataclass(frozen=True)
class PartHeaders:
    """The headers of one body part, in the order they were received.

    Attributes
    ----------
    items : tuple of (str, str)
        Header names (Title-Case) and values.
    content_type : MediaType
        The part's parsed Content-Type (empty ``mime`` when absent).
    transfer_syntax : str or None
        From the part's Content-Type, else from the response's ``type`` parameter.
    content_location : str or None
        The part's Content-Location, if the server sent one.
    content_length : int or None
        The part's declared Content-Length, if any.
    """

    items: tuple[tuple[str, str], ...]
    content_type: MediaType = field(default_factory=lambda: MediaType(""))
    transfer_syntax: str | None = None
    content_location: str | None = None
    content_length: int | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or ``default``."""
        wanted = name.lower()
        for key, value in self.items:
            if key.lower() == wanted:
                return value
        return default

    @classmethod
    def from_items(
        cls, items: tuple[tuple[str, str], ...], fallback: MediaType | None = None
    ) -> PartHeaders:
        """Build from raw header pairs; ``fallback`` supplies a missing Content-Type."""
        wanted = {"content-type": "", "content-location": "", "content-length": ""}
        for key, value in items:
            lowered = key.lower()
            if lowered in wanted and not wanted[lowered]:
                wanted[lowered] = value.strip()
        if wanted["content-type"]:
            ctype = parse_media_type(wanted["content-type"])
        elif fallback is not None:
            ctype = fallback
        else:
            ctype = MediaType("")
        ts = ctype.transfer_syntax
        if ts is None and fallback is not None:
            ts = fallback.transfer_syntax
        length = _length(wanted["content-length"])
        return cls(
            items=items,
            content_type=ctype,
            transfer_syntax=ts,
            content_location=wanted["content-location"] or None,
            content_length=length,
        )


@dataclass(frozen=True, slots=True)
class PartStart:
    """A new part begins; its body follows as :class:`PartData` events."""

    index: int
    headers: PartHeaders


@dataclass(frozen=True, slots=True)
class PartData:
    """A piece of the current part's body (never empty)."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete; ``size`` is its body length in bytes."""

    index: int
    size: int


Event = PartStart | PartData | PartEnd


# The parser's state while inside a part's body (None if a later version renames it:
# parts are then always scanned for their boundary).
_BODY_STATE = getattr(multipart, "_BODY", None)


class _RelatedParser(multipart.PushMultipartParser):  # type: ignore[misc]
    """``PushMultipartParser`` that accepts parts without Content-Disposition.

    It also counts parts as their delimiters are seen (before their headers), so errors
    inside a header block name the right part, and a closing delimiter is noticed as soon
    as it is parsed rather than only when the parser is closed.

    Where a part declares its Content-Length, the bytes that the length says are still
    to come are taken as body without searching them for the boundary
    (:meth:`declared_rest`, :meth:`take_body`); the parser then meets the delimiter
    right after them. Its own check that the body matches the Content-Length still
    runs, so a wrong length fails the body as before.
    """

    parts_begun = 0
    parts_ended = 0

    def declared_rest(self) -> int:
        """Bytes of the current body its Content-Length still announces; else 0.

        Nonzero only inside a body with a declared length and with nothing held back
        (the parser keeps what might be the start of a delimiter).
        """
        if _BODY_STATE is None or self._state is not _BODY_STATE or self._buffer:
            return 0
        segment = getattr(self, "_segment", None)
        limit: int = getattr(self, "_segment_limit", -1)
        if segment is None or limit <= 0:
            return 0
        return max(0, limit - int(segment.bytes_received))

    def take_body(self, data: bytes) -> bytes:
        """Take ``data`` (at most :meth:`declared_rest` bytes) as body, unsearched."""
        self._parsed += len(data)
        result: bytes = self._on_segment_payload(data)
        return result

    def _create_segment(self, headerlist: list[tuple[str, str]]) -> Any:
        return multipart.MultipartSegment(headerlist)

    def _on_segment_start(self) -> None:
        super()._on_segment_start()
        self.parts_begun += 1

    def _on_segment_complete(self) -> None:
        super()._on_segment_complete()
        self.parts_ended += 1


class MultipartReader:
    """Push parser for a ``multipart/related`` body.

    Parameters
    ----------
    boundary : str
        The boundary from the response's Content-Type.
    part_type : MediaType, optional
        The response's ``type`` parameter: used as the Content-Type (and transfer
        syntax) of parts that do not state their own.
    max_header_size : int
        Longest accepted part header line, in bytes.
    max_header_count : int
        Most headers accepted in one part.
    max_parts : int or None
        Most parts accepted in one body; ``None`` for no limit.

    Notes
    -----
    Call :meth:`feed` with each received chunk and consume the events it yields before
    feeding the next chunk; call :meth:`finish` once the body has ended. A body that ends
    before its closing boundary raises :class:`MultipartError` from :meth:`finish`.
    """

    def __init__(
        self,
        boundary: str,
        *,
        part_type: MediaType | None = None,
        max_header_size: int = 16 * 1024,
        max_header_count: int = 32,
        max_parts: int | None = None,
    ):
        if not boundary:
            raise MultipartError("multipart response has no boundary parameter")
        try:
            self._parser = _RelatedParser(
                boundary,
                max_header_size=max_header_size,
                max_header_count=max_header_count,
                max_segment_count=float("inf") if max_parts is None else max_parts,
            )
        except multipart.MultipartError as exc:
            raise MultipartError(f"invalid multipart boundary {boundary!r}: {exc}") from None
        self._part_type = part_type
        self._index = -1
        self._received = 0
        self._part_size = 0
        self._in_part = False

    @property
    def offset(self) -> int:
        """Bytes of the body received so far."""
        return self._received

    @property
    def part_count(self) -> int:
        """Number of parts started so far."""
        return self._index + 1

    def _error(self, message: str, truncated: bool = False) -> MultipartError:
        begun = self._parser.parts_begun
        return MultipartError(
            message,
            part_index=begun - 1 if begun else None,
            offset=self._received,
            truncated=truncated,
        )

    def feed(self, data: bytes) -> Iterator[Event]:
        """Parse ``data`` and yield the events it completes.

        Parameters
        ----------
        data : bytes
            The next piece of the body; empty input is ignored.

        Yields
        ------
        PartStart, PartData or PartEnd
        """
        if not data:
            return
        self._received += len(data)
        if type(data) is not bytes:
            data = bytes(data)
        try:
            rest = self._parser.declared_rest()
            if rest:
                # Body the part's Content-Length announces: no boundary search needed.
                body = data if rest >= len(data) else data[:rest]
                self._parser.take_body(body)
                self._part_size += len(body)
                yield PartData(self._index, body)
                if len(body) == len(data):
                    return
                data = data[rest:]
            for event in self._parser.parse(data):
                if event is None:
                    self._in_part = False
                    yield PartEnd(self._index, self._part_size)
                elif isinstance(event, multipart.MultipartSegment):
                    self._index += 1
                    self._part_size = 0
                    self._in_part = True
                    headers = PartHeaders.from_items(tuple(event.headerlist), self._part_type)
                    yield PartStart(self._index, headers)
                else:
                    self._part_size += len(event)
                    yield PartData(self._index, event)
        except multipart.ParserLimitReached as exc:
            raise self._error(f"multipart limit exceeded: {exc}") from None
        except multipart.MultipartError as exc:
            raise self._error(f"malformed multipart body: {exc}") from None

    def finish(self) -> Iterator[Event]:
        """Signal the end of the body.

        Raises
        ------
        MultipartError
            If the body ended before the closing boundary.
        """
        if self._parser.closed and self._parser.error is None:
            return iter(())
        try:
            self._parser.close(check_complete=True)
        except multipart.MultipartError:
            if self._parser.parts_begun == 0:
                raise self._error("body ended before the first part began", True) from None
            if self._parser.parts_begun > self._index + 1:
                raise self._error(
                    "body ended inside a part's headers (truncated response)", True
                ) from None
            if self._in_part:
                raise self._error(
                    f"body ended inside a part after {self._part_size} bytes of it "
                    "(truncated response)",
                    True,
                ) from None
            raise self._error("body ended before the closing boundary", True) from None
        return iter(())

    @property
    def complete(self) -> bool:
        """Whether the closing boundary has been seen."""
        if self._parser.error is not None:
            return False
        begun, ended = self._parser.parts_begun, self._parser.parts_ended
        return (begun > 0 and begun == ended) or bool(self._parser.closed)


class SinglePartReader:
    """Reader for a non-multipart response: the whole body is one part.

    Parameters
    ----------
    content_type : MediaType
        The response's Content-Type.
    content_length : int or None
        The response's Content-Length, if declared; a shorter body raises on
        :meth:`finish`.
    headers : tuple of (str, str)
        Response headers to expose as the part's headers.
    """

    def __init__(
        self,
        content_type: MediaType,
        content_length: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ):
        self._headers = PartHeaders(
            items=headers,
            content_type=content_type,
            transfer_syntax=content_type.transfer_syntax,
            content_location=None,
            content_length=content_length,
        )
        self._length = content_length
        self._received = 0
        self._started = False
        self._done = False

    @property
    def offset(self) -> int:
        """Bytes of the body received so far."""
        return self._received

    @property
    def part_count(self) -> int:
        """1 once the part has started, else 0."""
        return 1 if self._started else 0

    def feed(self, data: bytes) -> Iterator[Event]:
        """Yield the part's start (once) and ``data`` as its body."""
        if not self._started:
            self._started = True
            yield PartStart(0, self._headers)
        if data:
            self._received += len(data)
            if self._length is not None and self._received > self._length:
                raise MultipartError(
                    f"body longer than its Content-Length {self._length}",
                    part_index=0,
                    offset=self._received,
                )
            yield PartData(0, bytes(data))

    def finish(self) -> Iterator[Event]:
        """End the part; raises if fewer bytes than Content-Length arrived."""
        if self._done:
            return
        self._done = True
        if self._length is not None and self._received < self._length:
            raise MultipartError(
                f"body ended after {self._received} of {self._length} bytes (truncated response)",
                part_index=0,
                offset=self._received,
                truncated=True,
            )
        yield from self.feed(b"")
        yield PartEnd(0, self._received)


def make_reader(
    content_type: str,
    *,
    content_length: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    max_header_size: int = 16 * 1024,
    max_header_count: int = 32,
    max_parts: int | None = None,
) -> MultipartReader | SinglePartReader | BoundarySniffer:
    """Choose the reader for a response by its Content-Type.

    Parameters
    ----------
    content_type : str
        The response's Content-Type header value.
    content_length : int, optional
        The response's Content-Length (used for single-part bodies).
    headers : tuple of (str, str)
        Response headers, exposed as the part headers of a single-part body.
    max_header_size, max_header_count, max_parts
        Limits passed to :class:`MultipartReader`.

    Returns
    -------
    MultipartReader, SinglePartReader or BoundarySniffer
        The last for ``multipart/related`` without a boundary parameter.
    """
    mtype = parse_media_type(content_type)
    if mtype.is_multipart:
        part_type = mtype.type_param
        outer_syntax = mtype.params.get("transfer-syntax")
        # Some servers state the transfer syntax beside `type` rather than inside it.
        if part_type is not None and outer_syntax and part_type.transfer_syntax is None:
            part_type = MediaType(
                part_type.mime, {**part_type.params, "transfer-syntax": outer_syntax}
            )
        if not mtype.boundary:
            return BoundarySniffer(
                part_type,
                content_length=content_length,
                headers=headers,
                max_header_size=max_header_size,
                max_header_count=max_header_count,
                max_parts=max_parts,
            )
        return MultipartReader(
            mtype.boundary,
            part_type=part_type,
            max_header_size=max_header_size,
            max_header_count=max_header_count,
            max_parts=max_parts,
        )
    return SinglePartReader(mtype, content_length, headers)


class BoundarySniffer:
    """The reader of a body labelled ``multipart/related`` without a ``boundary``.

    Some servers leave the parameter out. The body's first delimiter line names the
    boundary (``--<boundary>``); a body that does not start with one is not multipart
    at all and is read as a single part of the ``type`` the label gave. The first bytes
    are held until the first line is complete (at most 998 bytes, the longest a
    delimiter line may be), then handed to the reader chosen.
    """

    _LONGEST_LINE = 998

    def __init__(
        self,
        part_type: MediaType | None,
        *,
        content_length: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        max_header_size: int = 16 * 1024,
        max_header_count: int = 32,
        max_parts: int | None = None,
    ):
        self._part_type = part_type
        self._content_length = content_length
        self._headers = headers
        self._limits = (max_header_size, max_header_count, max_parts)
        self._held = b""
        self._reader: MultipartReader | SinglePartReader | None = None

    @property
    def reader(self) -> MultipartReader | SinglePartReader | None:
        """The reader chosen, once the first line has arrived."""
        return self._reader

    def _choose(self, final: bool) -> MultipartReader | SinglePartReader | None:
        start = self._held.lstrip(b"\r\n")  # a preamble of blank lines is allowed
        end = start.find(b"\r\n")
        if end < 0 and not final and len(start) < self._LONGEST_LINE:
            return None  # the first line is not complete yet
        line = start if end < 0 else start[:end]
        if line.startswith(b"--") and len(line) > 2:
            boundary = line[2:].rstrip(b" \t").decode("latin-1")
            logger.debug("multipart/related without a boundary: %r, from the body", boundary)
            size, count, parts = self._limits
            return MultipartReader(
                boundary,
                part_type=self._part_type,
                max_header_size=size,
                max_header_count=count,
                max_parts=parts,
            )
        logger.debug(
            "multipart/related without a boundary, and the body is not multipart: read as one part"
        )
        single = self._part_type or MediaType("application/dicom", {})
        return SinglePartReader(single, self._content_length, self._headers)

    def feed(self, data: bytes) -> Iterator[Event]:
        """Parse ``data`` (see :meth:`MultipartReader.feed`)."""
        if self._reader is not None:
            return self._reader.feed(data)
        self._held += data
        self._reader = self._choose(final=False)
        if self._reader is None:
            return iter(())
        held, self._held = self._held, b""
        return self._reader.feed(held)

    def finish(self) -> Iterator[Event]:
        """Signal the end of the body (see :meth:`MultipartReader.finish`)."""
        if self._reader is None:
            self._reader = self._choose(final=True)
            assert self._reader is not None
            held, self._held = self._held, b""
            events = list(self._reader.feed(held)) if held else []
            return iter([*events, *self._reader.finish()])
        return self._reader.finish()
