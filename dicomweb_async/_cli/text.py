"""Text forms shared by the command's progress display and its summaries."""

from __future__ import annotations

__all__ = ["megabytes", "megabytes_per_second", "one_line"]


def megabytes(n: float) -> str:
    """A byte count in decimal megabytes, such as ``12.3 MB``."""
    return f"{n / 1e6:.1f} MB"


def megabytes_per_second(rate: float) -> str:
    """A rate in bytes per second as decimal megabytes per second, such as ``12.3 MB/s``."""
    return f"{rate / 1e6:.1f} MB/s"


def one_line(text: str, limit: int | None = None) -> str:
    """Collapse every run of whitespace (line breaks too) into one space.

    Parameters
    ----------
    text : str
    limit : int, optional
        Longest result; longer text is cut and ends with ``...``.

    Returns
    -------
    str
    """
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
