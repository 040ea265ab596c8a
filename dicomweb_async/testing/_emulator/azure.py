"""Azure's own APIs in the emulator: change feed, extended query tags, operations, bulk
update and partitions.

Long-running work (re-indexing for new query tags, bulk updates) becomes an operation that
completes once the emulator's ``operation_delay`` has passed; it is carried out the next
time the emulator handles a request (or when a test asks for it), not in a background task,
so that it works whichever event loop or thread the requests come from.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio

from .dicom import (
    apply_changes,
    attribute_tag,
    check_change_dataset,
    dictionary_vr,
    parse_instance,
    tag_key,
    valid_uid,
)
from .qido import MAX_LIMIT, SEARCHABLE_TAGS
from .store import (
    ChangeEntry,
    EmulatorState,
    Operation,
    OperationFailed,
    QueryTag,
    Version,
    utc_now,
    utc_text,
)
from .wire import Context, HttpError, Request, Response, json_response, read_json

__all__ = ["MAX_QUERY_TAGS", "AzureHandlers"]

JSONDict = dict[str, Any]

MAX_QUERY_TAGS = 128
_TAG_VRS = frozenset(
    [
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "PN",
        "SH",
        "SL",
        "SS",
        "TM",
        "UI",
        "UL",
        "US",
    ]
)
_LEVELS = {"study": "Study", "series": "Series", "instance": "Instance"}
_MAX_UPDATE_STUDIES = 50
_V1_MAX_LIMIT = 100


def _params(request: Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in parse_qsl(request.query, keep_blank_values=True):
        key = name.lower()
        if key in found:
            raise HttpError(400, f"the query parameter {name!r} is given more than once")
        found[key] = value
    return found


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name.lower())
    if text is None:
        return default
    if not text.strip().lstrip("-").isdigit():
        raise HttpError(400, f"{name} must be an integer, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise HttpError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    text = params.get(name.lower())
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise HttpError(400, f"{name} must be true or false, got {text!r}")
    return text.lower() == "true"


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name.lower())
    if text is None or not text.strip():
        return None
    value = text.strip()
    # An unencoded '+' of a UTC offset arrives as a space after query decoding.
    value = re.sub(r" (\d\d:?\d\d)$", r"+\1", value)
    value = re.sub(r"[zZ]$", "+00:00", value)
    # datetime.fromisoformat takes at most microseconds before Python 3.11.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise HttpError(400, f"{name} is not an ISO 8601 date and time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _reference(ctx: Context, operation: Operation) -> JSONDict:
    return {"id": operation.id, "href": f"{ctx.service_url}/operations/{operation.id}"}


class AzureHandlers:
    """The non-DICOMweb resources of one emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # ---- change feed --------------------------------------------------------------------

    def _entry(self, entry: ChangeEntry, include_metadata: bool) -> JSONDict:
        state = self.state.entry_state(entry)
        item: JSONDict = {
            "Sequence": entry.sequence,
            "StudyInstanceUid": entry.study_uid,
            "SeriesInstanceUid": entry.series_uid,
            "SopInstanceUid": entry.sop_uid,
            "Action": entry.action,
            "Timestamp": utc_text(entry.timestamp),
            "State": state,
        }
        if include_metadata:
            instance = self.state.entry_instance(entry)
            item["Metadata"] = instance.version.metadata if instance is not None else None
        return item

    async def changefeed(self, request: Request, ctx: Context) -> Response:
        """``GET /changefeed``: v2 pages by time window, v1 by sequence number."""
        params = _params(request)
        include = _bool(params, "includeMetadata", True)
        with self.state.lock:
            if ctx.api_version == 1:
                limit = _int(params, "limit", 10, 1, _V1_MAX_LIMIT)
                after = _int(params, "offset", 0, 0, 2**63 - 1)
                # v1 reads the sequence range (offset, offset + limit]: where numbers were
                # skipped a page comes back short or empty before the end of the feed.
                entries = [e for e in self.state.feed if after < e.sequence <= after + limit]
            else:
                limit = _int(params, "limit", 100, 1, MAX_LIMIT)
                offset = _int(params, "offset", 0, 0, 2**63 - 1)
                start, end = _time(params, "startTime"), _time(params, "endTime")
                if start is not None and end is not None and start >= end:
                    raise HttpError(400, "startTime must be before endTime")
                window = [
                    e
                    for e in self.state.feed
                    if (start is None or e.timestamp >= start)
                    and (end is None or e.timestamp < end)
                ]
                entries = window[offset : offset + limit]
            data = [self._entry(e, include) for e in entries]
        return json_response(200, data)

    async def changefeed_latest(self, request: Request, ctx: Context) -> Response:
        """``GET /changefeed/latest``: the newest entry, or 204 while the feed is empty."""
        params = _params(request)
        include = _bool(params, "includeMetadata", True)
        with self.state.lock:
            if not self.state.feed:
                return Response(204)
            data = self._entry(self.state.feed[-1], include)
        return json_response(200, data)

    # ---- extended query tags ------------------------------------------------------------

    def _tag_json(self, ctx: Context, tag: QueryTag) -> JSONDict:
        item: JSONDict = {"Path": tag.path, "VR": tag.vr}
        if tag.private_creator:
            item["PrivateCreator"] = tag.private_creator
        item.update({"Level": tag.level, "Status": tag.status, "QueryStatus": tag.query_status})
        count = len(tag.errors)
        item["Errors"] = (
            {"Count": count, "Href": f"{ctx.service_url}/extendedquerytags/{tag.path}/errors"}
            if count
            else None
        )
        operation = self.state.operations.get(tag.operation_id or "")
        if operation is not None and not operation.done:
            item["Operation"] = _reference(ctx, operation)
        return item

    def _find_tag(self, path: str) -> QueryTag:
        tag = attribute_tag(path)
        found = self.state.tags.get(tag) if tag is not None else None
        if found is None:
            raise HttpError(404, f"the extended query tag {path!r} does not exist")
        return found

    def _new_tag(self, entry: object, pending: list[QueryTag]) -> QueryTag:
        if not isinstance(entry, dict):
            raise HttpError(400, "each extended query tag must be a JSON object")
        fields = {str(k).lower(): v for k, v in entry.items()}
        path = fields.get("path")
        if not isinstance(path, str) or not path:
            raise HttpError(400, "an extended query tag needs a Path")
        tag = attribute_tag(path)
        if tag is None:
            raise HttpError(400, f"the Path {path!r} is neither a tag nor a keyword")
        level = _LEVELS.get(str(fields.get("level") or "").lower())
        if level is None:
            raise HttpError(400, f"the Level of {path!r} must be Study, Series or Instance")
        vr = str(fields.get("vr") or "").upper()
        creator = fields.get("privatecreator") or None
        if (tag >> 16) % 2:
            if not vr or not creator:
                raise HttpError(400, f"the private tag {path!r} needs a VR and a PrivateCreator")
        else:
            known = dictionary_vr(tag)
            if known is None:
                raise HttpError(400, f"the tag {path!r} is not in the DICOM dictionary")
            if vr and vr not in known.split(" or "):
                raise HttpError(400, f"the VR of {path!r} is {known}, not {vr}")
            if creator:
                raise HttpError(400, f"PrivateCreator is only for private tags ({path!r})")
            vr = vr or known.split(" or ")[0]
        if vr not in _TAG_VRS:
            raise HttpError(400, f"the VR {vr} cannot be used for an extended query tag")
        if tag in SEARCHABLE_TAGS:
            raise HttpError(400, f"{path!r} is already searchable without an extended query tag")
        if tag in self.state.tags or any(p.tag == tag for p in pending):
            raise HttpError(409, f"the extended query tag {tag_key(tag)} already exists")
        return QueryTag(tag_key(tag), tag, vr, level, str(creator) if creator else None)

    def _reindex(self, tags: list[QueryTag]) -> JSONDict | None:
        for tag in tags:
            if self.state.tags.get(tag.tag) is not tag:
                continue  # deleted while it was being added
            tag.errors = []
            for instance in self.state.iter_all():
                element = instance.version.metadata.get(tag.path)
                if isinstance(element, dict) and element.get("vr") not in (None, tag.vr):
                    tag.errors.append(
                        {
                            "StudyInstanceUid": instance.study_uid,
                            "SeriesInstanceUid": instance.series_uid,
                            "SopInstanceUid": instance.sop_uid,
                            "CreatedTime": utc_text(utc_now()),
                            "ErrorMessage": f"the value has VR {element.get('vr')}, not {tag.vr}",
                        }
                    )
            tag.status = "Ready"
        return None

    async def add_tags(self, request: Request, ctx: Context) -> Response:
        """``POST /extendedquerytags``: 202 and a reference to the re-indexing operation."""
        body = await read_json(request)
        if not isinstance(body, list) or not body:
            raise HttpError(400, "expected a non-empty JSON array of extended query tags")
        with self.state.lock:
            pending: list[QueryTag] = []
            for entry in body:
                pending.append(self._new_tag(entry, pending))
            if len(self.state.tags) + len(pending) > MAX_QUERY_TAGS:
                raise HttpError(400, f"at most {MAX_QUERY_TAGS} extended query tags are allowed")
            if self.state.running("reindex") is not None:
                raise HttpError(409, "another extended query tag operation is running")
            operation = self.state.start_operation(
                "reindex",
                [f"{ctx.service_url}/extendedquerytags/{t.path}" for t in pending],
                functools.partial(self._reindex, pending),
            )
            for tag in pending:
                tag.operation_id = operation.id
                self.state.tags[tag.tag] = tag
        return json_response(202, _reference(ctx, operation))

    async def list_tags(self, request: Request, ctx: Context) -> Response:
        """``GET /extendedquerytags``."""
        params = _params(request)
        limit = _int(params, "limit", 100, 1, MAX_LIMIT)
        offset = _int(params, "offset", 0, 0, 2**63 - 1)
        with self.state.lock:
            tags = sorted(self.state.tags.values(), key=lambda t: t.tag)[offset : offset + limit]
            data = [self._tag_json(ctx, t) for t in tags]
        return json_response(200, data)

    async def get_tag(self, request: Request, ctx: Context, path: str) -> Response:
        """``GET /extendedquerytags/{tag}``."""
        with self.state.lock:
            data = self._tag_json(ctx, self._find_tag(path))
        return json_response(200, data)

    async def update_tag(self, request: Request, ctx: Context, path: str) -> Response:
        """``PATCH /extendedquerytags/{tag}`` with ``{"QueryStatus": "Enabled|Disabled"}``."""
        body = await read_json(request)
        fields = {str(k).lower(): v for k, v in body.items()} if isinstance(body, dict) else {}
        wanted = {"enabled": "Enabled", "disabled": "Disabled"}.get(
            str(fields.get("querystatus", "")).lower()
        )
        if wanted is None or len(fields) != 1:
            raise HttpError(
                400, 'expected {"QueryStatus": "Enabled"} or {"QueryStatus": "Disabled"}'
            )
        with self.state.lock:
            tag = self._find_tag(path)
            tag.query_status = wanted
            data = self._tag_json(ctx, tag)
        return json_response(200, data)

    async def delete_tag(self, request: Request, ctx: Context, path: str) -> Response:
        """``DELETE /extendedquerytags/{tag}``."""
        with self.state.lock:
            tag = self._find_tag(path)
            del self.state.tags[tag.tag]
        return Response(204)

    async def tag_errors(self, request: Request, ctx: Context, path: str) -> Response:
        """``GET /extendedquerytags/{tag}/errors``."""
        params = _params(request)
        limit = _int(params, "limit", 100, 1, MAX_LIMIT)
        offset = _int(params, "offset", 0, 0, 2**63 - 1)
        with self.state.lock:
            errors = list(self._find_tag(path).errors[offset : offset + limit])
        return json_response(200, errors)

    # ---- operations ---------------------------------------------------------------------

    async def operation(self, request: Request, ctx: Context, operation_id: str) -> Response:
        """``GET /operations/{id}``: 202 while running, 200 once finished."""
        key = operation_id.replace("-", "").lower()
        with self.state.lock:
            operation = self.state.operations.get(key)
            if operation is None:
                raise HttpError(404, f"the operation {operation_id!r} does not exist")
            status = operation.status
            if status == "Succeeded" and ctx.api_version == 1:
                status = "Completed"
            if operation.done:
                percent = 100
            elif self.state.operation_delay > 0:
                total = self.state.operation_delay
                remaining = max(0.0, operation.due - time.monotonic())
                percent = min(99, int(100 * (total - remaining) / total))
            else:
                percent = 0
            data: JSONDict = {
                "operationId": operation.id,
                "type": operation.type,
                "createdTime": utc_text(operation.created),
                "lastUpdatedTime": utc_text(operation.updated),
                "status": status,
                "percentComplete": percent,
                "resources": list(operation.resources),
            }
            if operation.results is not None:
                data["results"] = operation.results
            if operation.error:
                data["errors"] = [operation.error]
            done = operation.done
        return json_response(200 if done else 202, data)

    # ---- bulk update --------------------------------------------------------------------

    def _apply_update(self, partition: str, uids: list[str], change: JSONDict) -> JSONDict:
        updated = failed = instances = 0
        errors: list[str] = []
        for uid in uids:
            found = self.state.select(partition, uid)
            if not found:
                failed += 1
                errors.append(f"the study {uid} was not found")
                continue
            for instance in found:
                data = apply_changes(instance.version.source, change)
                path = self.state.new_version_path()
                source: bytes | Path = data
                if path is not None:
                    path.write_bytes(data)
                    source = path
                parsed = parse_instance(source, warnings_fail=False)
                self.state.replace(instance, Version.from_parsed(parsed, source, len(data)))
                instances += 1
            updated += 1
        results: JSONDict = {
            "studyProcessed": len(uids),
            "studyUpdated": updated,
            "studyFailed": failed,
            "instanceUpdated": instances,
            "errors": errors,
        }
        if not updated:
            raise OperationFailed("; ".join(errors), results)
        return results

    async def bulk_update(self, request: Request, ctx: Context) -> Response:
        """``POST /studies/$bulkUpdate``: 202 and a reference to the update operation.

        Only one update runs at a time: a second one while the first is unfinished answers
        409, as the service does for a conflicting operation.
        """
        body = await read_json(request)
        fields = {str(k).lower(): v for k, v in body.items()} if isinstance(body, dict) else {}
        uids = fields.get("studyinstanceuids")
        if (
            not isinstance(uids, list)
            or not 1 <= len(uids) <= _MAX_UPDATE_STUDIES
            or not all(valid_uid(u) for u in uids)
            or len(set(uids)) != len(uids)
        ):
            raise HttpError(
                400,
                f"studyInstanceUids must list 1 to {_MAX_UPDATE_STUDIES} distinct, valid UIDs",
            )
        change = fields.get("changedataset")
        problem = await anyio.to_thread.run_sync(check_change_dataset, change)
        if problem is not None:
            raise HttpError(400, problem)
        assert isinstance(change, dict)
        with self.state.lock:
            if self.state.running("update") is not None:
                raise HttpError(409, "another bulk update operation is running")
            operation = self.state.start_operation(
                "update",
                [f"{ctx.base_url}/studies/{uid}" for uid in uids],
                functools.partial(self._apply_update, ctx.partition, list(uids), change),
            )
        return json_response(202, _reference(ctx, operation))

    # ---- partitions ---------------------------------------------------------------------

    async def list_partitions(self, request: Request, ctx: Context) -> Response:
        """``GET /partitions``: the default partition and every one used since."""
        with self.state.lock:
            data = [
                {"partitionKey": key, "partitionName": name, "createdDate": utc_text(created)}
                for key, (name, created) in enumerate(self.state.partitions.items(), 1)
            ]
        return json_response(200, data)
