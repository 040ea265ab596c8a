"""WADO-RS, QIDO-RS and DELETE of the Azure DICOM emulator.

WADO-RS answers stream the stored bytes with the package's own multipart framing and an
exact Content-Length. Nothing is transcoded: asking for another transfer syntax than the
stored one answers 406.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import anyio

from ..._core.external_metadata import REQUEST_META_HEADER
from ..._core.media import DICOM, OCTET_STREAM
from ..._core.multipart_writer import BodyPart, MultipartWriter
from .negotiation import (
    check_json_accept,
    check_uid,
    choose,
    etag_matches,
    frame_numbers,
    frame_options,
    instance_options,
    rendered_quality,
    rendered_viewport,
    wants_original,
)
from .qido import QueryError, SearchRoute, search
from .render import RenderError, choose_image_type, render
from .store import EmulatorState, Instance, Version
from .wire import (
    DICOM_JSON,
    Chunk,
    Context,
    HttpError,
    Request,
    Response,
    json_response,
)

__all__ = ["DicomwebHandlers"]

#: The largest width and height of a thumbnail unless the request gives a viewport.
THUMBNAIL_VIEWPORT = (128, 128)

_CHUNK = 1024 * 1024


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


class DicomwebHandlers:
    """The retrieve, search and delete resources (DELETE is Azure's own) of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

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
        original = wants_original(request)
        versions = [instance.pick(original) for instance in found]
        accept = request.header("accept")
        options = instance_options(accept, single_allowed=sop is not None)
        single = choose(options, {v.transfer_syntax for v in versions}, accept)
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
        numbers = frame_numbers(text)
        version = self._find(ctx, study, series, sop)[0].pick(wants_original(request))
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
        single = choose(frame_options(accept, len(numbers)), {version.transfer_syntax}, accept)
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
        check_json_accept(request)
        original = wants_original(request)
        suffix = "-original" if original and any(i.original for i in found) else ""
        if sop is not None:
            etag = f'"{found[0].watermark}{suffix}"'
        else:
            etag = f'"{max(i.watermark for i in found)}-{len(found)}{suffix}"'
        headers = [("ETag", etag)]
        if etag_matches(request.header("if-none-match"), etag):
            return Response(304, headers)
        data = [instance.pick(original).metadata for instance in found]
        if (request.header(REQUEST_META_HEADER) or "").strip().lower() == "true":
            with self.state.lock:
                external = dict(self.state.external.get((ctx.partition, study), {}))
            if external:
                data = [dict(sorted({**item, **external}.items())) for item in data]
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
        version = self._find(ctx, study, series, sop)[0].pick(wants_original(request))
        numbers = frame_numbers(frame)
        if len(numbers) != 1:
            raise HttpError(400, "a rendered frame request names one frame")
        return await self._render(request, version, numbers[0], None)

    async def thumbnail(
        self,
        request: Request,
        ctx: Context,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        frame: str = "1",
    ) -> Response:
        """A small image of a study, series, instance or frame (PS3.18 thumbnail resources).

        A study or series is shown by its first instance that has pixel data.
        """
        found = self._find(ctx, study, series, sop)
        original = wants_original(request)
        versions = [i.pick(original) for i in sorted(found, key=lambda i: i.order)]
        with_pixels = [v for v in versions if v.has_pixel_data]
        if not with_pixels:
            raise HttpError(404, "nothing in the resource has pixel data to show")
        numbers = frame_numbers(frame)
        if len(numbers) != 1:
            raise HttpError(400, "a thumbnail request names one frame")
        return await self._render(request, with_pixels[0], numbers[0], THUMBNAIL_VIEWPORT)

    async def _render(
        self,
        request: Request,
        version: Version,
        number: int,
        default_viewport: tuple[int, int] | None,
    ) -> Response:
        layout = version.frames
        if not version.has_pixel_data or layout is None:
            raise HttpError(406, "only native (uncompressed) pixel data is rendered here")
        if number > layout.count:
            raise HttpError(404, f"frame {number} does not exist")
        quality = rendered_quality(request)
        viewport = rendered_viewport(request) or default_viewport
        try:
            image_type = choose_image_type(request.header("accept"))
            pixels = b"".join(
                [
                    bytes(chunk)
                    async for chunk in _read_range(
                        version, layout.start(number), layout.frame_size
                    )
                ]
            )
            image = await anyio.to_thread.run_sync(
                render, pixels, version.metadata, image_type, quality, viewport
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
        check_json_accept(request)
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
