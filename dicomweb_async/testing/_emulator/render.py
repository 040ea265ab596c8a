"""Rendered frames for the emulator: native 8-bit pixel data as JPEG or PNG.

Rendering needs Pillow (imported when first used); without it, or for pixel data it
cannot show directly (compressed, more than 8 bits, palette colour), the emulator answers
406 as the service does for what it cannot render.
"""

from __future__ import annotations

import io
from typing import Any

from ..._core.media import parse_media_type

__all__ = ["RenderError", "choose_image_type", "render"]

_JPEG = "image/jpeg"
_PNG = "image/png"
# What the service's own request collection sends for JPEG.
_ALIASES = {"application/jpeg": _JPEG, "image/jpg": _JPEG}
_MODES = {("MONOCHROME2", 1): "L", ("RGB", 3): "RGB"}


class RenderError(Exception):
    """The frame cannot be rendered as asked (answered with 406)."""


def choose_image_type(accept: str | None) -> str:
    """The image type to answer with: JPEG unless only PNG is acceptable."""
    if not accept:
        return _JPEG
    for choice in accept.split(","):
        mime = parse_media_type(choice).mime
        mime = _ALIASES.get(mime, mime)
        if mime in (_JPEG, _PNG):
            return mime
        if mime in ("*/*", "image/*"):
            return _JPEG
    raise RenderError(f"cannot render as {accept!r}: image/jpeg or image/png only")


def _first(metadata: dict[str, Any], tag: str) -> Any:
    element = metadata.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None


def render(
    frame: bytes,
    metadata: dict[str, Any],
    image_type: str,
    quality: int,
    viewport: tuple[int, int] | None = None,
) -> bytes:
    """Encode one native frame as ``image_type`` (blocking: run it in a worker thread).

    Parameters
    ----------
    frame : bytes
        The frame's pixel data as stored.
    metadata : dict
        The instance's DICOM JSON (image pixel module attributes).
    image_type : str
        ``image/jpeg`` or ``image/png``.
    quality : int
        JPEG quality, 1-100.
    viewport : (int, int), optional
        Largest width and height: the image is scaled down (never up) to fit, keeping
        its aspect ratio.
    """
    try:
        from PIL import Image
    except ImportError:
        raise RenderError("rendering needs Pillow (pip install pillow)") from None
    rows, columns = _first(metadata, "00280010"), _first(metadata, "00280011")
    samples = _first(metadata, "00280002") or 1
    bits = _first(metadata, "00280100")
    photometric = str(_first(metadata, "00280004") or "")
    planar = _first(metadata, "00280006") or 0
    mode = _MODES.get((photometric, samples))
    if not rows or not columns or bits != 8 or mode is None or planar != 0:
        raise RenderError(
            f"rendering {photometric or 'unknown'} pixel data with {bits} bits and "
            f"{samples} samples is not emulated"
        )
    image = Image.frombytes(mode, (int(columns), int(rows)), frame)
    if viewport is not None:
        image.thumbnail(viewport)
    out = io.BytesIO()
    if image_type == _PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
