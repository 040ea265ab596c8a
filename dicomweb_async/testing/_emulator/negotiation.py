"""What a request of the emulator asks for: Accept headers, transfer syntaxes, frames, ETags.

The emulator never transcodes, so negotiation decides between the stored encoding, in one
part or many, and a 406.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..._core.media import DICOM, MULTIPART_RELATED, OCTET_STREAM
from .dicom import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    valid_uid,
)
from .wire import (
    DICOM_JSON,
    HttpError,
    Request,
    accept_ranges,
)

__all__ = [
    "check_json_accept",
    "check_uid",
    "choose",
    "etag_matches",
    "frame_numbers",
    "frame_options",
    "instance_options",
    "rendered_quality",
    "wants_original",
]

_JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
_JSON_TYPES = frozenset({DICOM_JSON, "application/json", "*/*", "application/*"})


def check_uid(uid: str, what: str) -> None:
    """Answer 400 unless ``uid`` is a valid UID."""
    if not valid_uid(uid):
        raise HttpError(400, f"the {what} {uid!r} is not a valid UID")


def check_json_accept(request: Request) -> None:
    accept = request.header("accept")
    if not accept or not accept.strip():
        return
    if not any(media.mime in _JSON_TYPES for media in accept_ranges(accept)):
        raise HttpError(406, f"the Accept header {accept!r} is not supported here")


def rendered_quality(request: Request) -> int:
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


def rendered_viewport(request: Request) -> tuple[int, int] | None:
    """The ``viewport`` query parameter's width and height, if given (PS3.18 8.3.5.1.3).

    ``vw,vh`` or ``vw,vh,sx,sy,sw,sh``; the source rectangle is not emulated.
    """
    values = [v for k, v in parse_qsl(request.query) if k == "viewport"]
    if not values:
        return None
    pieces = values[-1].split(",")
    try:
        numbers = [int(p) for p in pieces]
    except ValueError:
        raise HttpError(400, f"viewport must be numbers, not {values[-1]!r}") from None
    if len(numbers) not in (2, 6) or numbers[0] < 1 or numbers[1] < 1:
        raise HttpError(400, f"viewport is vw,vh or vw,vh,sx,sy,sw,sh, not {values[-1]!r}")
    return numbers[0], numbers[1]


def wants_original(request: Request) -> bool:
    return (request.header("msdicom-request-original") or "").strip().lower() == "true"


def syntax(value: str | None, default: str | None = EXPLICIT_VR_LITTLE_ENDIAN) -> str | None:
    """The transfer syntax asked for; None means "as stored"."""
    if value is None or not value.strip():
        return default
    value = value.strip()
    return None if value == "*" else value


def choose(options: list[tuple[bool, str | None]], stored: set[str], accept: str | None) -> bool:
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


def instance_options(accept: str | None, single_allowed: bool) -> list[tuple[bool, str | None]]:
    if not accept or not accept.strip():
        return [(single_allowed, None)]
    options: list[tuple[bool, str | None]] = []
    for media in accept_ranges(accept):
        if media.mime == MULTIPART_RELATED:
            inner = media.type_param
            if inner is not None and inner.mime not in (DICOM, "*/*", "application/*"):
                continue
            options.append((False, syntax(media.transfer_syntax)))
        elif media.mime == DICOM and single_allowed:
            options.append((True, syntax(media.params.get("transfer-syntax"))))
        elif media.mime in ("*/*", "application/*"):
            options.append((single_allowed, syntax(media.params.get("transfer-syntax"), None)))
    return options


def frame_options(accept: str | None, count: int) -> list[tuple[bool, str | None]]:
    if not accept or not accept.strip():
        return [(False, None)]
    options: list[tuple[bool, str | None]] = []
    for media in accept_ranges(accept):
        if media.mime == MULTIPART_RELATED:
            inner = media.type_param
            mime = inner.mime if inner is not None else OCTET_STREAM
            if mime in (OCTET_STREAM, "*/*", "application/*"):
                options.append((False, syntax(media.transfer_syntax)))
            elif mime == "image/jp2":
                options.append((False, syntax(media.transfer_syntax, _JPEG_2000_LOSSLESS)))
        elif media.mime == OCTET_STREAM and count == 1:
            options.append((True, syntax(media.params.get("transfer-syntax"))))
        elif media.mime == "*/*":
            options.append((False, syntax(media.params.get("transfer-syntax"), None)))
    return options


def frame_numbers(text: str) -> list[int]:
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise HttpError(400, f"frame numbers are 1-based integers, got {piece!r}")
        numbers.append(int(piece))
    return numbers


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates
