"""STOW-RS, WADO-RS, QIDO-RS and DELETE of the Azure DICOM emulator.

STOW-RS bodies are parsed as they arrive with the package's own push reader, each part
going to memory or a file below the storage directory; WADO-RS answers stream the stored
bytes with the package's own multipart framing and an exact Content-Length. Nothing is
transcoded: asking for another transfer syntax than the stored one answers 406.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import anyio

from .._exceptions import MultipartError
from .._media import DICOM, MULTIPART_RELATED, OCTET_STREAM, parse_media_type
from .._multipart import Event, PartData, PartStart, make_reader
from .._multipart_writer import BodyPart, MultipartWriter
from ._emulator_dicom import (
    ALREADY_STORED,
    EXPLICIT_VR_LITTLE_ENDIAN,
    STUDY_MISMATCH,
    VALIDATION_WARNING,
    InstanceRejected,
    ParsedInstance,
    parse_instance,
    valid_uid,
)
from ._emulator_qido import QueryError, SearchRoute, search
from ._emulator_render import RenderError, choose_image_type, render
from ._emulator_store import EmulatorState, Instance, PartSink, Version
from ._emulator_wire import (
    Chunk,
    Context,
    HttpError,
    Request,
    Response,
    accept_ranges,
    json_response,
)

__all__ = ["DicomwebHandlers", "check_uid"]

DICOM_JSON = "application/dicom+json"
_JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
_CHUNK = 1024 * 1024
_JSON_TYPES = frozenset({DICOM_JSON, "application/json", "*/*", "application/*"})

# DICOM JSON tags of the STOW-RS response.
_RETRIEVE_URL = "00081190"
_FAILED_SEQUENCE = "00081198"
_REFERENCED_SEQUENCE = "00081199"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_FAILED_ATTRIBUTES = "00741048"
_ERROR_COMMENT = "00000902"


def check_uid(uid: str, what: str) -> None:
    """Answer 400 unless ``uid`` is a valid UID."""
    if not valid_uid(uid):
        raise HttpError(400, f"the {what} {uid!r} is not a valid UID")


def _check_json_accept(request: Request) -> None:
    accept = request.header("accept")
    if not accept or not accept.strip():
        return
    if not any(media.mime in _JSON_TYPES for media in accept_ranges(accept)):
        raise HttpError(406, f"the Accept header {accept!r} is not supported here")


def _quality(request: Request) -> int:
    """The ``quality`` query parameter of rendered requests (1-100, default 90)."""
    values = [v for k, v in parse_qsl(request.query) if k == "quality"]
    if not values:
        return 90
    try:
        quality = int(values[-1])
    except ValueError:
        raise HttpError(400, f"quality must be a number, not {values[-1]!r}") from None
    if not 1 <= quality <= 100:
        raise HttpError(400, f"quality must be from 1 to 100, not {quality}")
    return quality


def _wants_original(request: Request) -> bool:
    return (request.header("msdicom-request-original") or "").strip().lower() == "true"


def _syntax(value: str | None, default: str | None = EXPLICIT_VR_LITTLE_ENDIAN) -> str | None:
    """The transfer syntax asked for; None means "as stored"."""
    if value is None or not value.strip():
        return default
    value = value.strip()
    return None if value == "*" else value


@dataclass(frozen=True)
class _Piece:
    content_type: str
    version: Version
    start: int
    length: int


async def _read_range(version: Version, start: int, length: int) -> AsyncGenerator[Chunk, None]:
    end = start + length
    if version.data is not None:
        view = memoryview(version.data)
        for position in range(start, end, _CHUNK):
            yield view[position : min(position + _CHUNK, end)]
        return
    assert version.path is not None
    async with await anyio.open_file(version.path, "rb") as handle:
        await handle.seek(start)
        remaining = length
        while remaining:
            data = await handle.read(min(_CHUNK, remaining))
            if not data:
                raise OSError(f"{version.path} is shorter than its recorded size")
            remaining -= len(data)
            yield data


def _single_response(piece: _Piece) -> Response:
    return Response(
        200,
        [("Content-Type", piece.content_type)],
        stream=lambda: _read_range(piece.version, piece.start, piece.length),
        length=piece.length,
    )


def _multipart_response(pieces: Sequence[_Piece], related_type: str) -> Response:
    writer = MultipartWriter(related_type=related_type)
    heads = [writer.head(BodyPart(size=p.length, content_type=p.content_type)) for p in pieces]
    tail = writer.tail()
    end = writer.part_end()
    length = sum(
        len(head) + piece.length + len(end) for head, piece in zip(heads, pieces, strict=True)
    )
    length += len(tail)

    async def stream() -> AsyncGenerator[Chunk, None]:
        for head, piece in zip(heads, pieces, strict=True):
            yield head
            chunks = _read_range(piece.version, piece.start, piece.length)
            # Closed explicitly so that a response cut short closes its file at once.
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            yield end
        yield tail

    return Response(200, [("Content-Type", writer.content_type)], stream=stream, length=length)


def _choose(options: list[tuple[bool, str | None]], stored: set[str], accept: str | None) -> bool:
    """Whether the first satisfiable option is single-part; 406 when none is."""
    if not options:
        raise HttpError(406, f"the Accept header {accept!r} is not supported here")
    for single, syntax in options:
        if syntax is None or stored == {syntax}:
            return single
    wanted = ", ".join(sorted({s for _, s in options if s}))
    raise HttpError(
        406,
        f"transfer syntax {wanted} was asked for but the data is stored as "
        f"{', '.join(sorted(stored))}; this emulator does not transcode "
        "(ask for transfer-syntax=*)",
    )


def _instance_options(accept: str | None, single_allowed: bool) -> list[tuple[bool, str | None]]:
    if not accept or not accept.strip():
        return [(single_allowed, None)]
    options: list[tuple[bool, str | None]] = []
    for media in accept_ranges(accept):
        if media.mime == MULTIPART_RELATED:
            inner = media.type_param
            if inner is not None and inner.mime not in (DICOM, "*/*", "application/*"):
                continue
            options.append((False, _syntax(media.transfer_syntax)))
        elif media.mime == DICOM and single_allowed:
            options.append((True, _syntax(media.params.get("transfer-syntax"))))
        elif media.mime in ("*/*", "application/*"):
            options.append((single_allowed, _syntax(media.params.get("transfer-syntax"), None)))
    return options


def _frame_options(accept: str | None, count: int) -> list[tuple[bool, str | None]]:
    if not accept or not accept.strip():
        return [(False, None)]
    options: list[tuple[bool, str | None]] = []
    for media in accept_ranges(accept):
        if media.mime == MULTIPART_RELATED:
            inner = media.type_param
            mime = inner.mime if inner is not None else OCTET_STREAM
            if mime in (OCTET_STREAM, "*/*", "application/*"):
                options.append((False, _syntax(media.transfer_syntax)))
            elif mime == "image/jp2":
                options.append((False, _syntax(media.transfer_syntax, _JPEG_2000_LOSSLESS)))
        elif media.mime == OCTET_STREAM and count == 1:
            options.append((True, _syntax(media.params.get("transfer-syntax"))))
        elif media.mime == "*/*":
            options.append((False, _syntax(media.params.get("transfer-syntax"), None)))
    return options


def _frame_numbers(text: str) -> list[int]:
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise HttpError(400, f"frame numbers are 1-based integers, got {piece!r}")
        numbers.append(int(piece))
    return numbers


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


def _ui(value: str | None) -> dict[str, object]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _failed_item(
    sop_class: str | None, sop: str | None, reason: int, comments: Sequence[str]
) -> dict[str, object]:
    item: dict[str, object] = {
        _SOP_CLASS: _ui(sop_class),
        _SOP_INSTANCE: _ui(sop),
        _FAILURE_REASON: {"vr": "US", "Value": [reason]},
    }
    if comments:
        item[_FAILED_ATTRIBUTES] = {
            "vr": "SQ",
            "Value": [{_ERROR_COMMENT: {"vr": "LO", "Value": [c]}} for c in comments],
        }
    return dict(sorted(item.items()))


class DicomwebHandlers:
    """The standard (and Azure's non-standard DELETE) study resources of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # ---- STOW-RS ------------------------------------------------------------------------

    async def store(self, request: Request, ctx: Context, study_uid: str | None) -> Response:
        """``POST /studies[/{study}]``."""
        if study_uid is not None:
            check_uid(study_uid, "StudyInstanceUID")
        _check_json_accept(request)
        content_type = request.header("content-type") or ""
        media = parse_media_type(content_type)
        if media.mime == MULTIPART_RELATED:
            inner = media.type_param
            if inner is not None and inner.mime != DICOM:
                raise HttpError(415, f"multipart/related of type {inner.mime!r} is not supported")
            if not media.boundary:
                raise HttpError(400, "multipart/related without a boundary")
        elif media.mime != DICOM:
            raise HttpError(415, f"the Content-Type {content_type!r} is not supported")
        parts = await self._receive(request, content_type)
        if not parts:
            return Response(204)
        sources: list[tuple[bytes | Path, int]] = []
        kept: set[int] = set()
        try:
            for mime, sink in parts:
                sources.append((sink.finish(), sink.size))
                if mime != DICOM:
                    raise HttpError(415, f"a part of type {mime or 'unknown'!r} cannot be stored")
            outcomes: list[ParsedInstance | InstanceRejected] = []
            for source, _ in sources:
                parse = functools.partial(
                    parse_instance, source, warnings_fail=ctx.api_version == 1
                )
                try:
                    outcomes.append(await anyio.to_thread.run_sync(parse))
                except InstanceRejected as exc:
                    outcomes.append(exc)
            return self._commit(ctx, study_uid, sources, outcomes, kept)
        finally:
            for index, (_, sink) in enumerate(parts):
                if index not in kept:
                    sink.discard()

    async def _receive(self, request: Request, content_type: str) -> list[tuple[str, PartSink]]:
        try:
            reader = make_reader(content_type)
        except MultipartError as exc:
            raise HttpError(400, f"malformed multipart request: {exc}") from None
        parts: list[tuple[str, PartSink]] = []
        received = 0

        def handle(event: Event) -> None:
            if isinstance(event, PartStart):
                parts.append((event.headers.content_type.mime, PartSink(self.state.storage_dir)))
            elif isinstance(event, PartData):
                parts[-1][1].write(event.data)

        try:
            async for chunk in request.body:
                received += len(chunk)
                for event in reader.feed(chunk):
                    handle(event)
            if not received:
                return []
            for event in reader.finish():
                handle(event)
        except MultipartError as exc:
            for _, sink in parts:
                sink.discard()
            raise HttpError(400, f"malformed multipart request: {exc}") from None
        except BaseException:
            for _, sink in parts:
                sink.discard()
            raise
        return parts

    def _commit(
        self,
        ctx: Context,
        study_uid: str | None,
        sources: list[tuple[bytes | Path, int]],
        outcomes: list[ParsedInstance | InstanceRejected],
        kept: set[int],
    ) -> Response:
        stored: list[dict[str, object]] = []
        failed: list[dict[str, object]] = []
        warned = False
        with self.state.lock:
            for index, ((source, size), outcome) in enumerate(zip(sources, outcomes, strict=True)):
                if isinstance(outcome, InstanceRejected):
                    failed.append(
                        _failed_item(
                            outcome.sop_class_uid,
                            outcome.sop_uid,
                            outcome.reason,
                            outcome.comments,
                        )
                    )
                    continue
                if study_uid is not None and outcome.study_uid != study_uid:
                    comment = (
                        f"the StudyInstanceUID {outcome.study_uid} does not match the study "
                        f"{study_uid} of the request URL"
                    )
                    failed.append(
                        _failed_item(
                            outcome.sop_class_uid, outcome.sop_uid, STUDY_MISMATCH, [comment]
                        )
                    )
                    continue
                key = (outcome.study_uid, outcome.series_uid, outcome.sop_uid)
                if key in self.state.partition_instances(ctx.partition):
                    failed.append(
                        _failed_item(outcome.sop_class_uid, outcome.sop_uid, ALREADY_STORED, [])
                    )
                    continue
                self.state.add(ctx.partition, outcome, Version.from_parsed(outcome, source, size))
                kept.add(index)
                url = (
                    f"{ctx.base_url}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                    f"/instances/{outcome.sop_uid}"
                )
                item: dict[str, object] = {
                    _SOP_CLASS: _ui(outcome.sop_class_uid),
                    _SOP_INSTANCE: _ui(outcome.sop_uid),
                    _RETRIEVE_URL: {"vr": "UR", "Value": [url]},
                }
                if outcome.warnings:
                    warned = True
                    item[_WARNING_REASON] = {"vr": "US", "Value": [VALIDATION_WARNING]}
                    item[_FAILED_ATTRIBUTES] = {
                        "vr": "SQ",
                        "Value": [
                            {_ERROR_COMMENT: {"vr": "LO", "Value": [c]}} for c in outcome.warnings
                        ],
                    }
                stored.append(dict(sorted(item.items())))
        body: dict[str, object] = {}
        if study_uid is not None and stored:
            body[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{ctx.base_url}/studies/{study_uid}"]}
        if failed:
            body[_FAILED_SEQUENCE] = {"vr": "SQ", "Value": failed}
        if stored:
            body[_REFERENCED_SEQUENCE] = {"vr": "SQ", "Value": stored}
        status = 409 if not stored else 202 if failed or warned else 200
        return json_response(status, body, DICOM_JSON)

    # ---- WADO-RS ------------------------------------------------------------------------

    def _find(
        self,
        ctx: Context,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        delete: bool = False,
    ) -> list[Instance]:
        check_uid(study, "StudyInstanceUID")
        if series is not None:
            check_uid(series, "SeriesInstanceUID")
        if sop is not None:
            check_uid(sop, "SOPInstanceUID")
        with self.state.lock:
            found = self.state.select(ctx.partition, study, series, sop)
            if not found:
                what = "instance" if sop else "series" if series else "study"
                raise HttpError(404, f"the requested {what} was not found")
            if delete:
                self.state.remove(found)
            return found

    async def retrieve(
        self, request: Request, ctx: Context, study: str, series: str | None, sop: str | None
    ) -> Response:
        """``GET`` a study, series or instance."""
        found = self._find(ctx, study, series, sop)
        original = _wants_original(request)
        versions = [instance.pick(original) for instance in found]
        accept = request.header("accept")
        options = _instance_options(accept, single_allowed=sop is not None)
        single = _choose(options, {v.transfer_syntax for v in versions}, accept)
        pieces = [
            _Piece(f"{DICOM}; transfer-syntax={v.transfer_syntax}", v, 0, v.size) for v in versions
        ]
        if single:
            return _single_response(pieces[0])
        return _multipart_response(pieces, DICOM)

    async def frames(
        self, request: Request, ctx: Context, study: str, series: str, sop: str, text: str
    ) -> Response:
        """``GET .../instances/{sop}/frames/{numbers}``."""
        numbers = _frame_numbers(text)
        version = self._find(ctx, study, series, sop)[0].pick(_wants_original(request))
        if not version.has_pixel_data:
            raise HttpError(404, "the instance has no pixel data")
        layout = version.frames
        if layout is None:
            raise HttpError(
                406,
                f"frames of pixel data stored as {version.transfer_syntax} are not served by "
                "this emulator (only native, uncompressed pixel data)",
            )
        for number in numbers:
            if number > layout.count:
                raise HttpError(
                    404, f"frame {number} does not exist (the instance has {layout.count})"
                )
        accept = request.header("accept")
        single = _choose(_frame_options(accept, len(numbers)), {version.transfer_syntax}, accept)
        content_type = f"{OCTET_STREAM}; transfer-syntax={version.transfer_syntax}"
        pieces = [
            _Piece(content_type, version, layout.start(n), layout.frame_size) for n in numbers
        ]
        if single:
            return _single_response(pieces[0])
        return _multipart_response(pieces, OCTET_STREAM)

    async def metadata(
        self, request: Request, ctx: Context, study: str, series: str | None, sop: str | None
    ) -> Response:
        """``GET .../metadata`` with ETag and If-None-Match."""
        found = self._find(ctx, study, series, sop)
        _check_json_accept(request)
        original = _wants_original(request)
        suffix = "-original" if original and any(i.original for i in found) else ""
        if sop is not None:
            etag = f'"{found[0].watermark}{suffix}"'
        else:
            etag = f'"{max(i.watermark for i in found)}-{len(found)}{suffix}"'
        headers = [("ETag", etag)]
        if _etag_matches(request.header("if-none-match"), etag):
            return Response(304, headers)
        data = [instance.pick(original).metadata for instance in found]
        return json_response(200, data, DICOM_JSON, headers)

    async def rendered(
        self,
        request: Request,
        ctx: Context,
        study: str,
        series: str,
        sop: str,
        frame: str = "1",
    ) -> Response:
        """An instance (its first frame) or one frame rendered as JPEG or PNG."""
        version = self._find(ctx, study, series, sop)[0].pick(_wants_original(request))
        numbers = _frame_numbers(frame)
        if len(numbers) != 1:
            raise HttpError(400, "a rendered frame request names one frame")
        layout = version.frames
        if not version.has_pixel_data or layout is None:
            raise HttpError(406, "only native (uncompressed) pixel data is rendered here")
        if numbers[0] > layout.count:
            raise HttpError(404, f"frame {numbers[0]} does not exist")
        quality = _quality(request)
        try:
            image_type = choose_image_type(request.header("accept"))
            pixels = b"".join(
                [
                    bytes(chunk)
                    async for chunk in _read_range(
                        version, layout.start(numbers[0]), layout.frame_size
                    )
                ]
            )
            image = await anyio.to_thread.run_sync(
                render, pixels, version.metadata, image_type, quality
            )
        except RenderError as exc:
            raise HttpError(406, str(exc)) from None
        return Response(200, [("Content-Type", image_type)], image)

    # ---- DELETE -------------------------------------------------------------------------

    async def delete(
        self, request: Request, ctx: Context, study: str, series: str | None, sop: str | None
    ) -> Response:
        """``DELETE`` a study, series or instance."""
        self._find(ctx, study, series, sop, delete=True)
        return Response(204)

    # ---- QIDO-RS ------------------------------------------------------------------------

    async def search(self, request: Request, ctx: Context, route: SearchRoute) -> Response:
        """The six QIDO-RS routes."""
        if route.study_uid is not None:
            check_uid(route.study_uid, "StudyInstanceUID")
        if route.series_uid is not None:
            check_uid(route.series_uid, "SeriesInstanceUID")
        _check_json_accept(request)
        params = parse_qsl(request.query, keep_blank_values=True)
        with self.state.lock:
            instances = list(self.state.partition_instances(ctx.partition).values())
            try:
                results = search(instances, route, params, self.state.tags)
            except QueryError as exc:
                raise HttpError(400, str(exc)) from None
        if not results:
            return Response(204)
        return json_response(200, results, DICOM_JSON)
