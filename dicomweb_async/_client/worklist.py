"""Worklist methods of the client (UPS-RS, PS3.18 chapter 11)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from .._core.aiter import ClosingIterator
from .._core.datasets import dicom_json, first_value
from .._core.workitems import (
    PROCEDURE_STEP_STATE,
    SCHEDULED,
    SOP_INSTANCE_UID,
    Workitem,
)
from .._services import qido as _qido
from .._services import ups as _ups
from .base import ClientBase

__all__ = ["WorklistMethods"]

DatasetLike = Any  # a pydicom Dataset, a DICOM JSON mapping, or a list of one


class WorklistMethods(ClientBase):
    """Create, read, change and search workitems (the Azure DICOM service v2 has them)."""

    async def create_workitem(
        self, dataset_or_json: DatasetLike, workitem_uid: str | None = None
    ) -> str:
        """Create a workitem (``POST /workitems?{uid}``) and return its UID.

        Parameters
        ----------
        dataset_or_json : pydicom Dataset or DICOM JSON mapping
            The workitem's attributes. Procedure Step State is set to ``SCHEDULED`` when
            missing (the only state a workitem may be created in).
        workitem_uid : str, optional
            Its SOP Instance UID; default the dataset's own, else a new one.

        Raises
        ------
        ConflictError
            If a workitem with this UID exists (409).
        HTTPStatusError
            If the server refuses the dataset (400, with its reason in the message).
        """
        dataset = dicom_json(dataset_or_json, "dataset_or_json")
        uid = workitem_uid or first_value(dataset, SOP_INSTANCE_UID)
        if uid is None:
            from pydicom.uid import generate_uid

            uid = str(generate_uid())
        dataset.setdefault(PROCEDURE_STEP_STATE, {"vr": "CS", "Value": [SCHEDULED]})
        await _ups.create(self._transport, dataset, uid)
        return uid

    async def retrieve_workitem(self, workitem_uid: str) -> Workitem:
        """The workitem ``workitem_uid`` (``GET /workitems/{uid}``); 404 raises NotFoundError."""
        return Workitem.from_json(await _ups.retrieve(self._transport, workitem_uid), workitem_uid)

    async def update_workitem(
        self,
        workitem_uid: str,
        dataset_or_json: DatasetLike,
        transaction_uid: str | None = None,
    ) -> None:
        """Change attributes of a workitem (``POST /workitems/{uid}[?{transaction}]``).

        Parameters
        ----------
        workitem_uid : str
        dataset_or_json : pydicom Dataset or DICOM JSON mapping
            The attributes to set.
        transaction_uid : str, optional
            Required once the workitem is ``IN PROGRESS``: the UID it was claimed with.

        Raises
        ------
        HTTPStatusError
            400 when the transaction UID is missing or wrong, or the workitem is already
            completed or canceled (PS3.18 11.6.3).
        """
        dataset = dicom_json(dataset_or_json, "dataset_or_json")
        await _ups.update(self._transport, workitem_uid, dataset, transaction_uid)

    async def change_workitem_state(
        self, workitem_uid: str, state: str, transaction_uid: str
    ) -> None:
        """Move a workitem along (``PUT /workitems/{uid}/state``).

        ``SCHEDULED`` to ``IN PROGRESS`` claims it with a new ``transaction_uid`` (make
        one with ``pydicom.uid.generate_uid()`` and keep it); ``IN PROGRESS`` to
        ``COMPLETED`` or ``CANCELED`` needs that same UID.

        Raises
        ------
        ValueError
            If ``state`` is not a Procedure Step State.
        HTTPStatusError
            400 for a wrong or missing transaction UID or a transition the state machine
            does not have; ``ConflictError`` (409) from a final state.
        """
        await _ups.change_state(self._transport, workitem_uid, state, transaction_uid)

    async def request_workitem_cancellation(
        self,
        workitem_uid: str,
        reason: str | None = None,
        dataset_or_json: DatasetLike | None = None,
    ) -> None:
        """Ask for a workitem to be canceled (``POST /workitems/{uid}/cancelrequest``).

        A ``SCHEDULED`` workitem is canceled at once; for one ``IN PROGRESS`` the request
        is passed on to whoever performs it.

        Parameters
        ----------
        workitem_uid : str
        reason : str, optional
            Reason For Cancellation (0074,1238).
        dataset_or_json : optional
            Further attributes of the request (contact name and URI, a coded reason).

        Raises
        ------
        ConflictError
            If the workitem is already completed or canceled (409).
        """
        extra = None if dataset_or_json is None else dicom_json(dataset_or_json, "dataset")
        await _ups.request_cancellation(self._transport, workitem_uid, extra, reason)

    async def search_for_workitems(
        self,
        search_filters: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fuzzymatching: bool | None = None,
        get_remaining: bool = False,
    ) -> list[Workitem]:
        """Search the worklist (``GET /workitems``), e.g. ``{"PatientName": "Doe^*"}``.

        Parameters are those of :meth:`search_for_studies`; ``get_remaining`` fetches
        every page.
        """
        params = self._search_params(
            "workitems",
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            search_filters=search_filters,
        )
        found = await _qido.search(self._transport, params, get_remaining=get_remaining)
        return [Workitem.from_json(item) for item in found]

    def iter_search_for_workitems(
        self,
        search_filters: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fuzzymatching: bool | None = None,
    ) -> ClosingIterator[Workitem]:
        """Iterate over every matching workitem, a page of ``limit`` at a time."""
        params = self._search_params(
            "workitems",
            fuzzymatching=fuzzymatching,
            limit=limit,
            offset=offset,
            search_filters=search_filters,
        )

        async def workitems() -> AsyncGenerator[Workitem]:
            async for item in _qido.iter_search(self._transport, params):
                yield Workitem.from_json(item)

        return ClosingIterator(workitems)
