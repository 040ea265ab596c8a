"""What real DICOMweb servers accept, named, so a client can be set up for one in a word.

Servers differ in ways a client must know before it sends: whether ``type=`` in a multipart
Accept header is quoted, whether single-part STOW is taken, the largest QIDO-RS page and
request, whether implicit VR, ``includefield``, fuzzy matching, DELETE, upsert and thumbnails
exist. A capability is True (supported), False (known not to be: the client refuses before
sending, saying why) or None (not known: the request is sent and the server answers).

Sources of each value (collected 2026-12; a server's newer release may differ):

* ``azure``: the Azure DICOM service conformance statement, API v2 (learn.microsoft.com,
  azure/healthcare-apis/dicom/dicom-services-conformance-statement-v2): single-part
  ``application/dicom`` STOW; at most 4 GB per request; QIDO-RS ``limit`` at most 200;
  only explicit VR transfer syntaxes; ``includefield`` and fuzzy matching; DELETE; upsert
  by PUT (April 2024); no thumbnail resources.
* ``orthanc``: the Orthanc DICOMweb plugin as run in this project's tests
  (``orthanc-notes``): single-part STOW answers 415; ``fuzzymatching`` is ignored; DELETE
  answers 405; PUT answers 405.
* ``google``: the Cloud Healthcare API DICOM conformance statement: no thumbnails; upsert
  by PUT is in beta, so it is left unknown.
* ``aws-healthimaging``: the HealthImaging developer guide (dicomweb-storing.html): STOW-RS
  takes at most 1 GB per request.
* ``dcm4chee``: dcm4chee-arc follows PS3.18 here; nothing it is known to refuse.
* ``generic``: nothing assumed.

OHIF's per-server data-source flags (``omitQuotationForMultipartRequest`` and others) exist
for the same reason; no profile here unquotes ``type=``, but the knob is there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["PROFILES", "ServerProfile", "resolve_profile"]

GB = 1000**3


@dataclass(frozen=True)
class ServerProfile:
    """What one kind of DICOMweb server accepts.

    Attributes
    ----------
    name : str
    quote_multipart_type : bool
        Write ``type="application/dicom"`` (quoted, as PS3.18 shows) in multipart Accept
        headers; False writes ``type=application/dicom`` for servers that want that.
    max_page_size : int or None
        The largest QIDO-RS ``limit`` the server takes; pages are capped to it.
    max_request_bytes : int or None
        The largest STOW-RS request; a larger ``max_request_bytes`` is refused.
    single_part_stow, implicit_vr, includefield, fuzzy_matching, delete, upsert, thumbnails
        True, False or None (unknown): single-part ``application/dicom`` STOW, implicit VR
        little endian instances, ``includefield`` in searches, ``fuzzymatching=true``,
        DICOMweb DELETE, PUT (upsert), and the thumbnail resources.
    """

    name: str
    quote_multipart_type: bool = True
    max_page_size: int | None = None
    max_request_bytes: int | None = None
    single_part_stow: bool | None = None
    implicit_vr: bool | None = None
    includefield: bool | None = None
    fuzzy_matching: bool | None = None
    delete: bool | None = None
    upsert: bool | None = None
    thumbnails: bool | None = None

    def with_changes(self, **changes: Any) -> ServerProfile:
        """This profile with some knobs set otherwise (each stays overridable)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown profile settings: {', '.join(unknown)}")
        return replace(self, **changes)

    def refuse(self, capability: str, what: str) -> None:
        """Raise ``ValueError`` if the profile knows ``capability`` is not supported.

        Parameters
        ----------
        capability : str
            The attribute, e.g. ``"delete"``.
        what : str
            What was asked for, for the message.
        """
        if getattr(self, capability) is False:
            raise ValueError(
                f"{what}: the {self.name!r} server profile says the server does not support "
                f"it; if yours does, create the client with "
                f"profile=PROFILES[{self.name!r}].with_changes({capability}=True)"
            )


PROFILES: dict[str, ServerProfile] = {
    "generic": ServerProfile("generic"),
    "azure": ServerProfile(
        "azure",
        max_page_size=200,
        max_request_bytes=4 * GB,
        single_part_stow=True,
        implicit_vr=False,
        includefield=True,
        fuzzy_matching=True,
        delete=True,
        upsert=True,
        thumbnails=False,
    ),
    "orthanc": ServerProfile(
        "orthanc",
        single_part_stow=False,
        fuzzy_matching=False,
        delete=False,
        upsert=False,
    ),
    "dcm4chee": ServerProfile("dcm4chee"),
    "google": ServerProfile("google", thumbnails=False),
    "aws-healthimaging": ServerProfile("aws-healthimaging", max_request_bytes=1 * GB),
}


def resolve_profile(profile: str | ServerProfile | None) -> ServerProfile:
    """The profile named (or given); ``generic`` for None.

    Raises
    ------
    ValueError
        If ``profile`` names no known profile.
    """
    if profile is None:
        return PROFILES["generic"]
    if isinstance(profile, ServerProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown server profile {profile!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None
