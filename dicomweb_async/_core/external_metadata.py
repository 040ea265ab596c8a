"""External metadata of the Azure DICOM service (API v2): study attributes sent as headers.

Stored with STOW-RS as ``msdicom-meta-{VR}-{tag}: value`` headers, one attribute each, and
returned in metadata when the request carries ``msdicom-request-meta: true``. The service
takes only private (non-standard) tags, at study level, of the VRs below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REQUEST_META_HEADER", "VRS", "metadata_headers"]

REQUEST_META_HEADER = "msdicom-request-meta"
PREFIX = "msdicom-meta-"
#: The value representations the service takes as external metadata.
VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "FD", "FL", "IS", "LO", "PN", "SH", "SL", "SS", "TM", "UI"}
    | {"UL", "US"}
)
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def metadata_headers(external: Mapping[str, tuple[str, Any]]) -> dict[str, str]:
    """The headers carrying ``{tag: (vr, value)}``, checked before anything is sent.

    Raises
    ------
    ValueError
        For a tag that is not 8 hex digits or is a standard (even-group) attribute, a VR
        the service does not take, or a value that does not fit in one header line.
    """
    headers: dict[str, str] = {}
    for tag, spec in external.items():
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ValueError(f"external metadata tag {tag!r} is not 8 hex digits")
        if int(tag[:4], 16) % 2 == 0:
            raise ValueError(f"external metadata takes private tags only, not {tag}")
        vr, value = spec
        if vr not in VRS:
            raise ValueError(f"external metadata of VR {vr!r} is not taken; VRs: {sorted(VRS)}")
        text = str(value)
        if not text or any(ch in text for ch in "\r\n"):
            raise ValueError(f"external metadata {tag} must be one non-empty line, not {text!r}")
        headers[f"{PREFIX}{vr}-{tag.upper()}"] = text
    return headers
