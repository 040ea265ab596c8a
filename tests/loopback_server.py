"""A fast DICOMweb-like HTTP/1.1 server on 127.0.0.1 for streaming, retry and memory tests.

Mocked transports read request bodies whole before the test sees them, which hides the bugs
that matter for a streaming client (bodies that cannot be replayed, unbounded buffering,
truncated downloads).  This server speaks HTTP/1.1 over real sockets, keeps nothing whole in
memory, and is fast enough that benchmarks measure the client rather than the server.

It is written directly on :func:`asyncio.start_server` instead of a web framework because the
framework layers cost more than the whole client under test at gigabyte-per-second rates.
Reading requests and writing raw responses is shared with the emulator's loopback server
(:mod:`dicomweb_async.testing._http_server`); routing and the fault knobs are here.

Routes (below an optional path prefix):

* ``POST /studies`` and ``POST /studies/{study}``: STOW-RS, ``multipart/related`` or a single
  ``application/dicom`` body.
* ``GET /studies/{study}[/series/{series}[/instances/{sop}]]``: WADO-RS retrieval as
  ``multipart/related; type="application/dicom"`` (or a single ``application/dicom`` body for
  an instance when the Accept header asks for it).
* ``DELETE`` on the same three resource paths.
* ``GET /studies``, ``/series``, ``/instances`` and the nested QIDO-RS paths: a small QIDO
  answer built from the registry (UID matching, ``limit`` and ``offset`` only).

Use :class:`LoopbackServer` as a context manager in tests (it runs its own event loop in a
background thread, so it serves asyncio, trio and synchronous code alike), or run
``python -m tests.loopback_server --help`` for a separate server process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import re
import signal
import struct
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote

import multipart
import pydicom
from pydicom.uid import generate_uid

from dicomweb_async.testing._http_server import (
    CONNECTION_ENDED,
    CONTINUE,
    BodyReader,
    BodyWriter,
    Dropped,
    MalformedRequest,
    RequestHead,
    read_head,
    response_head,
    serve_connection,
)

__all__ = [
    "BEING_CREATED",
    "DUPLICATE_INSTANCE",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "PROCESSING_FAILURE",
    "SECONDARY_CAPTURE",
    "STUDY_MISMATCH",
    "LoopbackServer",
    "PartRecord",
    "RequestRecord",
    "StoredInstance",
    "iter_instance_bytes",
    "make_instance_bytes",
    "write_instance_files",
]

Framing = Literal["length", "chunked", "close"]
DuplicatePolicy = Literal["accept", "conflict"]
Hashing = Literal["all", "parts", "none"]
AuthCheck = str | Callable[[str | None], bool] | None
_Buffer = bytes | bytearray | memoryview

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# FailureReason values of STOW-RS responses, as the servers this one imitates use them.
PROCESSING_FAILURE = 0x0110
STUDY_MISMATCH = 0xA911
DUPLICATE_INSTANCE = 45070  # Azure's code for "instance already exists"
BEING_CREATED = 45071  # Azure's code for "instance is being created by another process"

_KIB = 1024
_MIB = 1024 * 1024
# Socket reads and writes of about a megabyte keep per-call overhead negligible at GB/s.
_IO_SIZE = 1 * _MIB
# The StreamReader pauses the socket at twice its limit; 1 MiB keeps reads large.
_STREAM_LIMIT = 1 * _MIB
_WRITE_HIGH_WATER = 4 * _MIB
_SEND_SIZE = 1 * _MIB
_MAX_HEAD = 64 * _KIB
# Enough for the header of any realistic instance without buffering the pixel data.
_DICOM_PREFIX = 64 * _KIB
_PATTERN_SIZE = 4 * _MIB

_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class PartRecord:
    """One part of a STOW-RS request as the server received it."""

    content_type: str | None
    size: int
    sha256: str | None
    sop_uid: str | None


@dataclass
class RequestRecord:
    """One request as the server saw it.

    ``status`` is ``None`` while the request is still being read, or when the server closed
    the connection without answering (:meth:`LoopbackServer.drop_next_request_after`).
    ``aborted`` is true when the server cut the connection on purpose or the client went away
    before the exchange finished; ``stalled`` when the server read the request's head and
    then sent nothing (:meth:`LoopbackServer.stall_next`).
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    connection: int
    started: float
    body_size: int = 0
    body_sha256: str | None = None
    parts: list[PartRecord] = field(default_factory=list)
    status: int | None = None
    response_body_bytes: int = 0
    aborted: bool = False
    stalled: bool = False

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of a request header, matched case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default


@dataclass(eq=False)
class StoredInstance:
    """An instance in the registry, with where its bytes come from.

    Exactly one of ``path``, ``data`` or ``synthetic_number`` is set when the server can serve
    the instance; an instance stored without a ``storage_dir`` has none of them and only its
    size and digest are remembered.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    path: Path | None = None
    data: bytes | None = None
    synthetic_number: int | None = None
    owned_file: bool = False
    _sha256: str | None = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        """Whether the server still has the bytes to serve."""
        return self.path is not None or self.data is not None or self.synthetic_number is not None

    @property
    def sha256(self) -> str | None:
        """Hex SHA-256 of the instance bytes, computed on first use for served sources."""
        if self._sha256 is None and self.available:
            digest = hashlib.sha256()
            for chunk in self.iter_chunks():
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def iter_chunks(self, chunk_size: int = _IO_SIZE) -> Iterator[_Buffer]:
        """The instance bytes in pieces of at most ``chunk_size``."""
        if self.path is not None:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    yield chunk
        elif self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), chunk_size):
                yield view[start : start + chunk_size]
        elif self.synthetic_number is not None:
            yield from iter_instance_bytes(
                self.size,
                study_uid=self.study_uid,
                series_uid=self.series_uid,
                sop_uid=self.sop_uid,
                sop_class_uid=self.sop_class_uid,
                instance_number=self.synthetic_number,
                chunk_size=chunk_size,
            )
        else:
            raise LookupError(f"bytes of {self.sop_uid} were not kept (no storage_dir)")

    def read_bytes(self) -> bytes:
        """The whole instance (tests only: this holds it in memory)."""
        return b"".join(bytes(chunk) for chunk in self.iter_chunks())


# --------------------------------------------------------------------------------------------
# Synthetic DICOM instances


def _encode_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR little endian; these VRs take a 4-byte length after two reserved bytes.
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UR", b"UC"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _text(value: str, pad: bytes = b" ") -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _uid(value: str) -> bytes:
    return _text(value, b"\x00")


def _instance_header(
    pixel_length: int,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    sop_class_uid: str,
    patient_id: str,
    instance_number: int,
) -> bytes:
    # Encoded by hand rather than through pydicom: it runs once per served instance, and
    # pydicom's writer costs more per instance than streaming a megabyte of its pixel data.
    meta_body = b"".join(
        (
            _encode_element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _encode_element(0x0002, 0x0002, b"UI", _uid(sop_class_uid)),
            _encode_element(0x0002, 0x0003, b"UI", _uid(sop_uid)),
            _encode_element(0x0002, 0x0010, b"UI", _uid(EXPLICIT_VR_LITTLE_ENDIAN)),
            _encode_element(0x0002, 0x0012, b"UI", _uid("1.2.826.0.1.3680043.8.498.1")),
            _encode_element(0x0002, 0x0013, b"SH", _text("LOOPBACK")),
        )
    )
    meta = _encode_element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    dataset = b"".join(
        (
            _encode_element(0x0008, 0x0016, b"UI", _uid(sop_class_uid)),
            _encode_element(0x0008, 0x0018, b"UI", _uid(sop_uid)),
            _encode_element(0x0008, 0x0060, b"CS", _text("OT")),
            _encode_element(0x0010, 0x0010, b"PN", _text("LOOPBACK^SYNTHETIC")),
            _encode_element(0x0010, 0x0020, b"LO", _text(patient_id)),
            _encode_element(0x0020, 0x000D, b"UI", _uid(study_uid)),
            _encode_element(0x0020, 0x000E, b"UI", _uid(series_uid)),
            _encode_element(0x0020, 0x0013, b"IS", _text(str(instance_number))),
            struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_length),
        )
    )
    return b"\x00" * 128 + b"DICM" + meta + dataset


@functools.lru_cache(maxsize=1)
def _pattern() -> memoryview:
    # Pseudo-random rather than zeros so that a client which drops or repeats a chunk inside
    # the pixel data produces a different digest; one shared block keeps memory constant.
    return memoryview(random.Random(0x5EED).randbytes(_PATTERN_SIZE))


def _iter_padding(length: int, chunk_size: int) -> Iterator[memoryview]:
    pattern = _pattern()
    position = 0
    while position < length:
        start = position % _PATTERN_SIZE
        count = min(length - position, _PATTERN_SIZE - start, chunk_size)
        yield pattern[start : start + count]
        position += count


def iter_instance_bytes(
    size: int,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    sop_class_uid: str = SECONDARY_CAPTURE,
    patient_id: str = "LOOPBACK",
    instance_number: int = 1,
    chunk_size: int = _IO_SIZE,
) -> Iterator[_Buffer]:
    """Stream a valid Part 10 instance of exactly ``size`` bytes.

    The dataset carries the given UIDs, a PatientID and an OB PixelData element whose value is
    a deterministic pseudo-random pattern padding the file to ``size``.  ``size`` must be even
    (DICOM values have even lengths) and at least the header size (about 500 bytes).
    """
    if size % 2:
        raise ValueError(f"instance size must be even, got {size}")
    header = _instance_header(
        0,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        patient_id=patient_id,
        instance_number=instance_number,
    )
    pixel_length = size - len(header)
    if pixel_length < 0:
        raise ValueError(f"instance size {size} is smaller than its header ({len(header)})")
    yield header[:-4] + struct.pack("<I", pixel_length)
    yield from _iter_padding(pixel_length, chunk_size)


def make_instance_bytes(
    size: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = SECONDARY_CAPTURE,
    patient_id: str = "LOOPBACK",
    instance_number: int = 1,
) -> bytes:
    """A valid Part 10 instance of exactly ``size`` bytes; missing UIDs are generated."""
    return b"".join(
        bytes(chunk)
        for chunk in iter_instance_bytes(
            size,
            study_uid=study_uid or generate_uid(),
            series_uid=series_uid or generate_uid(),
            sop_uid=sop_uid or generate_uid(),
            sop_class_uid=sop_class_uid,
            patient_id=patient_id,
            instance_number=instance_number,
        )
    )


def write_instance_files(
    directory: Path | str,
    n: int,
    size: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "LOOPBACK",
) -> list[Path]:
    """Write ``n`` instances of exactly ``size`` bytes to ``directory`` as ``<sop>.dcm``.

    All files belong to one study and one series (generated when not given).  Files are
    written piece by piece, so large sizes do not need the memory.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    series = series_uid or generate_uid()
    paths = []
    for number in range(1, n + 1):
        sop = generate_uid()
        path = target / f"{sop}.dcm"
        with open(path, "wb") as fh:
            for chunk in iter_instance_bytes(
                size,
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                patient_id=patient_id,
                instance_number=number,
            ):
                fh.write(chunk)
        paths.append(path)
    return paths


@dataclass
class _Identity:
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str


def _read_identity(prefix: bytes) -> _Identity | None:
    """UIDs from the start of a Part 10 stream, or None if it is not a usable instance."""
    identity = _scan_identity(prefix) or _pydicom_identity(prefix)
    if identity is None or not _UID_RE.fullmatch(identity.sop_uid) or len(identity.sop_uid) > 64:
        return None  # the SOP UID names the stored file: keep it to UID characters
    return identity


def _pydicom_identity(prefix: bytes) -> _Identity | None:
    try:
        ds = pydicom.dcmread(io.BytesIO(prefix), stop_before_pixels=True, force=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
        study = str(ds.get("StudyInstanceUID", "") or "")
        series = str(ds.get("SeriesInstanceUID", "") or "")
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    except Exception:
        # Anything pydicom cannot read is "not DICOM" to a STOW-RS server.
        return None
    if not (sop_class and sop and study):
        return None
    return _Identity(sop_class, sop, study, series, syntax or EXPLICIT_VR_LITTLE_ENDIAN)


# Element tags the scan looks for, and VRs whose length field takes four bytes.
_IDENTITY_TAGS = {0x00080016: 0, 0x00080018: 1, 0x0020000D: 2, 0x0020000E: 3}
_LAST_IDENTITY_TAG = 0x0020000E
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
# Transfer syntaxes whose dataset is not explicit VR little endian.
_OTHER_ENCODINGS = frozenset(
    ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
)


def _scan_identity(prefix: bytes) -> _Identity | None:
    """The common case read directly; None whenever pydicom should decide.

    pydicom builds a whole Dataset and costs a few hundred microseconds per instance, which
    capped uploads of megabyte-sized instances near 1 GB/s.  Walking the few elements before
    (0020,000E) of an explicit VR little endian file is enough for the UIDs; anything else
    (implicit VR, big endian, deflate, undefined lengths, no preamble) goes to pydicom.
    """
    if len(prefix) < 144 or prefix[128:132] != b"DICM":
        return None
    found: list[str | None] = [None, None, None, None]
    syntax: str | None = None
    position, size = 132, len(prefix)
    while position + 8 <= size:
        group, element = struct.unpack_from("<HH", prefix, position)
        tag = group << 16 | element
        if tag > _LAST_IDENTITY_TAG:
            break
        if group != 0x0002 and (syntax is None or syntax in _OTHER_ENCODINGS):
            return None
        vr = prefix[position + 4 : position + 6]
        if vr in _LONG_VRS:
            if position + 12 > size:
                return None
            (length,) = struct.unpack_from("<I", prefix, position + 8)
            start = position + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", prefix, position + 6)
            start = position + 8
        else:
            return None
        end = start + length
        if length == 0xFFFFFFFF or end > size:
            return None
        if tag == 0x00020010 or tag in _IDENTITY_TAGS:
            try:
                text = prefix[start:end].rstrip(b"\x00 ").decode("ascii")
            except UnicodeDecodeError:
                return None
            if tag == 0x00020010:
                syntax = text
            else:
                found[_IDENTITY_TAGS[tag]] = text
        position = end
    sop_class, sop, study, series = found
    if not (syntax and sop_class and sop and study):
        return None
    return _Identity(sop_class, sop, study, series or "", syntax)


# --------------------------------------------------------------------------------------------
# Small HTTP helpers


class _HttpError(Exception):
    def __init__(self, status: int, message: str = "", headers: list[tuple[str, str]] = []):  # noqa: B006
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def _split_unquoted(value: str, separator: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def _parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    pieces = _split_unquoted(value, ";")
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, raw = piece.partition("=")
        if not eq:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.strip().lower()] = raw
    return pieces[0].strip().lower(), params


# --------------------------------------------------------------------------------------------
# Request body consumers


class _Hasher(Protocol):
    def update(self, data: _Buffer, /) -> None: ...

    def hexdigest(self) -> str: ...


class _NullHasher:
    def update(self, data: _Buffer, /) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class _DiscardSink:
    def feed(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _RelatedParser(multipart.PushMultipartParser):  # type: ignore[misc]
    """The sans-io multipart parser, accepting parts without Content-Disposition."""

    def _create_segment(self, headerlist: list[tuple[str, str]]) -> multipart.MultipartSegment:
        # multipart/related parts carry no Content-Disposition (that is form-data only).
        return multipart.MultipartSegment(headerlist)


@dataclass
class _Outcome:
    record: PartRecord
    identity: _Identity | None
    failure: int | None


class _PartReceiver:
    """Hashes, sniffs and optionally stores one part as it arrives."""

    def __init__(self, content_type: str | None, storage_dir: Path | None, hash_it: bool) -> None:
        self.content_type = content_type
        self._digest: _Hasher = hashlib.sha256() if hash_it else _NullHasher()
        self._hash_it = hash_it
        self._prefix = bytearray()
        self.size = 0
        self._temp: Path | None = None
        self._file: io.BufferedWriter | None = None
        if storage_dir is not None:
            self._temp = storage_dir / f".incoming-{uuid.uuid4().hex}"
            self._file = open(self._temp, "wb")  # noqa: SIM115 - closed in close_file()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self._digest.update(data)
        if len(self._prefix) < _DICOM_PREFIX:
            self._prefix += data[: _DICOM_PREFIX - len(self._prefix)]
        if self._file is not None:
            self._file.write(data)

    def close_file(self) -> Path | None:
        if self._file is not None:
            self._file.close()
            self._file = None
        return self._temp

    def abort(self) -> None:
        temp = self.close_file()
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def identity(self) -> _Identity | None:
        return _read_identity(bytes(self._prefix))

    def digest(self) -> str | None:
        return self._digest.hexdigest() if self._hash_it else None


class _StowSink:
    """Parses a STOW-RS body incrementally and stores each part as it completes."""

    def __init__(
        self,
        server: _ServerState,
        *,
        content_type: str | None,
        study_uid: str | None,
        record: RequestRecord,
    ) -> None:
        self._server = server
        self._study_uid = study_uid
        self._record = record
        self._storage_dir = server.storage_dir
        self._hash_parts = server.hashing != "none"
        self.outcomes: list[_Outcome] = []
        self._part: _PartReceiver | None = None
        self._parser: _RelatedParser | None = None
        media, params = _parse_media_type(content_type or "")
        if media == "multipart/related":
            part_type = params.get("type")
            if part_type is not None and _parse_media_type(part_type)[0] != "application/dicom":
                raise _HttpError(415, f"unsupported multipart/related type {part_type!r}")
            boundary = params.get("boundary")
            if not boundary:
                raise _HttpError(400, "multipart/related without boundary")
            self._parser = _RelatedParser(boundary, max_header_count=32)
        elif media == "application/dicom":
            self._part = self._new_part(content_type)
        else:
            raise _HttpError(415, f"STOW-RS cannot store {content_type!r}")

    def _new_part(self, content_type: str | None) -> _PartReceiver:
        return _PartReceiver(content_type, self._storage_dir, self._hash_parts)

    def feed(self, data: bytes) -> None:
        if self._parser is None:
            assert self._part is not None
            self._part.feed(data)
            return
        try:
            for event in self._parser.parse(data):
                if isinstance(event, multipart.MultipartSegment):
                    self._part = self._new_part(event.header("Content-Type"))
                elif event is None:
                    self._end_part()
                else:
                    assert self._part is not None
                    self._part.feed(event)
        except multipart.MultipartError as exc:
            raise _HttpError(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> None:
        if self._parser is None:
            self._end_part()
        else:
            try:
                self._parser.close()
            except multipart.MultipartError as exc:
                raise _HttpError(400, f"malformed multipart body: {exc}") from None
        if not self.outcomes:
            raise _HttpError(400, "no instances in the request")

    def abort(self) -> None:
        if self._part is not None:
            self._part.abort()
            self._part = None

    def _end_part(self) -> None:
        part = self._part
        assert part is not None
        self._part = None
        temp = part.close_file()
        identity = part.identity()
        failure: int | None = None
        if part.content_type is not None:
            media = _parse_media_type(part.content_type)[0]
            if media != "application/dicom":
                failure = PROCESSING_FAILURE
        if identity is None:
            failure = failure or PROCESSING_FAILURE
        elif self._study_uid is not None and identity.study_uid != self._study_uid:
            failure = failure or STUDY_MISMATCH
        sha = part.digest()
        if failure is None:
            assert identity is not None
            failure = self._server.store_part(identity, part.size, sha, temp)
        elif temp is not None:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        record = PartRecord(
            part.content_type, part.size, sha, identity.sop_uid if identity else None
        )
        self._record.parts.append(record)
        self.outcomes.append(_Outcome(record, identity, failure))


# --------------------------------------------------------------------------------------------
# DICOM JSON


def _ui(value: str) -> dict[str, object]:
    return {"vr": "UI", "Value": [value]}


def _ur(value: str) -> dict[str, object]:
    return {"vr": "UR", "Value": [value]}


def _is(value: int) -> dict[str, object]:
    return {"vr": "IS", "Value": [value]}


# --------------------------------------------------------------------------------------------
# Server state and request handling


@dataclass
class _FailRule:
    remaining: int
    status: int
    retry_after: float | None
    body: bytes
    content_type: str
    method: str | None


@dataclass
class _DropRule:
    after: int
    method: str | None


@dataclass
class _RandomFaults:
    """Faults drawn per request from a seeded generator (see ``random_faults``)."""

    rng: random.Random
    status_rate: float
    drop_rate: float
    status: int
    retry_after: float | None
    counts: dict[str, int] = field(default_factory=lambda: {"status": 0, "drop": 0})


@dataclass
class _Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    # A streamed body: framing strings and instances whose bytes are sent from their source.
    pieces: list[bytes | StoredInstance] | None = None
    framing: Framing = "length"
    cut_after: int | None = None


def _error_reply(exc: _HttpError | MalformedRequest) -> _Reply:
    headers = exc.headers if isinstance(exc, _HttpError) else []
    return _Reply(exc.status, headers, exc.message.encode("utf-8"))


_Handler = Callable[[], _Reply]


def _matches(rule_method: str | None, method: str) -> bool:
    return rule_method is None or rule_method.upper() == method


def _format_retry_after(seconds: float) -> str:
    # Whole seconds are the standard form; fractions let tests use short waits.
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    return response_head(status, [("Server", "loopback-dicomweb"), *headers])


def _negotiate(accept: str | None, *, instance_route: bool) -> tuple[bool, set[str] | None]:
    """(single part?, acceptable transfer syntaxes, None meaning any) for a retrieval.

    A missing ``transfer-syntax`` parameter is taken as "any": this server never transcodes,
    and a test server that refused the default would get in the way more than it helps.
    """
    if not accept:
        return False, None
    multipart_syntaxes: set[str] | None = set()
    single_syntaxes: set[str] | None = set()
    want_multipart = want_single = False
    for media_range in _split_unquoted(accept, ","):
        media, params = _parse_media_type(media_range)
        if params.get("q", "1").strip("0.") == "" and params.get("q") is not None:
            continue  # q=0 means "not acceptable"
        if media == "multipart/related":
            # Orthanc-style clients put transfer-syntax inside the quoted type parameter.
            inner_type, inner = _parse_media_type(params.get("type", "application/dicom"))
            if inner_type not in ("application/dicom", "*/*", "application/*"):
                continue
            syntax = params.get("transfer-syntax") or inner.get("transfer-syntax") or "*"
            want_multipart = True
            multipart_syntaxes = _add_syntax(multipart_syntaxes, syntax)
        elif media in ("*/*", "multipart/*"):
            want_multipart = True
            multipart_syntaxes = None
        elif media == "application/dicom" and instance_route:
            want_single = True
            single_syntaxes = _add_syntax(single_syntaxes, params.get("transfer-syntax") or "*")
    if want_multipart:
        return False, multipart_syntaxes
    if want_single:
        return True, single_syntaxes
    raise _HttpError(406, f"cannot produce any of: {accept}")


def _add_syntax(syntaxes: set[str] | None, syntax: str) -> set[str] | None:
    if syntaxes is None or syntax == "*":
        return None
    syntaxes.add(syntax)
    return syntaxes


def _qido_level(segments: list[str]) -> tuple[str, str | None, str | None] | None:
    """(level, study, series) when the path is a QIDO-RS search."""
    n = len(segments)
    if segments in (["studies"], ["series"], ["instances"]):
        return segments[0], None, None
    if n == 3 and segments[0] == "studies" and segments[2] in ("series", "instances"):
        return segments[2], segments[1], None
    if n == 5 and segments[0] == "studies" and segments[2:5:2] == ["series", "instances"]:
        return "instances", segments[1], segments[3]
    return None


class _ServerState:
    """Everything the connection handlers share; mutable state is guarded by one lock."""

    def __init__(
        self,
        *,
        prefix: str,
        storage_dir: Path | None,
        framing: Framing,
        duplicate_policy: DuplicatePolicy,
        latency: float,
        hashing: Hashing,
    ) -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError("prefix must start with '/' and not end with it, e.g. '/dicom-web'")
        _check_choice("framing", framing, ("length", "chunked", "close"))
        _check_choice("duplicate_policy", duplicate_policy, ("accept", "conflict"))
        _check_choice("hashing", hashing, ("all", "parts", "none"))
        self.lock = threading.RLock()
        self.prefix = prefix
        self.storage_dir = storage_dir
        self.framing: Framing = framing
        self.duplicate_policy: DuplicatePolicy = duplicate_policy
        self.latency = latency
        self.hashing: Hashing = hashing
        self.port = 0
        self.studies: dict[str, dict[str, dict[str, StoredInstance]]] = {}
        self.by_sop: dict[str, StoredInstance] = {}
        self.synthetic_counts: dict[str, int] = {}
        self.fail_rules: list[_FailRule] = []
        self.response_drops: list[_DropRule] = []
        self.request_drops: list[_DropRule] = []
        self.random_faults: _RandomFaults | None = None
        self.quirks: frozenset[str] = frozenset()
        self.stalls: list[_DropRule] = []  # ``after``: how many more requests to stall
        # FailureReason values for the next STOW-RS parts that would otherwise be stored.
        self.instance_failures: list[int] = []
        self.auth: AuthCheck = None
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- registry -----------------------------------------------------------------------

    def register(self, instance: StoredInstance) -> None:
        with self.lock:
            self._unregister(instance.sop_uid, keep_file=instance.path)
            series = self.studies.setdefault(instance.study_uid, {})
            series.setdefault(instance.series_uid, {})[instance.sop_uid] = instance
            self.by_sop[instance.sop_uid] = instance

    def _unregister(self, sop_uid: str, keep_file: Path | None = None) -> None:
        old = self.by_sop.pop(sop_uid, None)
        if old is None:
            return
        series = self.studies.get(old.study_uid, {})
        instances = series.get(old.series_uid, {})
        instances.pop(sop_uid, None)
        if not instances:
            series.pop(old.series_uid, None)
        if not series:
            self.studies.pop(old.study_uid, None)
        if old.owned_file and old.path is not None and old.path != keep_file:
            with contextlib.suppress(FileNotFoundError):
                old.path.unlink()

    def store_part(
        self, identity: _Identity, size: int, sha: str | None, temp: Path | None
    ) -> int | None:
        """Register a received instance; the failure reason if it is refused."""
        with self.lock:
            refusal: int | None = None
            if self.instance_failures:
                refusal = self.instance_failures.pop(0)
            elif identity.sop_uid in self.by_sop and self.duplicate_policy == "conflict":
                refusal = DUPLICATE_INSTANCE
            if refusal is not None:
                if temp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        temp.unlink()
                return refusal
            path = None
            if temp is not None:
                path = temp.with_name(f"{identity.sop_uid}.dcm")
                os.replace(temp, path)
            self.register(
                StoredInstance(
                    study_uid=identity.study_uid,
                    series_uid=identity.series_uid,
                    sop_uid=identity.sop_uid,
                    sop_class_uid=identity.sop_class_uid,
                    transfer_syntax=identity.transfer_syntax,
                    size=size,
                    path=path,
                    owned_file=path is not None,
                    _sha256=sha,
                )
            )
            return None

    def select(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]:
        with self.lock:
            series_map = self.studies.get(study, {})
            if series is None:
                return [inst for group in series_map.values() for inst in group.values()]
            instances = series_map.get(series, {})
            if sop is None:
                return list(instances.values())
            found = instances.get(sop)
            return [found] if found is not None else []

    def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        with self.lock:
            victims = self.select(study, series, sop)
            for instance in victims:
                self._unregister(instance.sop_uid)
            return len(victims)

    # ---- knobs ------------------------------------------------------------------------------

    def take_fail_rule(self, method: str) -> _FailRule | None:
        with self.lock:
            for rule in self.fail_rules:
                if _matches(rule.method, method):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.fail_rules.remove(rule)
                    return rule
        return None

    def take_drop(self, rules: list[_DropRule], method: str) -> int | None:
        with self.lock:
            for rule in rules:
                if _matches(rule.method, method):
                    rules.remove(rule)
                    return rule.after
        return None

    def take_stall(self, method: str) -> bool:
        with self.lock:
            for rule in self.stalls:
                if _matches(rule.method, method):
                    rule.after -= 1
                    if rule.after <= 0:
                        self.stalls.remove(rule)
                    return True
        return False

    def roll_fault(self, method: str) -> tuple[str, int] | None:
        """A random fault for this request, if random faults are on and one is drawn."""
        with self.lock:
            faults = self.random_faults
            if faults is None:
                return None
            draw = faults.rng.random()
            if draw < faults.status_rate:
                faults.counts["status"] += 1
                return "status", 0
            if method in ("GET", "POST") and draw < faults.status_rate + faults.drop_rate:
                faults.counts["drop"] += 1
                return "drop", faults.rng.randint(100, 4000)
        return None

    def authorized(self, value: str | None) -> bool:
        with self.lock:
            check = self.auth
        if check is None:
            return True
        if callable(check):
            return bool(check(value))
        return value == check

    # ---- connections ------------------------------------------------------------------------

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        with self.lock:
            self.connections += 1
            connection_id = self.connections
        writer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        exchange = functools.partial(self._handle_request, reader, writer, connection_id)
        try:
            await serve_connection(writer, exchange, on_bug=self._record_error, tasks=self._tasks)
        finally:
            self._writers.discard(writer)

    def _record_error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    async def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection_id: int
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        try:
            head = await read_head(reader, _MAX_HEAD)
        except MalformedRequest as exc:
            await self._send(writer, _error_reply(exc), False)
            return False
        if head is None:
            return False
        record = RequestRecord(
            method=head.method,
            path=head.path,
            query=head.query,
            headers=head.headers,
            connection=connection_id,
            started=time.monotonic(),
        )
        with self.lock:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._serve(reader, writer, head, record)
        except CONNECTION_ENDED:
            record.aborted = True
            raise
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        record: RequestRecord,
    ) -> bool:
        keep_alive = head.keep_alive
        try:
            body = BodyReader(reader, head)
        except MalformedRequest as exc:
            record.status = exc.status
            await self._send(writer, _error_reply(exc), False, record)
            return False
        if self.take_stall(head.method):
            # Read the head, then nothing more and no answer, until the client gives up
            # (the server's stop cancels this).
            record.stalled = True
            await asyncio.sleep(3600)
        if head.expects_continue:
            writer.write(CONTINUE)

        # Decided before the body is read, so that a refused request stores nothing.
        reply: _Reply | None = None
        drop_after: int | None = None
        handler: _Handler | None = None
        sink: _Sink = _DiscardSink()
        fault: tuple[str, int] | None = None
        if not self.authorized(head.get("Authorization")):
            reply = _Reply(401, [("WWW-Authenticate", "Bearer")], b"unauthorized")
        elif (drop_after := self.take_drop(self.request_drops, head.method)) is not None:
            pass
        elif (fault := self.roll_fault(head.method)) is not None and fault[0] == "status":
            faults = self.random_faults
            assert faults is not None
            extra = []
            if faults.retry_after is not None:
                extra.append(("Retry-After", _format_retry_after(faults.retry_after)))
            reply = _Reply(faults.status, extra, b"random fault")
        elif fault is not None and head.method == "POST":
            drop_after = fault[1]
        elif (rule := self.take_fail_rule(head.method)) is not None:
            extra = []
            if rule.retry_after is not None:
                extra.append(("Retry-After", _format_retry_after(rule.retry_after)))
            reply = _Reply(rule.status, extra, rule.body, rule.content_type)
        else:
            try:
                route_sink, handler = self._route(head, record)
                sink = route_sink or sink
            except _HttpError as exc:
                reply = _error_reply(exc)

        # Hashing and parsing run inline: on a small machine a worker thread contends for the
        # GIL and the cores with the event loop and the client, and measured slower.
        digest: _Hasher = hashlib.sha256() if self.hashing == "all" else _NullHasher()
        try:
            while True:
                want = _IO_SIZE
                if drop_after is not None:
                    want = min(want, drop_after - record.body_size)
                    if want <= 0:
                        break
                data = await body.read(want)
                if not data:
                    break
                record.body_size += len(data)
                digest.update(data)
                if reply is None:
                    try:
                        sink.feed(data)
                    except _HttpError as exc:
                        # Keep reading so that the connection can carry the next request.
                        reply = _error_reply(exc)
                        sink.abort()
            if drop_after is not None:
                raise Dropped
            if reply is None:
                sink.finish()
        except (_HttpError, MalformedRequest) as exc:
            sink.abort()
            reply = _error_reply(exc)
            # After broken framing the next request's start is unknown.
            keep_alive = keep_alive and not isinstance(exc, MalformedRequest)
        except BaseException:
            sink.abort()
            raise
        finally:
            if self.hashing == "all":
                record.body_sha256 = digest.hexdigest()

        if reply is None:
            assert handler is not None
            try:
                reply = handler()
                if fault is not None and reply.pieces is not None and reply.cut_after is None:
                    reply.cut_after = fault[1]  # a random drop of a retrieval, mid-body
            except _HttpError as exc:
                reply = _error_reply(exc)
            except Exception:
                with self.lock:
                    self.errors.append(traceback.format_exc())
                reply = _Reply(500, body=b"loopback server error (see LoopbackServer.errors)")
        record.status = reply.status
        latency = self.latency
        if latency > 0:
            await asyncio.sleep(latency)
        return await self._send(writer, reply, keep_alive, record)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        reply: _Reply,
        keep_alive: bool,
        record: RequestRecord | None = None,
    ) -> bool:
        headers = list(reply.headers)
        if reply.pieces is None:
            if reply.status != 204:
                headers.append(("Content-Type", reply.content_type))
                headers.append(("Content-Length", str(len(reply.body))))
            if not keep_alive:
                headers.append(("Connection", "close"))
            body = reply.body if reply.status != 204 else b""
            writer.write(_response_head(reply.status, headers) + body)
            await writer.drain()
            if record is not None:
                record.response_body_bytes = len(body)
            return keep_alive

        headers.append(("Content-Type", reply.content_type))
        if reply.framing == "length":
            total = sum(p.size if isinstance(p, StoredInstance) else len(p) for p in reply.pieces)
            headers.append(("Content-Length", str(total)))
        elif reply.framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        if reply.framing == "close" or not keep_alive:
            headers.append(("Connection", "close"))
            keep_alive = False
        writer.write(_response_head(reply.status, headers))
        sender = BodyWriter(writer, chunked=reply.framing == "chunked", allowance=reply.cut_after)
        try:
            await sender.start()
            for piece in reply.pieces:
                if not isinstance(piece, StoredInstance):
                    await sender.write(piece)
                    continue
                # Plain reads and writes measured faster here than loop.sendfile(), whose
                # per-call bookkeeping dominates at a few megabytes per instance.
                for chunk in piece.iter_chunks(_SEND_SIZE):
                    await sender.write(chunk)
            await sender.finish()
        finally:
            if record is not None:
                record.response_body_bytes = sender.sent
        return keep_alive

    # ---- routing ----------------------------------------------------------------------------

    def _route(self, head: RequestHead, record: RequestRecord) -> tuple[_Sink | None, _Handler]:
        path = head.path
        if self.prefix:
            if path != self.prefix and not path.startswith(self.prefix + "/"):
                raise _HttpError(404, "outside the DICOMweb base path")
            path = path[len(self.prefix) :]
        segments = [unquote(piece) for piece in path.split("/") if piece]
        method = head.method
        if method not in ("GET", "POST", "DELETE"):
            raise _HttpError(405, f"{method} is not supported", [("Allow", "GET, POST, DELETE")])
        n = len(segments)
        if method == "POST" and n in (1, 2) and segments[0] == "studies":
            study = segments[1] if n == 2 else None
            content_type = head.get("Content-Type")
            sink = _StowSink(self, content_type=content_type, study_uid=study, record=record)
            return sink, functools.partial(self._stow_reply, head, sink, study)
        resource = (
            n in (2, 4, 6)
            and segments[0] == "studies"
            and (n < 4 or segments[2] == "series")
            and (n < 6 or segments[4] == "instances")
        )
        if resource:
            study, series, sop = segments[1], _at(segments, 3), _at(segments, 5)
            if method == "GET":
                return None, functools.partial(self._retrieve_reply, head, study, series, sop)
            if method == "DELETE":
                return None, functools.partial(self._delete_reply, study, series, sop)
            raise _HttpError(405, "POST not allowed here", [("Allow", "GET, DELETE")])
        query = _qido_level(segments)
        if query is not None:
            if method == "GET":
                return None, functools.partial(self._qido_reply, head, *query)
            allowed = "GET, POST" if segments == ["studies"] else "GET"
            raise _HttpError(405, f"{method} not allowed here", [("Allow", allowed)])
        raise _HttpError(404, "no such route")

    def _base_url(self, head: RequestHead) -> str:
        host = head.get("Host") or f"127.0.0.1:{self.port}"
        return f"http://{host}{self.prefix}"

    # ---- handlers ---------------------------------------------------------------------------

    def _stow_reply(self, head: RequestHead, sink: _StowSink, study: str | None) -> _Reply:
        base = self._base_url(head)
        stored = [o.identity for o in sink.outcomes if o.failure is None and o.identity]
        failed = [o for o in sink.outcomes if o.failure is not None]
        answer: dict[str, object] = {}
        studies = {ident.study_uid for ident in stored}
        if study is None and len(studies) == 1:
            study = next(iter(studies))
        if study is not None:
            answer["00081190"] = _ur(f"{base}/studies/{study}")
        if stored:
            answer["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": _ui(ident.sop_class_uid),
                        "00081155": _ui(ident.sop_uid),
                        "00081190": _ur(
                            f"{base}/studies/{ident.study_uid}/series/{ident.series_uid}"
                            f"/instances/{ident.sop_uid}"
                        ),
                    }
                    for ident in stored
                ],
            }
        if failed:
            items = []
            for outcome in failed:
                item: dict[str, object] = {}
                if outcome.identity is not None:
                    item["00081150"] = _ui(outcome.identity.sop_class_uid)
                    item["00081155"] = _ui(outcome.identity.sop_uid)
                item["00081197"] = {"vr": "US", "Value": [outcome.failure]}
                items.append(item)
            answer["00081198"] = {"vr": "SQ", "Value": items}
        status = 200 if not failed else (202 if stored else 409)
        return _Reply(status, body=json.dumps(answer).encode(), content_type=_DICOM_JSON)

    def _delete_reply(self, study: str, series: str | None, sop: str | None) -> _Reply:
        if self.delete(study, series, sop):
            return _Reply(204)
        return _Reply(404, body=b"no such resource")

    def _retrieve_reply(
        self, head: RequestHead, study: str, series: str | None, sop: str | None
    ) -> _Reply:
        single, syntaxes = _negotiate(head.get("Accept"), instance_route=sop is not None)
        instances = [inst for inst in self.select(study, series, sop) if inst.available]
        if not instances:
            return _Reply(404, body=b"no such resource (or its bytes were not kept)")
        if syntaxes is not None and any(i.transfer_syntax not in syntaxes for i in instances):
            return _Reply(406, body=b"transcoding is not supported")
        with self.lock:
            framing = self.framing
        cut_after = self.take_drop(self.response_drops, head.method)
        with self.lock:
            quirks = self.quirks
        if "bare_body_labelled_multipart" in quirks and sop is not None:
            return _Reply(
                200,
                content_type='multipart/related; type="application/dicom"',
                pieces=[instances[0]],
                framing=framing,
                cut_after=cut_after,
            )
        if single:
            instance = instances[0]
            return _Reply(
                200,
                content_type=f"application/dicom; transfer-syntax={instance.transfer_syntax}",
                pieces=[instance],
                framing=framing,
                cut_after=cut_after,
            )
        boundary = uuid.uuid4().hex
        pieces: list[bytes | StoredInstance] = []
        for index, instance in enumerate(instances):
            part_head = (
                f"--{boundary}\r\n"
                f"Content-Type: application/dicom; transfer-syntax={instance.transfer_syntax}\r\n"
                f"Content-Length: {instance.size}\r\n\r\n"
            )
            pieces.append((b"\r\n" if index else b"") + part_head.encode("ascii"))
            pieces.append(instance)
        pieces.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
        label = 'multipart/related; type="application/dicom"'
        return _Reply(
            200,
            content_type=label if "no_boundary" in quirks else f"{label}; boundary={boundary}",
            pieces=pieces,
            framing=framing,
            cut_after=cut_after,
        )

    def _qido_reply(
        self, head: RequestHead, level: str, study: str | None, series: str | None
    ) -> _Reply:
        aliases = {
            "0020000D": "StudyInstanceUID",
            "0020000E": "SeriesInstanceUID",
            "00080018": "SOPInstanceUID",
        }
        wanted: dict[str, set[str]] = {}
        limit: int | None = None
        offset = 0
        for key, value in parse_qsl(head.query, keep_blank_values=True):
            key = aliases.get(key.upper(), key)
            if key in aliases.values() and value:
                wanted.setdefault(key, set()).update(v for v in value.split(",") if v)
            elif key == "limit" and value.isdigit():
                limit = int(value)
            elif key == "offset" and value.isdigit():
                offset = int(value)
        with self.lock:
            quirks = self.quirks
        if "ignore_offset" in quirks:
            offset = 0
        if "ignore_study_path" in quirks:
            study = series = None
        with self.lock:
            matches = [
                inst
                for inst in self.by_sop.values()
                if (study is None or inst.study_uid == study)
                and (series is None or inst.series_uid == series)
                and inst.study_uid in wanted.get("StudyInstanceUID", {inst.study_uid})
                and inst.series_uid in wanted.get("SeriesInstanceUID", {inst.series_uid})
                and inst.sop_uid in wanted.get("SOPInstanceUID", {inst.sop_uid})
            ]
        results: list[dict[str, object]] = []
        if level == "instances":
            results = [
                {
                    "00080016": _ui(inst.sop_class_uid),
                    "00080018": _ui(inst.sop_uid),
                    "00083002": _ui(inst.transfer_syntax),
                    "0020000D": _ui(inst.study_uid),
                    "0020000E": _ui(inst.series_uid),
                }
                for inst in matches
            ]
        elif level == "series":
            per_series: dict[tuple[str, str], int] = {}
            for inst in matches:
                pair = (inst.study_uid, inst.series_uid)
                per_series[pair] = per_series.get(pair, 0) + 1
            results = [
                {"0020000D": _ui(st), "0020000E": _ui(se), "00201209": _is(count)}
                for (st, se), count in per_series.items()
            ]
        else:
            per_study: dict[str, set[str]] = {}
            totals: dict[str, int] = {}
            for inst in matches:
                per_study.setdefault(inst.study_uid, set()).add(inst.series_uid)
                totals[inst.study_uid] = totals.get(inst.study_uid, 0) + 1
            results = [
                {
                    "0020000D": _ui(st),
                    "00201206": _is(len(series_set)),
                    "00201208": _is(totals[st]),
                }
                for st, series_set in per_study.items()
            ]
        results = results[offset:] if limit is None else results[offset : offset + limit]
        return _Reply(200, body=json.dumps(results).encode(), content_type=_DICOM_JSON)


_DICOM_JSON = "application/dicom+json"


def _at(items: list[str], index: int) -> str | None:
    return items[index] if index < len(items) else None


async def _listen(state: _ServerState, port: int) -> asyncio.Server:
    server = await asyncio.start_server(
        state.handle_connection, "127.0.0.1", port, limit=_STREAM_LIMIT, backlog=1024
    )
    state.port = server.sockets[0].getsockname()[1]
    return server


async def _close(server: asyncio.Server, state: _ServerState) -> None:
    server.close()
    await state.close_connections()
    await server.wait_closed()


# --------------------------------------------------------------------------------------------
# Public face


class LoopbackServer:
    """A DICOMweb-like HTTP/1.1 server on ``127.0.0.1``, run in a background thread.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one (see :attr:`port`).
    prefix
        Base path of the DICOMweb service, e.g. ``"/dicom-web"``; :attr:`url` includes it.
    storage_dir
        Where stored instances are written as ``<SOPInstanceUID>.dcm`` so that they can be
        retrieved later.  Without it, STOW-RS only records sizes and digests.
    framing
        How retrieval responses end: ``"length"`` (exact Content-Length), ``"chunked"``, or
        ``"close"`` (no length, the server closes the connection, as Orthanc does).
    duplicate_policy
        ``"accept"`` stores a SOP instance again (Orthanc); ``"conflict"`` refuses it with
        failure reason 45070 (Azure).
    latency
        Seconds to wait before every response.
    hashing
        ``"all"`` records SHA-256 of request bodies and of each STOW part, ``"parts"`` only of
        the parts, ``"none"`` of neither.  One SHA-256 pass runs at about 2 GB/s, so
        throughput benchmarks of uploads should pass ``"none"``.

    The knob methods and attributes are thread-safe and apply from the next request on.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        prefix: str = "",
        storage_dir: Path | str | None = None,
        framing: Framing = "length",
        duplicate_policy: DuplicatePolicy = "accept",
        latency: float = 0.0,
        hashing: Hashing = "all",
    ) -> None:
        storage = Path(storage_dir) if storage_dir is not None else None
        if storage is not None:
            storage.mkdir(parents=True, exist_ok=True)
        self._state = _ServerState(
            prefix=prefix,
            storage_dir=storage,
            framing=framing,
            duplicate_policy=duplicate_policy,
            latency=latency,
            hashing=hashing,
        )
        self._requested_port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Start serving in a background thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    self._server = loop.run_until_complete(
                        _listen(self._state, self._requested_port)
                    )
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_forever()
                loop.run_until_complete(_close(self._server, self._state))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="loopback-dicomweb", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every connection and stop the server thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = self._server = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`start`)."""
        return self._state.port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` without the path prefix."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the DICOMweb service, including the prefix."""
        return self.origin + self._state.prefix

    @property
    def prefix(self) -> str:
        return self._state.prefix

    @property
    def storage_dir(self) -> Path | None:
        return self._state.storage_dir

    # ---- knobs ------------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added before every response."""
        return self._state.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._state.latency = float(seconds)

    @property
    def framing(self) -> Framing:
        """How retrieval responses are delimited: "length", "chunked" or "close"."""
        return self._state.framing

    @framing.setter
    def framing(self, value: Framing) -> None:
        _check_choice("framing", value, ("length", "chunked", "close"))
        with self._state.lock:
            self._state.framing = value

    @property
    def duplicate_policy(self) -> DuplicatePolicy:
        """Either "accept" (store again, 200) or "conflict" (fail with 45070)."""
        return self._state.duplicate_policy

    @duplicate_policy.setter
    def duplicate_policy(self, value: DuplicatePolicy) -> None:
        _check_choice("duplicate_policy", value, ("accept", "conflict"))
        with self._state.lock:
            self._state.duplicate_policy = value

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = 1,
        body: bytes = b"",
        *,
        method: str | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        """Answer the next ``n`` requests (of ``method``, if given) with ``status``.

        The request body is read (and recorded) first and nothing is stored.  ``retry_after``
        becomes a Retry-After header: whole seconds as an integer, fractions as a decimal
        such as ``0.05`` (not standard HTTP, but it keeps retry tests fast).
        """
        if n > 0:
            with self._state.lock:
                self._state.fail_rules.append(
                    _FailRule(n, status, retry_after, body, content_type, method)
                )

    @property
    def quirks(self) -> frozenset[str]:
        """Misbehaviours of real servers, for QIDO-RS searches.

        ``"ignore_offset"``: every page is the first one. ``"ignore_study_path"``:
        ``/studies/{study}/instances`` (and ``/series``) answer for every study. For
        retrievals, ``"no_boundary"``: multipart answers leave ``boundary`` out of their
        Content-Type; ``"bare_body_labelled_multipart"``: an instance comes as its bare
        bytes labelled ``multipart/related``.
        """
        with self._state.lock:
            return self._state.quirks

    @quirks.setter
    def quirks(self, value: set[str] | frozenset[str]) -> None:
        known = {
            "ignore_offset",
            "ignore_study_path",
            "no_boundary",
            "bare_body_labelled_multipart",
        }
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown quirks: {sorted(unknown)}")
        with self._state.lock:
            self._state.quirks = frozenset(value)

    def stall_next(self, n: int = 1, *, method: str | None = None) -> None:
        """Read the next ``n`` requests' heads (of ``method``, if given), then send nothing.

        Their bodies stay unread and no answer comes: the client sees a server that
        stopped, and only its read (or write) timeout ends the wait.
        """
        if n > 0:
            with self._state.lock:
                self._state.stalls.append(_DropRule(n, method))

    def random_faults(
        self,
        status_rate: float,
        drop_rate: float = 0.0,
        *,
        status: int = 503,
        retry_after: float | None = 1,
        seed: int = 0,
    ) -> None:
        """Fail requests at random, drawn from a generator seeded with ``seed``.

        Each request is answered ``status`` (with ``Retry-After``) with probability
        ``status_rate``; else a POST has its connection closed after 100-4,000 bytes of
        its body, or a retrieval (WADO-RS GET) its response cut after as many bytes of
        body, with probability ``drop_rate``. ``status_rate=0`` and ``drop_rate=0``
        turn them off. :attr:`fault_counts` says how many of each were drawn.
        """
        with self._state.lock:
            self._state.random_faults = (
                _RandomFaults(random.Random(seed), status_rate, drop_rate, status, retry_after)
                if status_rate or drop_rate
                else None
            )

    @property
    def fault_counts(self) -> dict[str, int]:
        """Random faults drawn so far: ``{"status": n, "drop": m}``."""
        with self._state.lock:
            faults = self._state.random_faults
            return dict(faults.counts) if faults else {"status": 0, "drop": 0}

    def drop_next_response_after(self, n_bytes: int, *, method: str | None = "GET") -> None:
        """Cut the next successful retrieval after ``n_bytes`` of its body.

        The status line and headers go out complete; after ``n_bytes`` of body (decoded
        payload bytes when chunked) the server closes the connection.
        """
        with self._state.lock:
            self._state.response_drops.append(_DropRule(n_bytes, method))

    def drop_next_request_after(self, n_bytes: int, *, method: str | None = None) -> None:
        """Close the next request's connection after reading ``n_bytes`` of its body.

        No response is sent.  A body shorter than ``n_bytes`` is read whole before closing.
        """
        with self._state.lock:
            self._state.request_drops.append(_DropRule(n_bytes, method))

    def fail_instances_next(self, n: int = 1, reason: int = BEING_CREATED) -> None:
        """Refuse the next ``n`` STOW-RS instances with FailureReason ``reason``.

        Parts refused for other reasons (not DICOM, another study) do not count; the refused
        instances are not stored.  The answer is 409 when no instance of the request was
        stored and 202 otherwise, as for any other per-instance failure (Azure answers 45071
        for an instance that another request is still creating).
        """
        if n > 0:
            with self._state.lock:
                self._state.instance_failures.extend([reason] * n)

    def require_auth(self, check: AuthCheck) -> None:
        """Demand an Authorization header; ``None`` turns the check off.

        ``check`` is either the exact header value (``"Bearer abc"``) or a callable taking
        the header value (``None`` when absent) and returning whether it is accepted.  The
        callable runs on the server thread.  Refused requests get 401 with
        ``WWW-Authenticate: Bearer`` and do not consume the fault knobs.
        """
        with self._state.lock:
            self._state.auth = check

    def clear_faults(self) -> None:
        """Forget pending fail_next, fail_instances_next, drop_*, random faults and auth."""
        with self._state.lock:
            self._state.fail_rules.clear()
            self._state.response_drops.clear()
            self._state.request_drops.clear()
            self._state.random_faults = None
            self._state.stalls.clear()
            self._state.instance_failures.clear()
            self._state.auth = None

    # ---- observation ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests seen since the last :meth:`reset_stats`."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of server-side bugs (tests should expect this to stay empty)."""
        with self._state.lock:
            return list(self._state.errors)

    @property
    def max_in_flight(self) -> int:
        """The most requests being handled at the same time since the last reset."""
        return self._state.max_in_flight

    @property
    def in_flight(self) -> int:
        return self._state.in_flight

    @property
    def connections(self) -> int:
        """Connections accepted since start (the ids in :attr:`RequestRecord.connection`)."""
        return self._state.connections

    def reset_stats(self) -> None:
        """Forget recorded requests and errors; restart the in-flight maximum."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.errors.clear()
            self._state.max_in_flight = self._state.in_flight

    # ---- registry ---------------------------------------------------------------------------

    def registry(self) -> dict[str, dict[str, dict[str, StoredInstance]]]:
        """A copy of study -> series -> SOP instance -> :class:`StoredInstance`."""
        with self._state.lock:
            return {
                study: {series: dict(sops) for series, sops in series_map.items()}
                for study, series_map in self._state.studies.items()
            }

    def get_instance(self, sop_uid: str) -> StoredInstance | None:
        with self._state.lock:
            return self._state.by_sop.get(sop_uid)

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[StoredInstance]:
        """Instances of a study (or series) in the order retrieval serves them."""
        return self._state.select(study_uid, series_uid)

    def add_file(self, path: Path | str) -> str:
        """Serve an existing Part 10 file (left in place, never deleted); its SOP UID."""
        file_path = Path(path)
        with open(file_path, "rb") as fh:
            identity = _read_identity(fh.read(_DICOM_PREFIX))
        if identity is None:
            raise ValueError(f"{file_path} is not a DICOM instance with the needed UIDs")
        self._state.register(
            StoredInstance(
                study_uid=identity.study_uid,
                series_uid=identity.series_uid,
                sop_uid=identity.sop_uid,
                sop_class_uid=identity.sop_class_uid,
                transfer_syntax=identity.transfer_syntax,
                size=file_path.stat().st_size,
                path=file_path,
            )
        )
        return identity.sop_uid

    def add_instance_bytes(self, data: bytes) -> str:
        """Serve an instance held in memory; its SOP Instance UID."""
        identity = _read_identity(data[:_DICOM_PREFIX])
        if identity is None:
            raise ValueError("data is not a DICOM instance with the needed UIDs")
        self._state.register(
            StoredInstance(
                study_uid=identity.study_uid,
                series_uid=identity.series_uid,
                sop_uid=identity.sop_uid,
                sop_class_uid=identity.sop_class_uid,
                transfer_syntax=identity.transfer_syntax,
                size=len(data),
                data=bytes(data),
            )
        )
        return identity.sop_uid

    def add_synthetic_study(
        self,
        study_uid: str,
        n_instances: int,
        instance_size: int,
        *,
        series_per_study: int = 1,
    ) -> list[str]:
        """Register generated instances of exactly ``instance_size`` bytes each.

        Nothing is held per instance but its UIDs: the small header is encoded when served
        and the pixel data streams from one shared pattern block.  UIDs are derived from the
        study UID, so the same call gives the same UIDs in every run.  Instances are split
        into ``series_per_study`` contiguous series.  Returns the SOP Instance UIDs in
        retrieval order.
        """
        if n_instances < 0 or series_per_study < 1:
            raise ValueError("need n_instances >= 0 and series_per_study >= 1")
        if instance_size % 2:
            raise ValueError(f"instance size must be even, got {instance_size}")
        series_uids = [
            generate_uid(entropy_srcs=[study_uid, "series", str(j)])
            for j in range(series_per_study)
        ]
        sops: list[str] = []
        with self._state.lock:
            first = self._state.synthetic_counts.get(study_uid, 0) + 1
            self._state.synthetic_counts[study_uid] = first - 1 + n_instances
            for index in range(n_instances):
                number = first + index
                sop = generate_uid(entropy_srcs=[study_uid, "instance", str(number)])
                series = series_uids[index * series_per_study // n_instances]
                header = _instance_header(
                    0,
                    study_uid=study_uid,
                    series_uid=series,
                    sop_uid=sop,
                    sop_class_uid=SECONDARY_CAPTURE,
                    patient_id="LOOPBACK",
                    instance_number=number,
                )
                if len(header) > instance_size:
                    raise ValueError(
                        f"instance size {instance_size} is below the header size {len(header)}"
                    )
                self._state.register(
                    StoredInstance(
                        study_uid=study_uid,
                        series_uid=series,
                        sop_uid=sop,
                        sop_class_uid=SECONDARY_CAPTURE,
                        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
                        size=instance_size,
                        synthetic_number=number,
                    )
                )
                sops.append(sop)
        return sops


# --------------------------------------------------------------------------------------------
# Command line


def _parse_size(text: str) -> int:
    units = {"k": _KIB, "m": _MIB, "g": 1024 * _MIB}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _parse_synthetic(text: str) -> tuple[str, int, int, int]:
    pieces = text.split(":")
    if len(pieces) not in (3, 4):
        raise argparse.ArgumentTypeError("expected STUDY_UID:N:SIZE[:SERIES]")
    try:
        series = int(pieces[3]) if len(pieces) == 4 else 1
        return pieces[0], int(pieces[1]), _parse_size(pieces[2]), series
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.loopback_server",
        description="Serve a fast DICOMweb-like HTTP/1.1 endpoint on 127.0.0.1 until SIGTERM. "
        "Prints 'READY <base url>' on stdout once it accepts connections.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--prefix", default="", help="base path, e.g. /dicom-web")
    parser.add_argument("--storage", type=Path, help="directory for stored instances")
    parser.add_argument(
        "--synthetic",
        type=_parse_synthetic,
        action="append",
        default=[],
        metavar="STUDY_UID:N:SIZE[:SERIES]",
        help="register N generated instances of SIZE bytes (suffixes k, m, g are binary)",
    )
    parser.add_argument(
        "--files",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="serve an existing DICOM file, or every *.dcm below a directory",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before responses")
    parser.add_argument("--framing", choices=["length", "chunked", "close"], default="length")
    parser.add_argument("--duplicate-policy", choices=["accept", "conflict"], default="accept")
    parser.add_argument("--hashing", choices=["all", "parts", "none"], default="all")
    return parser


async def _serve_until_signalled(server: LoopbackServer, port: int) -> None:
    state = server._state
    listener = await _listen(state, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"READY {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await _close(listener, state)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    server = LoopbackServer(
        prefix=args.prefix,
        storage_dir=args.storage,
        framing=args.framing,
        duplicate_policy=args.duplicate_policy,
        latency=args.latency,
        hashing=args.hashing,
    )
    for study_uid, count, size, series in args.synthetic:
        server.add_synthetic_study(study_uid, count, size, series_per_study=series)
    for location in args.files:
        paths = sorted(location.rglob("*.dcm")) if location.is_dir() else [location]
        for path in paths:
            server.add_file(path)
    # The server runs on this thread's loop: a separate process has the GIL to itself.
    asyncio.run(_serve_until_signalled(server, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
