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
    """
    specs: Iterable[MediaTypeSpec] = media_types or (default,)
    choices = []
    for spec in specs:
        if isinstance(spec, tuple):
            mime, ts = spec
        else:
            mime, ts = spec, None
        choices.append(_format_one(mime, ts, multipart))
    return ", ".join(choices)
