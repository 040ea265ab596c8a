"""STOW-RS of the Azure DICOM emulator: bodies parsed as they arrive, validated, stored.

Each part goes to memory or to a file below the storage directory through the package's
own push reader; the answer follows the service's conformance statement (200, 202 or 409
with FailureReason).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import anyio

from ..._core.exceptions import MultipartError
from ..._core.external_metadata import PREFIX as EXTERNAL_PREFIX
from ..._core.external_metadata import VRS as EXTERNAL_VRS
from ..._core.media import DICOM, MULTIPART_RELATED, parse_media_type
from ..._core.multipart_reader import Event, PartData, PartStart, make_reader
from .dicom import (
    ALREADY_STORED,
    STUDY_MISMATCH,
    VALIDATION_WARNING,
    InstanceRejected,
    ParsedInstance,
    parse_instance,
)
from .negotiation import check_json_accept, check_uid
from .store import EmulatorState, PartSink, Version
from .wire import (
    DICOM_JSON,
    Context,
    HttpError,
    Request,
    Response,
    json_response,
)

__all__ = ["StowHandlers"]

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


def _external_metadata(request: Request) -> dict[str, dict[str, object]]:
    """``msdicom-meta-{VR}-{tag}`` headers as DICOM JSON attributes (400 when malformed)."""
    found: dict[str, dict[str, object]] = {}
    for name, value in request.headers:
        lowered = name.lower()
        if not lowered.startswith(EXTERNAL_PREFIX):
            continue
        vr, _, tag = name[len(EXTERNAL_PREFIX) :].partition("-")
        vr, tag = vr.upper(), tag.upper()
        if (
            vr not in EXTERNAL_VRS
            or len(tag) != 8
            or not all(c in "0123456789ABCDEF" for c in tag)
        ):
            raise HttpError(
                400, f"the external metadata header {name!r} is not msdicom-meta-{{VR}}-{{tag}}"
            )
        if int(tag[:4], 16) % 2 == 0:
            raise HttpError(400, f"external metadata takes private tags only, not {tag}")
        attribute: dict[str, object] = {"vr": vr, "Value": [value]}
        if vr == "PN":
            attribute["Value"] = [{"Alphabetic": value}]
        found[tag] = attribute
    return found


class StowHandlers:
    """``POST /studies[/{study}]`` of one emulator, and ``PUT`` (upsert, API v2)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def store(
        self, request: Request, ctx: Context, study_uid: str | None, upsert: bool = False
    ) -> Response:
        """``POST /studies[/{study}]``; with ``upsert``, ``PUT``: stored ones are replaced."""
        if study_uid is not None:
            check_uid(study_uid, "StudyInstanceUID")
        check_json_accept(request)
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
        external = _external_metadata(request) if ctx.api_version >= 2 else {}
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
            response = self._commit(ctx, study_uid, sources, outcomes, kept, upsert)
            if external and response.status != 409:
                studies = {o.study_uid for o in outcomes if isinstance(o, ParsedInstance)}
                with self.state.lock:
                    for study in studies:
                        self.state.external.setdefault((ctx.partition, study), {}).update(external)
            return response
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
        upsert: bool = False,
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
                existing = self.state.partition_instances(ctx.partition).get(key)
                version = Version.from_parsed(outcome, source, size)
                if existing is not None and upsert:
                    self.state.upsert(existing, version)
                elif existing is not None:
                    failed.append(
                        _failed_item(outcome.sop_class_uid, outcome.sop_uid, ALREADY_STORED, [])
                    )
                    continue
                else:
                    self.state.add(ctx.partition, outcome, version)
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
