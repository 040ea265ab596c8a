"""Media types, transfer syntaxes and Accept headers (no I/O).

Real servers put parameters in different places: Orthanc sends the frames' transfer syntax
inside the quoted ``type`` parameter (``type="application/octet-stream;
transfer-syntax=1.2.840.10008.1.2.1"``), others send it as a parameter of the part. The
helpers here read all of these forms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DICOM",
    "DICOM_JSON",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "MULTIPART_RELATED",
    "OCTET_STREAM",
    "MediaType",
    "MediaTypeSpec",
    "accept_header",
    "parse_media_type",
]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

#: A caller's media type request: a bare media type, or ``(media_type, transfer_syntax)``.
MediaTypeSpec = str | tuple[str, str]


@dataclass(frozen=True)
class MediaType:
    """A parsed ``Content-Type`` value.

    Attributes
    ----------
    mime : str
        Lower-cased ``type/subtype``.
    params : dict of str to str
        Parameters with lower-cased names and unquoted values.
    """

    mime: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def boundary(self) -> str | None:
        """The multipart boundary, if any."""
        return self.params.get("boundary")

    @property
    def type_param(self) -> MediaType | None:
        """The ``type`` parameter of a multipart/related value, itself parsed."""
        value = self.params.get("type")
        return parse_media_type(value) if value else None

    @property
    def transfer_syntax(self) -> str | None:
        """The transfer syntax, whether given directly or inside the quoted ``type``."""
        ts = self.params.get("transfer-syntax")
        if ts:
            return ts
        inner = self.type_param
        return inner.params.get("transfer-syntax") if inner else None

    @property
    def is_multipart(self) -> bool:
        """Whether this is a ``multipart/*`` type."""
        return self.mime.startswith("multipart/")


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside double quotes."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        it = iter(inner)
        for ch in it:
            out.append(next(it, "") if ch == "\\" else ch)
        return "".join(out)
    return value


def parse_media_type(value: str) -> MediaType:
    """Parse a ``Content-Type`` header value.

    Parameters
    ----------
    value : str
        e.g. ``multipart/related; type="application/dicom"; boundary=abc``.

    Returns
    -------
    MediaType
        The media type and its parameters; an empty ``mime`` if ``value`` is empty.
    """
    pieces = _split_params(value)
    mime = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, raw = piece.partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = _unquote(raw)
    return MediaType(mime, params)


def _format_one(mime: str, transfer_syntax: str | None, multipart: bool) -> str:
    text = f'multipart/related; type="{mime}"' if multipart else mime
    if transfer_syntax:
        text += f"; transfer-syntax={transfer_syntax}"
    return text


#: What each kind of WADO-RS resource can be asked for (PS3.18 8.7.3, 8.7.4 and 8.7.5),
#: keyed by the kind's default media type.
INSTANCE_MEDIA_TYPES = frozenset({DICOM})
BULK_MEDIA_TYPES = frozenset(
    {
        OCTET_STREAM,
        "image/jpeg",
        "image/jls",
        "image/jp2",
        "image/jpx",
        "image/jxl",
        "image/dicom-rle",
        "video/mpeg",
        "video/mp4",
        "video/h265",
    }
)
RENDERED_MEDIA_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/jp2",
        "image/jxl",
        "video/mpeg",
        "video/mp4",
        "video/h265",
        "text/html",
        "text/plain",
        "text/xml",
        "text/rtf",
        "application/pdf",
        # Not registered, but what the Azure DICOM service's own request collection asks
        # for, and the service answers it.
        "application/jpeg",
    }
)
_ALLOWED_BY_DEFAULT = {
    DICOM: ("instances (study, series, instance)", INSTANCE_MEDIA_TYPES),
    OCTET_STREAM: ("frames and bulk data", BULK_MEDIA_TYPES),
    "image/jpeg": ("rendered resources and thumbnails", RENDERED_MEDIA_TYPES),
}


def check_media_types(media_types: Sequence[MediaTypeSpec] | None, default: MediaTypeSpec) -> None:
    """Refuse, before any request, media types the resource cannot be asked for.

    Raises
    ------
    TypeError
        If ``media_types`` is a string or holds something other than str and (str, str).
    ValueError
        If a media type is not one the kind of resource ``default`` belongs to allows.
    """
    if media_types is None:
        return
    if isinstance(media_types, str | bytes) or not isinstance(media_types, Sequence):
        raise TypeError(
            "media_types must be a sequence of media types or (media type, transfer syntax) "
            f"pairs, not {type(media_types).__name__}: {media_types!r}"
        )
    kind = _ALLOWED_BY_DEFAULT.get(default[0] if isinstance(default, tuple) else default)
    for spec in media_types:
        pair = isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, str) for x in spec)
        if not (isinstance(spec, str) or pair):
            raise TypeError(
                f"each media type is a str or a (media type, transfer syntax) pair, not {spec!r}"
            )
        mime = (spec[0] if isinstance(spec, tuple) else spec).strip().lower()
        if kind is not None and mime not in kind[1]:
            raise ValueError(
                f"{mime!r} cannot be asked for from {kind[0]}; allowed: "
                + ", ".join(sorted(kind[1]))
            )


def accept_header(
    media_types: Sequence[MediaTypeSpec] | None,
    *,
    default: MediaTypeSpec,
    multipart: bool,
) -> str:
    """Build an Accept header value for WADO-RS.

    Parameters
    ----------
    media_types : sequence of str or (str, str), optional
        What the caller asked for; each item is a media type or ``(media type,
        transfer syntax UID)``. ``None`` means ``default``.
    default : str or (str, str)
        Used when ``media_types`` is empty.
    multipart : bool
        Whether the response is requested as ``multipart/related; type=...``.

    Returns
    -------
    str
        Accept header value; several choices are joined with ``, `` in order of preference.

    Raises
    ------
    TypeError, ValueError
        As :func:`check_media_types`, for types the resource cannot be asked for.
    """
    check_media_types(media_types, default)
    specs: Iterable[MediaTypeSpec] = media_types or (default,)
    choices = []
    for spec in specs:
        if isinstance(spec, tuple):
            mime, ts = spec
        else:
            mime, ts = spec, None
        choices.append(_format_one(mime, ts, multipart))
    return ", ".join(choices)
