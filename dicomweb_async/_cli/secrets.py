"""Masking of credentials in everything the command prints."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["Redactor", "secrets_in_argv"]

_SECRET_OPTIONS = ("--token", "--password")


class Redactor:
    """Replaces known secrets in text meant for a terminal or a log.

    Secrets are added as they become known (from the command line, from environment
    variables, from the URL), and every message, log line and traceback goes through it.

    Parameters
    ----------
    secrets : iterable of str
        Secrets known from the start.
    """

    MASK = "***"
    #: Secrets shorter than this are masked only where they stand alone, so that a short
    #: password does not garble every word that happens to contain it.
    SHORT = 8

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember a secret (empty values are ignored)."""
        if secret and secret not in self._secrets:
            self._secrets.add(secret)
            # Longest first, so a secret that contains another is masked whole.
            alternatives = []
            for item in sorted(self._secrets, key=len, reverse=True):
                escaped = re.escape(item)
                if len(item) < self.SHORT:
                    escaped = rf"(?<![0-9A-Za-z]){escaped}(?![0-9A-Za-z])"
                alternatives.append(escaped)
            self._pattern = re.compile("|".join(alternatives))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self.MASK, text)


def secrets_in_argv(argv: Sequence[str]) -> list[str]:
    """Values of secret options, found before parsing so parse errors can be redacted too.

    Parameters
    ----------
    argv : sequence of str
        The command-line arguments.

    Returns
    -------
    list of str
        The values given to ``--token`` and ``--password``, as ``--token X`` or
        ``--token=X``.
    """
    found: list[str] = []
    for index, arg in enumerate(argv):
        if arg in _SECRET_OPTIONS and index + 1 < len(argv):
            found.append(argv[index + 1])
        for option in _SECRET_OPTIONS:
            if arg.startswith(option + "="):
                found.append(arg[len(option) + 1 :])
    return found
