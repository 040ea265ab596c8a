"""Plain-text tables the command prints: search results and transfer summaries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from .. import (
    CopyOutcome,
    CopyReport,
    DownloadOutcome,
    DownloadReport,
    StudyDifference,
    UploadReport,
)
from .text import megabytes, megabytes_per_second, one_line

__all__ = ["SEARCH_COLUMNS", "download_summary", "element_text", "format_table", "upload_summary"]

# Lines of failed or skipped files listed after a bulk transfer; the rest are counted.
MAX_LISTED = 20
# Longest reason shown for one file, so one odd server answer cannot flood the summary.
MAX_REASON = 200

#: The attributes shown per search level in table output (JSON output has them all).
SEARCH_COLUMNS = {
    "studies": [
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
    ],
    "series": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ],
    "instances": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "NumberOfFrames",
    ],
}


# -- search results ---------------------------------------------------------------------------


def element_text(element: Any) -> str:
    """A DICOM JSON element's value as text (multiple values joined with a backslash).

    Parameters
    ----------
    element : Any
        A DICOM JSON element (a dict with ``vr`` and ``Value``); anything else, such as
        a missing element, gives the empty string.

    Returns
    -------
    str
        Person names by their alphabetic form, ``<N item(s)>`` for a sequence and
        ``<bulk data>`` for a value held elsewhere.
    """
    if not isinstance(element, dict):
        return ""
    if "Value" not in element:
        return "<bulk data>" if "BulkDataURI" in element or "InlineBinary" in element else ""
    values = element["Value"]
    if not isinstance(values, list):
        return str(values)
    if element.get("vr") == "SQ":
        return f"<{len(values)} item(s)>"
    texts = []
    for value in values:
        if isinstance(value, dict):  # PN: {"Alphabetic": ..., "Ideographic": ...}
            value = value.get("Alphabetic", next(iter(value.values()), ""))
        texts.append("" if value is None else str(value))
    return "\\".join(texts)


def _tag_of(name: str) -> tuple[str, str] | None:
    """(8-digit hex tag, column title) for a keyword or a hex tag; None if unknown."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = name.upper()
        return tag, keyword_for_tag(int(tag, 16)) or tag
    number = tag_for_keyword(name)
    if number is None:
        return None
    return f"{number:08X}", name


def format_table(results: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """Lines of a plain-text table of DICOM JSON datasets.

    Parameters
    ----------
    results : sequence of dict
        DICOM JSON datasets.
    columns : sequence of str
        Attribute keywords or 8-digit hex tags; unknown names and columns empty in every
        row are left out.

    Returns
    -------
    list of str
        A header line, then one line per dataset.
    """
    resolved = [found for found in (_tag_of(name) for name in columns) if found is not None]
    unique = list(dict.fromkeys(resolved))
    cells = [[element_text(item.get(tag)) for tag, _ in unique] for item in results]
    keep = [i for i in range(len(unique)) if any(row[i] for row in cells)]
    titles = [unique[i][1] for i in keep]
    rows = [[row[i] for i in keep] for row in cells]
    widths = [max([len(title), *(len(row[j]) for row in rows)]) for j, title in enumerate(titles)]
    lines = []
    for row in [titles, *rows]:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return lines


# -- transfer summaries -----------------------------------------------------------------------


def _counts(header: str, rows: Sequence[tuple[str, int, int | None]]) -> list[str]:
    lines = [f"  {'status':<16}{header:>10}{'size':>12}"]
    for name, count, size in rows:
        size_text = "" if size is None else megabytes(size)
        lines.append(f"  {name:<16}{count:>10}{size_text:>12}".rstrip())
    return lines


def _throughput(size: int, verb: str, elapsed: float) -> str:
    rate = size / elapsed if elapsed > 0 else 0.0
    return f"  {megabytes(size)} {verb} in {elapsed:.2f} s ({megabytes_per_second(rate)})"


def _instance_failures(failed: Sequence[DownloadOutcome | CopyOutcome]) -> list[str]:
    """Failed instances named by their three UIDs, a study that failed whole by its UID."""
    items = []
    for o in failed:
        if o.sop_instance_uid:
            what = f"{o.study_instance_uid}/{o.series_instance_uid}/{o.sop_instance_uid}"
        else:
            what = f"study {o.study_instance_uid}"
        items.append((what, o.message or "failed"))
    return _failure_lines("failed", items)


def _failure_lines(title: str, items: Sequence[tuple[str, str]]) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"]
    for what, why in items[:MAX_LISTED]:
        lines.append(f"  {what}: {one_line(why, MAX_REASON)}")
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines


def upload_summary(report: UploadReport) -> list[str]:
    """The summary printed after an upload: a table of counts, then failed and skipped files.

    Parameters
    ----------
    report : UploadReport

    Returns
    -------
    list of str
        The lines to print; at most ``MAX_LISTED`` files are named per list.
    """
    already = report.already_stored
    journal = sum(1 for o in already if o.from_journal)
    lines = ["upload summary"]
    lines += _counts(
        "files",
        [
            ("stored", len(report.stored), report.bytes_stored),
            ("already stored", len(already), sum(o.size for o in already)),
            ("failed", len(report.failed), None),
            ("skipped", len(report.skipped), None),
            ("total", len(report.outcomes), sum(o.size for o in report.outcomes)),
        ],
    )
    if journal:
        lines.append(f"  ({journal} already stored according to the journal)")
    lines.append(_throughput(report.bytes_stored, "sent", report.elapsed))
    lines += _failure_lines(
        "failed", [(str(o.path), o.message or "failed") for o in report.failed]
    )
    lines += _failure_lines(
        "skipped", [(str(o.path), o.message or "skipped") for o in report.skipped]
    )
    return lines


def download_summary(report: DownloadReport) -> list[str]:
    """The summary printed after a download: a table of counts, then what failed.

    Parameters
    ----------
    report : DownloadReport

    Returns
    -------
    list of str
        The lines to print; a failed instance is named by its three UIDs, a study that
        failed as a whole by its UID.
    """
    lines = ["download summary"]
    lines += _counts(
        "instances",
        [
            ("downloaded", len(report.downloaded), report.bytes_downloaded),
            ("already on disk", len(report.skipped), sum(o.size for o in report.skipped)),
            ("failed", len(report.failed), None),
            ("total", len(report.outcomes), sum(o.size for o in report.outcomes)),
        ],
    )
    lines.append(_throughput(report.bytes_downloaded, "received", report.elapsed))
    return lines + _instance_failures(report.failed)


def copy_summary(report: CopyReport) -> list[str]:
    """The summary printed after a copy: a table of counts, conversions, then what failed.

    Parameters
    ----------
    report : CopyReport

    Returns
    -------
    list of str
        The lines to print; a failed instance is named by its three UIDs.
    """
    already = report.already_present
    journal = sum(1 for o in already if o.from_journal)
    lines = ["copy summary"]
    lines += _counts(
        "instances",
        [
            ("copied", len(report.copied), report.bytes_copied),
            ("already present", len(already), None),
            ("failed", len(report.failed), None),
            ("total", len(report.outcomes), None),
        ],
    )
    if journal:
        lines.append(f"  ({journal} already present according to the journal)")
    if report.converted:
        lines.append(
            f"  ({len(report.converted)} converted from implicit to explicit VR little endian)"
        )
    attempts = sum(o.attempts for o in report.outcomes)
    retried = sum(1 for o in report.outcomes if o.attempts > 1)
    if retried:
        lines.append(f"  ({retried} needed more than one request; {attempts} requests in all)")
    lines.append(_throughput(report.bytes_copied, "copied", report.elapsed))
    return lines + _instance_failures(report.failed)


def verify_summary(differences: Sequence[StudyDifference], studies: int) -> list[str]:
    """What ``copy --verify`` prints: each study that differs, or that all match."""
    if not differences:
        what = "the study matches" if studies == 1 else f"all {studies} studies match"
        return [f"verify: {what} (every source instance is at the destination, nothing more)"]
    lines = [f"verify: {len(differences)} of {studies} studies differ"]
    for d in differences[:MAX_LISTED]:
        if d.error:
            lines.append(f"  {d.study_instance_uid}: could not compare: {one_line(d.error)}")
        else:
            lines.append(
                f"  {d.study_instance_uid}: {len(d.missing)} missing at the destination, "
                f"{len(d.extra)} only at the destination"
            )
    if len(differences) > MAX_LISTED:
        lines.append(f"  ... and {len(differences) - MAX_LISTED} more")
    return lines
