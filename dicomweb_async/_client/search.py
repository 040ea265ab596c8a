"""QIDO-RS methods of the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._core.aiter import ClosingIterator
from .._services import qido as _qido
from .base import ClientBase, JSONDict, aiter_of

if TYPE_CHECKING:
    pass

__all__ = ["SearchMethods"]


class SearchMethods(ClientBase):
    """Search for studies, series and instances (QIDO-RS)."""

    async def search_for_studies(
        self,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for studies (``GET /studies``).

        Parameters
        ----------
        fuzzymatching : bool, optional
            Ask the server for fuzzy matching of person names.
        limit, offset : int, optional
            Paging.
        fields : sequence of str, optional
            Extra attributes to include (``includefield``), or ``["all"]``.
        search_filters : mapping, optional
            Attribute keyword or tag to value, e.g. ``{"PatientName": "Anony*"}``.
            Wildcards ``*`` and ``?`` are sent literally.
        get_remaining : bool
            Fetch further pages until the server has no more.

        Returns
        -------
        list of dict
            DICOM JSON datasets.
        """
        params = self._search_params(
            "studies",
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    async def search_for_series(
        self,
        study_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for series (``GET /series`` or ``/studies/{study}/series``).

        Parameters are those of :meth:`search_for_studies`, plus ``study_instance_uid``.
        """
        params = self._search_params(
            "series",
            study_instance_uid,
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    async def search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[JSONDict]:
        """Search for instances (``/instances``, ``/studies/{s}/instances`` or
        ``/studies/{s}/series/{se}/instances``).

        Parameters are those of :meth:`search_for_studies`, plus the UIDs that narrow
        the route.
        """
        params = self._search_params(
            "instances",
            study_instance_uid,
            series_instance_uid,
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            fields=fields,
            search_filters=search_filters,
        )
        return await _qido.search(self._transport, params, get_remaining=get_remaining)

    def _iter_search(self, params: _qido.SearchParams) -> ClosingIterator[JSONDict]:
        return ClosingIterator(lambda: aiter_of(_qido.iter_search(self._transport, params)))

    def iter_search_for_studies(
        self,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching study, fetching pages of ``limit`` as needed.

        Paging stops at an empty page (or 204) or a page shorter than ``limit``; an entry
        that a later page repeats is yielded once.
        """
        return self._iter_search(
            self._search_params(
                "studies",
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )

    def iter_search_for_series(
        self,
        study_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching series (see :meth:`iter_search_for_studies`)."""
        return self._iter_search(
            self._search_params(
                "series",
                study_instance_uid,
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )

    def iter_search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: Mapping[str, Any] | None = None,
    ) -> ClosingIterator[JSONDict]:
        """Iterate over every matching instance (see :meth:`iter_search_for_studies`)."""
        return self._iter_search(
            self._search_params(
                "instances",
                study_instance_uid,
                series_instance_uid,
                fuzzymatching=fuzzymatching,
                limit=limit,
                offset=offset,
                fields=fields,
                search_filters=search_filters,
            )
        )
