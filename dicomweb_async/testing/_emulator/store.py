"""State of the Azure DICOM emulator: instances, change feed, query tags and operations.

Requests may arrive from several event loops at once (the in-process transport runs on the
caller's loop, the loopback server on its own thread), so every change happens under one
``threading.RLock`` and never across an ``await``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .dicom import FrameLayout, ParsedInstance

__all__ = [
    "DEFAULT_PARTITION",
    "ChangeEntry",
    "EmulatorState",
    "Instance",
    "Operation",
    "OperationFailed",
    "PartSink",
    "QueryTag",
    "Version",
    "utc_now",
    "utc_text",
]

JSONDict = dict[str, Any]

DEFAULT_PARTITION = "Microsoft.Default"


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(timezone.utc)


def utc_text(moment: datetime) -> str:
    """``moment`` as the service writes timestamps: ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(eq=False)
class Version:
    """One stored version of an instance: its bytes (in memory or a file) and its index."""

    size: int
    transfer_syntax: str
    metadata: JSONDict
    frames: FrameLayout | None
    has_pixel_data: bool
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def from_parsed(cls, parsed: ParsedInstance, source: bytes | Path, size: int) -> Version:
        """A version holding ``source`` as indexed by ``parsed``."""
        return cls(
            size=size,
            transfer_syntax=parsed.transfer_syntax,
            metadata=parsed.metadata,
            frames=parsed.frames,
            has_pixel_data=parsed.has_pixel_data,
            data=source if isinstance(source, bytes) else None,
            path=source if isinstance(source, Path) else None,
        )

    @property
    def source(self) -> bytes | Path:
        """The stored bytes, or the file that holds them."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path

    def discard(self) -> None:
        """Remove the file behind this version, if any."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@dataclass(eq=False)
class Instance:
    """A stored instance in one partition."""

    partition: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    version: Version
    order: int
    watermark: int
    created: datetime
    #: The version before the first bulk update, served for ``msdicom-request-original``.
    original: Version | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """(study, series, SOP instance) UIDs."""
        return self.study_uid, self.series_uid, self.sop_uid

    def pick(self, original: bool) -> Version:
        """The original version when asked for and there is one, else the current one."""
        return self.original if original and self.original is not None else self.version


@dataclass(eq=False)
class ChangeEntry:
    """One change feed entry (its state is derived from later entries)."""

    sequence: int
    partition: str
    study_uid: str
    series_uid: str
    sop_uid: str
    action: str
    timestamp: datetime

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(partition, study, series, SOP instance)."""
        return self.partition, self.study_uid, self.series_uid, self.sop_uid


@dataclass(eq=False)
class QueryTag:
    """An extended query tag."""

    path: str
    tag: int
    vr: str
    level: str
    private_creator: str | None
    status: str = "Adding"
    query_status: str = "Enabled"
    operation_id: str | None = None
    errors: list[JSONDict] = field(default_factory=list)


@dataclass(eq=False)
class Operation:
    """A long-running operation; ``complete`` runs once its delay has passed."""

    id: str
    type: str
    created: datetime
    due: float
    resources: list[str]
    complete: Callable[[], JSONDict | None]
    status: str = "Running"
    updated: datetime = field(default_factory=utc_now)
    results: JSONDict | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """Whether the operation has finished, one way or the other."""
        return self.status in ("Succeeded", "Failed")


class OperationFailed(Exception):
    """An operation ended in failure; ``results`` are still reported."""

    def __init__(self, message: str, results: JSONDict | None = None) -> None:
        super().__init__(message)
        self.results = results


class PartSink:
    """Collects one received part, in memory or in a file below the storage directory."""

    def __init__(self, storage_dir: Path | None) -> None:
        self.size = 0
        self._buffer = bytearray()
        self._path: Path | None = None
        self._file: Any = None
        if storage_dir is not None:
            self._path = storage_dir / f"{uuid.uuid4().hex}.dcm"
            # Plain blocking writes: pieces are at most a network read in size and go to the
            # page cache; a thread hop per piece would cost more than the write.
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in finish()/discard()

    def write(self, data: bytes) -> None:
        """Append a piece of the part."""
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
        else:
            self._buffer += data

    def finish(self) -> bytes | Path:
        """The complete part: its bytes, or the file holding them."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            return self._path
        data = bytes(self._buffer)
        self._buffer = bytearray()  # one copy of a large part is enough
        return data

    def discard(self) -> None:
        """Forget the part and remove its file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._buffer = bytearray()


class EmulatorState:
    """Everything the emulator stores; mutate only while holding :attr:`lock`."""

    def __init__(
        self, *, storage_dir: Path | None, operation_delay: float, sequence_step: int
    ) -> None:
        self.lock = threading.RLock()
        self.storage_dir = storage_dir
        self.operation_delay = operation_delay
        self.sequence_step = sequence_step
        self.partitions: dict[str, datetime] = {DEFAULT_PARTITION: utc_now()}
        self.instances: dict[str, dict[tuple[str, str, str], Instance]] = {}
        self.feed: list[ChangeEntry] = []
        self.tags: dict[int, QueryTag] = {}
        self.operations: dict[str, Operation] = {}
        #: (partition, study) -> external metadata (DICOM JSON attributes by tag).
        self.external: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._latest: dict[tuple[str, str, str, str], ChangeEntry] = {}
        self._next_sequence = 1
        self._order = itertools.count(1)
        self._watermark = itertools.count(1)

    # ---- instances ----------------------------------------------------------------------

    def partition_instances(self, partition: str) -> dict[tuple[str, str, str], Instance]:
        """The instances of ``partition`` by (study, series, SOP instance) UIDs."""
        return self.instances.get(partition, {})

    def select(
        self,
        partition: str,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[Instance]:
        """Instances matching the given UIDs, oldest first."""
        found = [
            instance
            for instance in self.partition_instances(partition).values()
            if (study_uid is None or instance.study_uid == study_uid)
            and (series_uid is None or instance.series_uid == series_uid)
            and (sop_uid is None or instance.sop_uid == sop_uid)
        ]
        found.sort(key=lambda instance: instance.order)
        return found

    def add(self, partition: str, parsed: ParsedInstance, version: Version) -> Instance:
        """Register a new instance and record its ``create`` entry."""
        self.partitions.setdefault(partition, utc_now())
        instance = Instance(
            partition=partition,
            study_uid=parsed.study_uid,
            series_uid=parsed.series_uid,
            sop_uid=parsed.sop_uid,
            sop_class_uid=parsed.sop_class_uid,
            version=version,
            order=next(self._order),
            watermark=next(self._watermark),
            created=utc_now(),
        )
        self.instances.setdefault(partition, {})[instance.key] = instance
        self.record("create", instance)
        return instance

    def replace(self, instance: Instance, version: Version) -> None:
        """Give ``instance`` a new current version (keeping the first one as the original)."""
        if instance.original is None:
            instance.original = instance.version
        else:
            instance.version.discard()
        instance.version = version
        instance.watermark = next(self._watermark)
        self.record("update", instance)

    def upsert(self, instance: Instance, version: Version) -> None:
        """Replace ``instance`` by a new upload of it (``PUT``): nothing of it is kept."""
        instance.version.discard()
        if instance.original is not None:
            instance.original.discard()
            instance.original = None
        instance.version = version
        instance.watermark = next(self._watermark)
        self.record("update", instance)

    def remove(self, instances: list[Instance]) -> None:
        """Delete instances, their files and record ``delete`` entries."""
        for instance in instances:
            stored = self.instances.get(instance.partition, {})
            if stored.pop(instance.key, None) is None:
                continue
            instance.version.discard()
            if instance.original is not None:
                instance.original.discard()
            self.record("delete", instance)

    def new_version_path(self) -> Path | None:
        """A fresh file name below the storage directory, or None when storing in memory."""
        if self.storage_dir is None:
            return None
        return self.storage_dir / f"{uuid.uuid4().hex}.dcm"

    # ---- change feed --------------------------------------------------------------------

    def record(self, action: str, instance: Instance) -> ChangeEntry:
        """Append a change feed entry for ``instance``."""
        entry = ChangeEntry(
            sequence=self._next_sequence,
            partition=instance.partition,
            study_uid=instance.study_uid,
            series_uid=instance.series_uid,
            sop_uid=instance.sop_uid,
            action=action,
            timestamp=utc_now(),
        )
        self._next_sequence += self.sequence_step
        self.feed.append(entry)
        self._latest[entry.key] = entry
        return entry

    def skip_sequences(self, count: int) -> None:
        """Leave ``count`` sequence numbers unused before the next entry."""
        self._next_sequence += count

    def entry_state(self, entry: ChangeEntry) -> str:
        """``current``, ``replaced`` or ``deleted``, judged by the instance's latest entry."""
        latest = self._latest.get(entry.key, entry)
        if latest.action == "delete":
            return "deleted"
        return "current" if latest is entry else "replaced"

    def entry_instance(self, entry: ChangeEntry) -> Instance | None:
        """The instance an entry is about, if it still exists."""
        return self.partition_instances(entry.partition).get(
            (entry.study_uid, entry.series_uid, entry.sop_uid)
        )

    # ---- operations ---------------------------------------------------------------------

    def start_operation(
        self, kind: str, resources: list[str], complete: Callable[[], JSONDict | None]
    ) -> Operation:
        """Create an operation that completes after the configured delay."""
        now = utc_now()
        operation = Operation(
            id=uuid.uuid4().hex,
            type=kind,
            created=now,
            due=time.monotonic() + self.operation_delay,
            resources=resources,
            complete=complete,
            updated=now,
        )
        self.operations[operation.id] = operation
        return operation

    def advance(self, *, force: bool = False) -> None:
        """Complete every operation whose delay has passed (all of them with ``force``)."""
        now = time.monotonic()
        for operation in list(self.operations.values()):
            if operation.done or (operation.due > now and not force):
                continue
            try:
                operation.results = operation.complete()
                operation.status = "Succeeded"
            except OperationFailed as exc:
                operation.status = "Failed"
                operation.results = exc.results
                operation.error = str(exc)
            except Exception as exc:  # an operation that fails is reported, not raised
                operation.status = "Failed"
                operation.error = str(exc)
            operation.updated = utc_now()

    def running(self, kind: str) -> Operation | None:
        """An unfinished operation of type ``kind``, if there is one."""
        return next((o for o in self.operations.values() if o.type == kind and not o.done), None)

    # ---- everything ---------------------------------------------------------------------

    def iter_all(self) -> Iterator[Instance]:
        """Every stored instance of every partition."""
        for stored in self.instances.values():
            yield from stored.values()

    def clear(self) -> None:
        """Forget every instance (removing stored files), entry, tag and operation."""
        for instance in list(self.iter_all()):
            instance.version.discard()
            if instance.original is not None:
                instance.original.discard()
        self.instances.clear()
        self.feed.clear()
        self._latest.clear()
        self.tags.clear()
        self.operations.clear()
        self.external.clear()
        self.partitions = {DEFAULT_PARTITION: utc_now()}
        self._next_sequence = 1
