"""WADO-RS methods of the client: streams, Datasets, metadata, frames, rendered."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from .._core.aiter import ClosingIterator
from .._core.exceptions import ProtocolError
from .._core.media import MediaTypeSpec, accept_header
from .._core.urls import instance_path, series_path, study_path
from .._services import wado as _wado
from .._services.wado import Frame, Metadata
from .._transport.parts import PartStream
from .base import ClientBase, JSONDict, MediaTypes, aiter_of

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["RetrieveMethods"]

_RENDERED_DEFAULT: MediaTypeSpec = "image/jpeg"


def _no_parts(parts: PartStream) -> Exception:
    return ProtocolError("the response contained no instance", method=parts.method, url=parts.url)


class RetrieveMethods(ClientBase):
    """Retrieve instances, metadata, frames, rendered images and bulk data (WADO-RS)."""

    def stream_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open a study's instances as a stream of parts.

        Use as ``async with client.stream_study(uid) as parts: async for part in parts:``;
        each part's bytes arrive through ``part.aiter_bytes()``. The connection is held
        until the block is left.

        Parameters
        ----------
        study_instance_uid : str
        media_types : sequence of str or (str, str), optional
            Acceptable media types and transfer syntaxes; by default the stored encoding
            (``application/dicom`` with ``transfer-syntax=*``).
        """
        return self._stream(
            study_path(study_instance_uid), media_types, _wado.DEFAULT_INSTANCE_TYPE
        )

    def stream_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open a series' instances as a stream of parts (see :meth:`stream_study`)."""
        return self._stream(
            series_path(study_instance_uid, series_instance_uid),
            media_types,
            _wado.DEFAULT_INSTANCE_TYPE,
        )

    def stream_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
    ) -> AbstractAsyncContextManager[PartStream]:
        """Open one instance as a stream of parts (see :meth:`stream_study`)."""
        return self._stream(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            media_types,
            _wado.DEFAULT_INSTANCE_TYPE,
        )

    def _iter_datasets(
        self,
        path: str,
        media_types: MediaTypes,
        default: MediaTypeSpec = _wado.DEFAULT_INSTANCE_TYPE,
    ) -> ClosingIterator[Dataset]:
        async def gen() -> AsyncGenerator[Dataset]:
            async with self._stream(path, media_types, default) as parts:
                async for part in parts:
                    yield await _wado.dataset_from_part(part, parts)

        return ClosingIterator(gen)

    async def retrieve_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> list[Dataset]:
        """Retrieve every instance of a study as pydicom Datasets.

        Holds the whole study in memory; prefer :meth:`iter_study` or
        :meth:`download_study` for large studies.
        """
        return [ds async for ds in self.iter_study(study_instance_uid, media_types)]

    def iter_study(
        self, study_instance_uid: str, media_types: MediaTypes = None
    ) -> ClosingIterator[Dataset]:
        """Yield a study's instances one Dataset at a time as they arrive."""
        return self._iter_datasets(study_path(study_instance_uid), media_types)

    async def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> list[Dataset]:
        """Retrieve every instance of a series as pydicom Datasets."""
        return [
            ds
            async for ds in self.iter_series(study_instance_uid, series_instance_uid, media_types)
        ]

    def iter_series(
        self, study_instance_uid: str, series_instance_uid: str, media_types: MediaTypes = None
    ) -> ClosingIterator[Dataset]:
        """Yield a series' instances one Dataset at a time as they arrive."""
        return self._iter_datasets(
            series_path(study_instance_uid, series_instance_uid), media_types
        )

    async def retrieve_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
        *,
        multipart: bool = True,
    ) -> Dataset:
        """Retrieve one instance as a pydicom Dataset.

        Parameters
        ----------
        study_instance_uid, series_instance_uid, sop_instance_uid : str
        media_types : sequence of str or (str, str), optional
            Acceptable types and transfer syntaxes (default: the stored encoding).
        multipart : bool
            Ask for ``multipart/related`` (the standard, and what every server serves);
            False asks for a single-part ``application/dicom`` answer (Azure).
        """
        path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        accept = accept_header(
            media_types, default=_wado.DEFAULT_INSTANCE_TYPE, multipart=multipart
        )
        fallback = self._fallback_accept(media_types, _wado.DEFAULT_INSTANCE_TYPE, multipart)
        async with _wado.open_parts(
            self._transport, path, accept, limits=self._limits, fallback_accept=fallback
        ) as parts:
            found: Dataset | None = None
            async for part in parts:
                if found is None:
                    found = await _wado.dataset_from_part(part, parts)
            if found is None:
                raise _no_parts(parts)
            return found

    async def retrieve_study_metadata(
        self,
        study_instance_uid: str,
        *,
        request_original: bool = False,
        external_metadata: bool = False,
    ) -> list[JSONDict]:
        """Metadata of every instance of a study, as DICOM JSON.

        ``request_original=True`` sends ``msdicom-request-original: true``: Azure then
        returns the metadata as it was before a bulk update. ``external_metadata=True``
        sends ``msdicom-request-meta: true``: Azure (API v2) adds the external metadata
        stored with the study (see ``store_instances(external_metadata=...)``).
        """
        return await _wado.retrieve_metadata(
            self._transport,
            study_path(study_instance_uid),
            request_original=request_original,
            external=external_metadata,
        )

    async def retrieve_series_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        *,
        request_original: bool = False,
        external_metadata: bool = False,
    ) -> list[JSONDict]:
        """Metadata of every instance of a series (see :meth:`retrieve_study_metadata`)."""
        return await _wado.retrieve_metadata(
            self._transport,
            series_path(study_instance_uid, series_instance_uid),
            request_original=request_original,
            external=external_metadata,
        )

    async def retrieve_instance_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        *,
        request_original: bool = False,
        external_metadata: bool = False,
    ) -> JSONDict:
        """Metadata of one instance, as a DICOM JSON dict (see :meth:`retrieve_study_metadata`)."""
        items = await _wado.retrieve_metadata(
            self._transport,
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            request_original=request_original,
            external=external_metadata,
        )
        if not items:
            raise ProtocolError("instance metadata response is an empty array")
        return items[0]

    async def retrieve_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        if_none_match: str | None = None,
        request_original: bool = False,
    ) -> Metadata:
        """Metadata of a study, series or instance with its ETag, fetched conditionally.

        Parameters
        ----------
        study_instance_uid, series_instance_uid, sop_instance_uid : str
            The resource; leave out the narrower UIDs for a series or a study.
        if_none_match : str, optional
            An ETag from an earlier call: a server that supports it answers 304 when
            nothing changed, returned as ``Metadata(not_modified=True)`` without a body.
        request_original : bool
            Ask Azure for the version from before a bulk update.

        Returns
        -------
        Metadata
        """
        if sop_instance_uid is not None:
            if series_instance_uid is None:
                raise ValueError("sop_instance_uid given without series_instance_uid")
            path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        elif series_instance_uid is not None:
            path = series_path(study_instance_uid, series_instance_uid)
        else:
            path = study_path(study_instance_uid)
        return await _wado.fetch_metadata(
            self._transport, path, if_none_match=if_none_match, request_original=request_original
        )

    def iter_instance_frames(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
    ) -> ClosingIterator[Frame]:
        """Yield the requested frames one at a time, in the order the server sends them.

        Each :class:`Frame` is ``bytes`` with ``media_type`` and ``transfer_syntax``.
        """
        path = _wado.frames_path(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            frame_numbers,
        )
        return ClosingIterator(
            lambda: aiter_of(
                _wado.iter_frames(
                    self._transport,
                    path,
                    media_types,
                    self._limits,
                    self._fallback_accept(media_types, _wado.DEFAULT_FRAME_TYPE),
                )
            )
        )

    async def retrieve_instance_frames(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
    ) -> list[Frame]:
        """Retrieve frames (1-based numbers) of an instance.

        By default asks for the stored encoding (``application/octet-stream`` with
        ``transfer-syntax=*``); each returned :class:`Frame` carries the media type and
        transfer syntax the server stated.
        """
        return [
            frame
            async for frame in self.iter_instance_frames(
                study_instance_uid,
                series_instance_uid,
                sop_instance_uid,
                frame_numbers,
                media_types,
            )
        ]

    async def _rendered(
        self, path: str, media_types: MediaTypes, params: Mapping[str, Any] | None
    ) -> bytes:
        accept = accept_header(media_types, default=_RENDERED_DEFAULT, multipart=False)
        return await _wado.read_bytes(
            self._transport, path, accept, query=_wado.rendered_query(params)
        )

    async def retrieve_instance_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """An instance rendered as an image (``image/jpeg`` unless asked otherwise).

        ``params`` become query parameters (e.g. ``{"quality": 90}``).
        """
        path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        return await self._rendered(f"{path}/rendered", media_types, params)

    async def retrieve_instance_frames_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Frames of an instance rendered as an image."""
        path = _wado.frames_path(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            frame_numbers,
        )
        return await self._rendered(f"{path}/rendered", media_types, params)

    async def retrieve_study_thumbnail(
        self,
        study_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A small image standing for a study (PS3.18 thumbnail resource).

        Parameters
        ----------
        study_instance_uid : str
        media_types : sequence of str, optional
            Image types (default ``image/jpeg``); the rendered types are allowed.
        params : mapping, optional
            ``viewport`` (``(width, height)``), ``quality`` and the other rendered
            parameters; the server picks the size without a viewport.
        """
        self.profile.refuse("thumbnails", "thumbnails")
        return await self._rendered(
            f"{study_path(study_instance_uid)}/thumbnail", media_types, params
        )

    async def retrieve_series_thumbnail(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A small image standing for a series (see :meth:`retrieve_study_thumbnail`)."""
        self.profile.refuse("thumbnails", "thumbnails")
        path = series_path(study_instance_uid, series_instance_uid)
        return await self._rendered(f"{path}/thumbnail", media_types, params)

    async def retrieve_instance_thumbnail(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A small image of an instance (see :meth:`retrieve_study_thumbnail`)."""
        self.profile.refuse("thumbnails", "thumbnails")
        path = instance_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        return await self._rendered(f"{path}/thumbnail", media_types, params)

    async def retrieve_instance_frames_thumbnail(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        frame_numbers: Sequence[int],
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A small image of frames of an instance (see :meth:`retrieve_study_thumbnail`)."""
        self.profile.refuse("thumbnails", "thumbnails")
        path = _wado.frames_path(
            instance_path(study_instance_uid, series_instance_uid, sop_instance_uid),
            frame_numbers,
        )
        return await self._rendered(f"{path}/thumbnail", media_types, params)

    async def retrieve_series_rendered(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        media_types: MediaTypes = None,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A series rendered as an image."""
        path = series_path(study_instance_uid, series_instance_uid)
        return await self._rendered(f"{path}/rendered", media_types, params)

    def iter_bulkdata(
        self,
        url: str,
        media_types: MediaTypes = None,
        byte_range: tuple[int, int] | None = None,
    ) -> ClosingIterator[bytes]:
        """Yield the parts of a bulk data resource (e.g. a BulkDataURI from metadata).

        Parameters
        ----------
        url : str
            Absolute URL, or a path relative to the service root.
        media_types : sequence of str or (str, str), optional
            Default: ``application/octet-stream`` in its stored transfer syntax.
        byte_range : (int, int), optional
            Inclusive first and last byte to retrieve (sent as a Range header).
        """
        accept = accept_header(media_types, default=_wado.DEFAULT_FRAME_TYPE, multipart=True)
        headers = {}
        if byte_range is not None:
            start, end = byte_range
            headers["Range"] = f"bytes={start}-{end}"
        path = url if url.startswith(("http://", "https://", "/")) else f"/{url}"

        async def gen() -> AsyncGenerator[bytes]:
            async with _wado.open_parts(
                self._transport, path, accept, limits=self._limits, headers=headers, ok=(200, 206)
            ) as parts:
                async for part in parts:
                    yield await part.read()

        return ClosingIterator(gen)

    async def retrieve_bulkdata(
        self,
        url: str,
        media_types: MediaTypes = None,
        byte_range: tuple[int, int] | None = None,
    ) -> list[bytes]:
        """Retrieve the parts of a bulk data resource (see :meth:`iter_bulkdata`)."""
        return [part async for part in self.iter_bulkdata(url, media_types, byte_range)]
