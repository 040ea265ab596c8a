"""STOW-RS: store instances from files, bytes or Datasets."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from .._core.exceptions import MethodNotAllowedError, ProtocolError, status_error_class
from .._core.implicit_vr import IMPLICIT_VR_MESSAGE, file_transfer_syntax, is_implicit_vr
from .._core.media import DICOM_JSON
from .._core.multipart_writer import BodyPart, StoreItem, body_part
from .._core.store_result import StoreResult, parse_store_response
from .._core.urls import study_path
from .._transport.bodies import MultipartBody, SinglePartBody
from .._transport.transport import Transport

__all__ = ["plan_parts", "store"]

# STOW-RS answers that carry per-instance outcomes and so are results, not errors.
STORE_STATUSES = (200, 202, 409)


async def plan_parts(items: Sequence[StoreItem | BodyPart]) -> list[BodyPart]:
    """Describe each input as a body part (file sizes and Dataset encoding in a thread).

    Parts already described (by a caller that knows the file sizes) are taken as they are.
    """
    if all(isinstance(i, BodyPart) for i in items):
        return [i for i in items if isinstance(i, BodyPart)]
    return await anyio.to_thread.run_sync(
        lambda: [i if isinstance(i, BodyPart) else body_part(i) for i in items]
    )


async def store(
    transport: Transport,
    items: Sequence[StoreItem | BodyPart],
    study_instance_uid: str | None = None,
    *,
    single_part: bool = False,
    reject_implicit_vr: bool = False,
    upsert: bool = False,
    headers: dict[str, str] | None = None,
) -> StoreResult:
    """Send one STOW-RS request and parse its answer.

    Parameters
    ----------
    transport : Transport
    items : sequence of path, bytes or Dataset
        The instances; files are streamed from disk.
    study_instance_uid : str, optional
        Store into ``/studies/{study}``: instances of other studies are refused.
    single_part : bool
        Send one instance as a plain ``application/dicom`` body instead of
        ``multipart/related`` (non-standard; the Azure DICOM service accepts it).
    reject_implicit_vr : bool
        Raise ``ValueError`` before sending if a file is in implicit VR little endian.
    upsert : bool
        ``PUT`` instead of ``POST``: instances the server has are replaced (the Azure
        DICOM service, API v2).
    headers : dict, optional
        Further request headers (Azure's external metadata).
    """
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise TypeError("store_instances takes a sequence of paths, bytes or Datasets")
    if not items:
        raise ValueError("nothing to store")
    parts = await plan_parts(items)
    if reject_implicit_vr:
        for part in parts:
            if part.path is not None and is_implicit_vr(
                await anyio.to_thread.run_sync(file_transfer_syntax, part.path)
            ):
                raise ValueError(f"{part.path}: {IMPLICIT_VR_MESSAGE}")
    body: MultipartBody | SinglePartBody
    if single_part:
        if len(parts) != 1:
            raise ValueError("single_part=True sends exactly one instance")
        body = SinglePartBody(parts[0])
    else:
        body = MultipartBody(parts)
    path = study_path(study_instance_uid) if study_instance_uid else "/studies"
    headers = {"Accept": DICOM_JSON, **(headers or {}), **body.headers}
    method = "PUT" if upsert else "POST"
    try:
        response, data = await transport.request(
            method, path, headers=headers, body=body, ok=STORE_STATUSES
        )
    except MethodNotAllowedError as exc:
        if not upsert:
            raise
        raise MethodNotAllowedError(
            f"the server does not take PUT {path}: upsert is an API of the Azure DICOM "
            "service (v2); store without upsert=True on this server",
            status_code=exc.status_code,
            method=exc.method,
            url=exc.url,
            body_excerpt=exc.body_excerpt,
            headers=exc.headers,
        ) from exc
    try:
        return parse_store_response(response.status_code, data)
    except ProtocolError as exc:
        if response.status_code < 300:
            exc.method, exc.url = method, response.url
            raise
        # A 409 without DICOM JSON is a plain error, not a per-instance result.
        raise status_error_class(response.status_code)(
            "Conflict",
            status_code=response.status_code,
            method=method,
            url=response.url,
            body_excerpt=data[:300].decode("utf-8", "replace"),
            headers=response.headers,
        ) from None
