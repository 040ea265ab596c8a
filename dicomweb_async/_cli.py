"""The ``dicomweb-async`` command: upload, download, search, retrieve and delete from a shell.

Run ``dicomweb-async --help`` (or ``python -m dicomweb_async --help``). Only the standard
library is used on top of the package's own dependencies, so the command needs no extra.

Exit codes: 0 when everything succeeded, 1 when anything failed (a file, an instance, or
the whole command, reported on one ``error:`` line), 2 for usage errors, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import io
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO
from urllib.parse import urlsplit

import anyio
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from ._bulk_download import DownloadReport
from ._bulk_upload import UploadReport
from ._client import AsyncDICOMwebClient, AuthLike
from ._exceptions import DICOMwebError
from ._progress import Progress

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

PROG = "dicomweb-async"
URL_ENV = "DICOMWEB_URL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Lines of failed or skipped files listed after a bulk transfer; the rest are counted.
MAX_LISTED = 20
# Longest reason shown for one file, so one odd server answer cannot flood the summary.
MAX_REASON = 200
# The client's own pool default; raised when more transfers should run at once.
DEFAULT_MAX_CONNECTIONS = 16

logger = logging.getLogger("dicomweb_async.cli")

_FRAME_EXTENSIONS = {
    "application/octet-stream": ".raw",
    "image/jpeg": ".jpg",
    "image/jls": ".jls",
    "image/jp2": ".jp2",
    "image/jpx": ".jpx",
    "image/jxl": ".jxl",
    "image/dicom-rle": ".rle",
    "image/png": ".png",
    "image/gif": ".gif",
    "video/mpeg": ".mpg",
    "video/mp4": ".mp4",
    "video/H265": ".mp4",
}

# The attributes shown per search level in table output (JSON output has them all).
_TABLE_COLUMNS = {
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


# -- small parsers ----------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?)?b?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a byte count such as ``500k``, ``100m``, ``4g`` or ``64MiB``.

    Parameters
    ----------
    text : str
        A number with an optional suffix: ``k``, ``m``, ``g``, ``t`` are powers of 1000
        (as in the 4 GB limit of some servers), ``ki``, ``mi``, ``gi``, ``ti`` powers of
        1024; a trailing ``b`` and any letter case are accepted.

    Returns
    -------
    int
        The number of bytes (fractions are rounded down).

    Raises
    ------
    ValueError
        If ``text`` is not a size or is not positive.
    """
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 500k, 100m, 4g, 64MiB)")
    number, unit, binary = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
        raise ValueError(f"not a size: {text!r}") from None
    if unit:
        value *= (1024 if binary else 1000) ** ("kmgt".index(unit.lower()) + 1)
    size = int(value)
    if size < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return size


def parse_frames(text: str) -> list[int]:
    """Parse frame numbers such as ``1,2,5-7`` (1-based, in the given order).

    Raises
    ------
    ValueError
        If a number is not a positive integer or a range runs backwards.
    """
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"not a frame number or range: {item!r} (example: 1,2,5-7)")
        first, last = int(low), int(high) if dash else int(low)
        if first < 1 or last < first:
            raise ValueError(f"frame numbers start at 1 and ranges ascend: {item!r}")
        numbers.extend(n for n in range(first, last + 1) if n not in numbers)
    return numbers


def parse_filters(items: Iterable[str]) -> dict[str, str | list[str]]:
    """Turn ``KEY=VALUE`` items into QIDO-RS search filters.

    A key given more than once matches any of its values (sent as ``a,b``).

    Raises
    ------
    ValueError
        If an item has no ``=`` or an empty key.
    """
    filters: dict[str, str | list[str]] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r} (example: PatientID=ID1)")
        previous = filters.get(key)
        if previous is None:
            filters[key] = value
        else:
            filters[key] = [*([previous] if isinstance(previous, str) else previous), value]
    return filters


def _argtype(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1: {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative: {text}")
    return value


# -- secrets ----------------------------------------------------------------------------------

_SECRET_OPTIONS = ("--token", "--password")


class Redactor:
    """Replaces known secrets in text meant for a terminal or a log.

    Secrets are added as they become known (from the command line, from environment
    variables, from the URL), and every message, log line and traceback goes through it.
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


def _secrets_in_argv(argv: Sequence[str]) -> list[str]:
    """Values of secret options, found before parsing so parse errors can be redacted too."""
    found: list[str] = []
    for index, arg in enumerate(argv):
        if arg in _SECRET_OPTIONS and index + 1 < len(argv):
            found.append(argv[index + 1])
        for option in _SECRET_OPTIONS:
            if arg.startswith(option + "="):
                found.append(arg[len(option) + 1 :])
    return found


# -- terminal output --------------------------------------------------------------------------


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class Console:
    """Progress display and messages on one stream (standard error).

    On a terminal the progress is a bar redrawn in place with ``\\r``; otherwise it is a
    plain line at most every ``interval`` seconds (and always the last one), which suits
    log files and CI output. Messages and log records clear the bar before they print.

    Parameters
    ----------
    stream : text stream
    redact : callable
        Applied to every message.
    show_progress : bool
        False draws nothing for progress events (``--quiet``).
    tty : bool, optional
        Whether ``stream`` is a terminal (detected when not given).
    interval : float
        Seconds between plain progress lines.
    clock : callable
        Monotonic time source.
    """

    def __init__(
        self,
        stream: TextIO,
        redact: Callable[[str], str] = lambda text: text,
        *,
        show_progress: bool = True,
        tty: bool | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.redact = redact
        self.show_progress = show_progress
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval
        self.clock = clock
        self._last_plain = float("-inf")
        self._bar = ""  # what is drawn on the current line, if anything
        # Log records can arrive from worker threads while the event loop draws progress.
        self._lock = threading.RLock()

    # -- messages ---------------------------------------------------------------------

    def message(self, text: str) -> None:
        """Print a line, keeping the progress bar below it."""
        with self._lock:
            bar = self._bar
            self._erase()
            self.stream.write(self.redact(text) + "\n")
            if bar:
                self._draw(bar)
            self.stream.flush()

    def error(self, text: str) -> None:
        """Print ``error: text`` on one line."""
        self.close()
        self.message(f"error: {_one_line(text)}")

    def close(self) -> None:
        """End a bar left on the current line, so what follows starts on a fresh one."""
        with self._lock:
            if self._bar:
                self.stream.write("\n")
                self.stream.flush()
                self._bar = ""

    # -- progress ---------------------------------------------------------------------

    def progress(self, event: Progress) -> None:
        """Receive a :class:`Progress` event (the ``progress`` callback of bulk methods)."""
        if not self.show_progress:
            return
        with self._lock:
            if self.tty:
                self._draw(self._bar_line(event, self._width()))
                if event.final:
                    self.close()
                return
            now = self.clock()
            if event.final or now - self._last_plain >= self.interval:
                self._last_plain = now
                self.stream.write(self.plain_line(event) + "\n")
                self.stream.flush()

    @staticmethod
    def _unit(event: Progress) -> str:
        return "files" if event.operation == "upload" else "instances"

    @classmethod
    def plain_line(cls, event: Progress) -> str:
        """One progress line for logs: counts, megabytes, rate and time."""
        total = "?" if event.total is None else str(event.total)
        return (
            f"{event.operation}: {event.finished}/{total} {cls._unit(event)} "
            f"({event.done} ok, {event.failed} failed, {event.skipped} skipped), "
            f"{_megabytes(event.bytes_done)}, {event.rate / 1e6:.1f} MB/s, "
            f"{event.elapsed:.1f} s"
        )

    @classmethod
    def _bar_line(cls, event: Progress, width: int) -> str:
        total = "?" if event.total is None else str(event.total)
        counts = f"{event.finished}/{total} {cls._unit(event)}"
        details = (
            f"{event.done} ok  {event.failed} failed  {event.skipped} skipped  "
            f"{_megabytes(event.bytes_done)}  {event.rate / 1e6:.1f} MB/s  "
            f"{_clock(event.elapsed)}"
        )
        text = f"{counts}  {details}"
        room = width - len(event.operation) - len(text) - 5
        if room >= 5:
            cells = min(room, 25)
            if event.total:
                filled = min(cells, cells * event.finished // event.total)
                bar = "#" * filled + "-" * (cells - filled)
            else:
                # Unknown total: a marker that moves as inputs finish.
                spot = event.finished % cells
                bar = "-" * spot + "#" + "-" * (cells - spot - 1)
            text = f"[{bar}] {text}"
        return f"{event.operation} {text}"[: max(width - 1, 1)]

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            columns = 0
        if columns <= 0:
            env = os.environ.get("COLUMNS", "")
            columns = int(env) if env.isdigit() else 80
        return columns

    def _draw(self, line: str) -> None:
        pad = max(len(self._bar) - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._bar = line

    def _erase(self) -> None:
        if self._bar:
            self.stream.write("\r" + " " * len(self._bar) + "\r")
            self._bar = ""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _ConsoleHandler(logging.Handler):
    """Sends log records through the console, so they neither break nor leak anything."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record))
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def _logging_to(console: Console, verbose: bool) -> Iterator[None]:
    """Route the package's log records (and, with ``verbose``, warnings) to the console."""
    level = logging.DEBUG if verbose else logging.ERROR
    targets = [logging.getLogger("dicomweb_async")]
    if verbose:
        # One line per HTTP request (method, URL, status); httpx never logs header values.
        targets += [logging.getLogger("httpx"), logging.getLogger("py.warnings")]
    handler = _ConsoleHandler(console, level)
    saved = [(log, log.level, log.propagate) for log in targets]
    for log in targets:
        log.addHandler(handler)
        log.setLevel(logging.INFO if log.name == "httpx" else level)
        # Without a handler of ours, Python's last-resort handler would print the library's
        # retry warnings bare, which would break the one-line error contract.
        log.propagate = False
    with warnings.catch_warnings():
        if verbose:
            logging.captureWarnings(True)
        else:
            # Files that fail are reported in the summary with their reason; pydicom's
            # warnings about the same damaged headers would only clutter the output.
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.captureWarnings(False)
            for log, old_level, old_propagate in saved:
                log.removeHandler(handler)
                log.setLevel(old_level)
                log.propagate = old_propagate


# -- argument parsing -------------------------------------------------------------------------

_EPILOG = f"""\
The service URL comes from --url or the {URL_ENV} environment variable. Prefer
--token-env and --password-env to --token and --password: command lines are visible
to other users of the machine.

exit codes: 0 success, 1 something failed, 2 usage error, 130 interrupted (Ctrl-C)
"""


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subcommands repeat these with SUPPRESS defaults so that `upload DIR --url U` works
    # too, without an option given before the command being reset by the subcommand.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url", default=default(None), help=f"DICOMweb service root (or set {URL_ENV})"
    )
    group.add_argument("--token", default=default(None), help="bearer token")
    group.add_argument(
        "--token-env", metavar="VAR", default=default(None), help="read the bearer token from VAR"
    )
    group.add_argument("--user", default=default(None), help="user name for Basic auth")
    group.add_argument("--password", default=default(None), help="password for Basic auth")
    group.add_argument(
        "--password-env", metavar="VAR", default=default(None), help="read the password from VAR"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="debug logging and full tracebacks on errors",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress output"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (commands ``upload``, ``download``, ``search``,
    ``retrieve`` and ``delete``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Streaming DICOMweb client: upload, download, search, retrieve, delete.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_connection_options(parser, suppress=False)
    shared = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_connection_options(shared, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[shared],
            help=summary,
            description=summary,
            allow_abbrev=False,
            **kwargs,
        )

    size = _argtype(parse_size, "size")
    positive = _argtype(_positive_int, "positive integer")

    upload = command("upload", "Upload DICOM files and folders (recursively), STOW-RS.")
    upload.add_argument("sources", nargs="+", metavar="FOLDER_OR_FILE")
    upload.add_argument(
        "--concurrency", type=positive, default=8, metavar="N", help="requests in flight (8)"
    )
    upload.add_argument(
        "--max-request-bytes",
        type=size,
        metavar="SIZE",
        help="group instances of a study into requests up to SIZE (e.g. 100m, 4g; "
        "k/m/g are powers of 1000, ki/mi/gi of 1024); default: one instance per request",
    )
    upload.add_argument(
        "--journal",
        metavar="FILE",
        help="record confirmed instances in FILE; a re-run with it skips them",
    )

    download = command("download", "Download studies to DIR/<study>/<series>/<sop>.dcm, WADO-RS.")
    download.add_argument("studies", nargs="*", metavar="STUDY_UID")
    download.add_argument("--out", required=True, metavar="DIR", help="download directory")
    download.add_argument(
        "--concurrency", type=positive, default=4, metavar="N", help="requests in flight (4)"
    )
    download.add_argument(
        "--no-skip-existing",
        dest="skip_existing",
        action="store_false",
        help="fetch instances again even when their file is already complete",
    )
    download.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also download the studies a search with these filters finds (repeatable)",
    )

    search = command("search", "Search (QIDO-RS); print a table or DICOM JSON.")
    search.add_argument("level", choices=("studies", "series", "instances"))
    search.add_argument("--study", metavar="UID", help="within this study")
    search.add_argument("--series", metavar="UID", help="within this series")
    search.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="match attribute KEY (keyword or tag), e.g. PatientName=Smith* (repeatable)",
    )
    search.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME",
        help="also return this attribute (includefield; 'all' for every one; repeatable)",
    )
    search.add_argument("--limit", type=positive, metavar="N", help="at most N results")
    search.add_argument(
        "--offset", type=_argtype(_non_negative_int, "integer"), metavar="N", help="skip N"
    )
    search.add_argument("--all", action="store_true", help="fetch every page of results")
    search.add_argument("--json", action="store_true", help="print the DICOM JSON array")

    retrieve = command("retrieve", "Retrieve metadata, an instance or frames (WADO-RS).")
    what = retrieve.add_subparsers(dest="what", metavar="WHAT", required=True)

    def retrieve_command(name: str, summary: str) -> argparse.ArgumentParser:
        return what.add_parser(
            name, parents=[shared], help=summary, description=summary, allow_abbrev=False
        )

    metadata = retrieve_command("metadata", "Print the metadata (DICOM JSON) of a resource.")
    metadata.add_argument("study", metavar="STUDY")
    metadata.add_argument("series", nargs="?", metavar="SERIES")
    metadata.add_argument("sop", nargs="?", metavar="SOP")

    instance = retrieve_command("instance", "Save one instance as a DICOM file.")
    instance.add_argument("study", metavar="STUDY")
    instance.add_argument("series", metavar="SERIES")
    instance.add_argument("sop", metavar="SOP")
    instance.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="file to write (a folder gets <SOP>.dcm inside; '-' writes to standard output)",
    )

    frames = retrieve_command("frames", "Save frames of an instance, one file per frame.")
    frames.add_argument("study", metavar="STUDY")
    frames.add_argument("series", metavar="SERIES")
    frames.add_argument("sop", metavar="SOP")
    frames.add_argument(
        "--frames",
        required=True,
        type=_argtype(parse_frames, "frame list"),
        metavar="LIST",
        help="1-based frame numbers, e.g. 1,2,5-7",
    )
    frames.add_argument(
        "--out", required=True, metavar="DIR", help="folder for frame-<N>.<ext> files"
    )

    delete = command("delete", "Delete a study, series or instance.")
    delete.add_argument("study", metavar="STUDY")
    delete.add_argument("series", nargs="?", metavar="SERIES")
    delete.add_argument("sop", nargs="?", metavar="SOP")
    return parser


class _Settings:
    """The connection, resolved from options and the environment.

    ``ask_password_for`` names the user whose password is still to be typed in.
    """

    def __init__(
        self, url: str, auth: AuthLike, auth_kind: str, ask_password_for: str | None = None
    ) -> None:
        self.url = url
        self.auth = auth
        self.auth_kind = auth_kind
        self.ask_password_for = ask_password_for

    def ask_password(self, redact: Redactor) -> None:
        """Prompt on the terminal for a password that no option gave."""
        user = self.ask_password_for
        if user is None:
            return
        password = getpass.getpass(f"password for {user}: ")
        self.auth = _basic(user, password, redact)
        self.ask_password_for = None


def _basic(user: str, password: str, redact: Redactor) -> tuple[str, str]:
    redact.add(password)
    # What goes over the wire in the Authorization header, should anything echo it.
    redact.add(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
    return user, password


def _resolve(
    args: argparse.Namespace, parser: argparse.ArgumentParser, redact: Redactor
) -> _Settings:
    """Check what argparse cannot and find the URL and credentials (``parser.error`` exits)."""
    url = args.url or os.environ.get(URL_ENV, "")
    if not url:
        parser.error(f"the service URL is required: give --url or set {URL_ENV}")
    parts = urlsplit(url)
    redact.add(parts.password)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--url must be an http:// or https:// URL, not {url!r}")

    token = args.token
    if args.token_env:
        if token:
            parser.error("give either --token or --token-env, not both")
        token = os.environ.get(args.token_env, "")
        if not token:
            parser.error(f"environment variable {args.token_env} (--token-env) is not set")
    password = args.password
    if args.password_env:
        if password is not None:
            parser.error("give either --password or --password-env, not both")
        password = os.environ.get(args.password_env)
        if password is None:
            parser.error(f"environment variable {args.password_env} (--password-env) is not set")
    if token and args.user:
        parser.error("give either a bearer token or --user, not both")
    if password is not None and not args.user:
        parser.error("--password and --password-env need --user")
    redact.add(token)
    if token:
        return _Settings(url, token, "bearer token")
    if args.user:
        kind = f"basic auth as {args.user}"
        if password is None:
            if not sys.stdin.isatty():
                parser.error("--user needs --password-env VAR (or --password)")
            return _Settings(url, None, kind, ask_password_for=args.user)
        return _Settings(url, _basic(args.user, password, redact), kind)
    return _Settings(url, None, "none")


def _check_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Combinations argparse cannot express."""
    if args.command == "download":
        if not args.studies and not args.filter:
            parser.error("download: give STUDY_UID arguments, --filter KEY=VALUE, or both")
        try:
            args.filters = parse_filters(args.filter)
        except ValueError as exc:
            parser.error(f"download: {exc}")
    elif args.command == "search":
        if args.level == "studies" and args.series:
            parser.error("search studies: --series does not apply")
        try:
            args.filters = parse_filters(args.filter)
        except ValueError as exc:
            parser.error(f"search: {exc}")


# -- commands ---------------------------------------------------------------------------------


def _element_text(element: Any) -> str:
    """A DICOM JSON element's value as text (multiple values joined with a backslash)."""
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
    cells = [[_element_text(item.get(tag)) for tag, _ in unique] for item in results]
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


def _failure_lines(title: str, items: Sequence[tuple[str, str]]) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"]
    for what, why in items[:MAX_LISTED]:
        lines.append(f"  {what}: {_one_line(why, MAX_REASON)}")
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines


def _rows(header: str, rows: Sequence[tuple[str, int, int | None]]) -> list[str]:
    lines = [f"  {'status':<16}{header:>10}{'size':>12}"]
    for name, count, size in rows:
        size_text = "" if size is None else _megabytes(size)
        lines.append(f"  {name:<16}{count:>10}{size_text:>12}".rstrip())
    return lines


def upload_summary(report: UploadReport) -> list[str]:
    """The summary printed after an upload: a table of counts, then failed and skipped files."""
    rate = report.bytes_stored / report.elapsed / 1e6 if report.elapsed > 0 else 0.0
    already = report.already_stored
    journal = sum(1 for o in already if o.from_journal)
    lines = ["upload summary"]
    lines += _rows(
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
    lines.append(
        f"  {_megabytes(report.bytes_stored)} sent in {report.elapsed:.2f} s ({rate:.1f} MB/s)"
    )
    lines += _failure_lines(
        "failed", [(str(o.path), o.message or "failed") for o in report.failed]
    )
    lines += _failure_lines(
        "skipped", [(str(o.path), o.message or "skipped") for o in report.skipped]
    )
    return lines


def download_summary(report: DownloadReport) -> list[str]:
    """The summary printed after a download: a table of counts, then what failed."""
    rate = report.bytes_downloaded / report.elapsed / 1e6 if report.elapsed > 0 else 0.0
    lines = ["download summary"]
    lines += _rows(
        "instances",
        [
            ("downloaded", len(report.downloaded), report.bytes_downloaded),
            ("already on disk", len(report.skipped), sum(o.size for o in report.skipped)),
            ("failed", len(report.failed), None),
            ("total", len(report.outcomes), sum(o.size for o in report.outcomes)),
        ],
    )
    lines.append(
        f"  {_megabytes(report.bytes_downloaded)} received in {report.elapsed:.2f} s "
        f"({rate:.1f} MB/s)"
    )
    failed = []
    for o in report.failed:
        if o.sop_instance_uid:
            what = f"{o.study_instance_uid}/{o.series_instance_uid}/{o.sop_instance_uid}"
        else:
            what = f"study {o.study_instance_uid}"
        failed.append((what, o.message or "failed"))
    return lines + _failure_lines("failed", failed)


class _Context:
    """What every command needs: the parsed arguments, the client and the outputs."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: AsyncDICOMwebClient,
        console: Console,
        out: TextIO,
    ) -> None:
        self.args = args
        self.client = client
        self.console = console
        self.out = out

    def print(self, line: str = "") -> None:
        self.console.close()
        self.out.write(line + "\n")
        self.out.flush()


async def _upload(ctx: _Context) -> int:
    args = ctx.args
    report = await ctx.client.store_folder(
        args.sources,
        concurrency=args.concurrency,
        max_request_bytes=args.max_request_bytes,
        journal=args.journal,
        progress=ctx.console.progress,
    )
    for line in upload_summary(report):
        ctx.print(ctx.console.redact(line))
    return EXIT_OK if report.ok else EXIT_FAILED


async def _download(ctx: _Context) -> int:
    args = ctx.args
    studies = list(dict.fromkeys(args.studies))
    if args.filters:
        found = await ctx.client.search_for_studies(
            search_filters=args.filters, get_remaining=True
        )
        matched = [_element_text(item.get("0020000D")) for item in found]
        matched = [uid for uid in matched if uid]
        found_text = "1 study matches" if len(matched) == 1 else f"{len(matched)} studies match"
        ctx.console.message(f"{found_text} the filters")
        studies = list(dict.fromkeys([*studies, *matched]))
        if not studies:
            return EXIT_OK
    report = await ctx.client.download_studies(
        studies,
        args.out,
        concurrency=args.concurrency,
        skip_existing=args.skip_existing,
        progress=ctx.console.progress,
    )
    for line in download_summary(report):
        ctx.print(ctx.console.redact(line))
    return EXIT_OK if report.ok else EXIT_FAILED


async def _search(ctx: _Context) -> int:
    args = ctx.args
    filters: dict[str, Any] = dict(args.filters)
    study, series = args.study, args.series
    # A UID of the searched level itself is a filter, not part of the route.
    if args.level == "studies" and study:
        filters["StudyInstanceUID"], study = study, None
    if args.level == "series" and series:
        filters["SeriesInstanceUID"], series = series, None
    if args.level == "instances" and series and not study:
        filters["SeriesInstanceUID"], series = series, None
    common: dict[str, Any] = {
        "limit": args.limit,
        "offset": args.offset,
        "fields": args.field or None,
        "search_filters": filters or None,
        "get_remaining": args.all,
    }
    if args.level == "studies":
        results = await ctx.client.search_for_studies(**common)
    elif args.level == "series":
        results = await ctx.client.search_for_series(study, **common)
    else:
        results = await ctx.client.search_for_instances(study, series, **common)
    if args.json:
        ctx.print(json.dumps(results, indent=2))
        return EXIT_OK
    if not results:
        ctx.console.message("no matches")
        return EXIT_OK
    columns = list(_TABLE_COLUMNS[args.level])
    # A column that the route fixes to one value carries no information.
    if args.study and args.level != "studies":
        columns.remove("StudyInstanceUID")
    if args.series and args.level == "instances":
        columns.remove("SeriesInstanceUID")
    columns += [name for name in args.field if name.lower() != "all"]
    for line in format_table(results, columns):
        ctx.print(line)
    return EXIT_OK


async def _retrieve_metadata(ctx: _Context) -> int:
    args = ctx.args
    result: list[dict[str, Any]]
    if args.sop:
        result = [await ctx.client.retrieve_instance_metadata(args.study, args.series, args.sop)]
    elif args.series:
        result = await ctx.client.retrieve_series_metadata(args.study, args.series)
    else:
        result = await ctx.client.retrieve_study_metadata(args.study)
    ctx.print(json.dumps(result, indent=2))
    return EXIT_OK


async def _retrieve_instance(ctx: _Context) -> int:
    args = ctx.args
    to_stdout = args.out == "-"
    target = anyio.Path(args.out)
    if not to_stdout and await target.is_dir():
        target = target / f"{args.sop}.dcm"
    partial = target.with_name(f".{target.name}.partial")
    size: int | None = None
    async with ctx.client.stream_instance(args.study, args.series, args.sop) as parts:
        async for part in parts:
            if size is not None:
                continue  # an instance route answers with one part; extra ones are skipped
            size = 0
            if to_stdout:
                sink = sys.stdout.buffer
                async for chunk in part.aiter_bytes():
                    sink.write(chunk)
                    size += len(chunk)
                sink.flush()
                continue
            try:
                # Written under a temporary name and renamed once complete, so a broken
                # download never leaves a file that looks whole.
                async with await anyio.open_file(partial, "wb") as fh:
                    async for chunk in part.aiter_bytes():
                        await fh.write(chunk)
                        size += len(chunk)
                await partial.replace(target)
            finally:
                await partial.unlink(missing_ok=True)
    if size is None:
        raise DICOMwebError(f"the server's answer contained no instance {args.sop}")
    if not to_stdout:
        ctx.print(f"{target}  {size} bytes")
    return EXIT_OK


async def _retrieve_frames(ctx: _Context) -> int:
    args = ctx.args
    folder = anyio.Path(args.out)
    await folder.mkdir(parents=True, exist_ok=True)
    numbers: list[int] = args.frames
    count = 0
    async with ctx.client.iter_instance_frames(
        args.study, args.series, args.sop, numbers
    ) as frames:
        async for frame in frames:
            # Servers answer in the requested order; extra parts get positional numbers.
            number = numbers[count] if count < len(numbers) else count + 1
            count += 1
            extension = _FRAME_EXTENSIONS.get(frame.media_type, ".bin")
            path = folder / f"frame-{number}{extension}"
            await path.write_bytes(frame)
            syntax = f" {frame.transfer_syntax}" if frame.transfer_syntax else ""
            ctx.print(f"{path}  {len(frame)} bytes  {frame.media_type}{syntax}")
    if count != len(numbers):
        raise DICOMwebError(f"asked for {len(numbers)} frame(s), the server sent {count}")
    return EXIT_OK


async def _delete(ctx: _Context) -> int:
    args = ctx.args
    if args.sop:
        await ctx.client.delete_instance(args.study, args.series, args.sop)
        what = f"instance {args.sop}"
    elif args.series:
        await ctx.client.delete_series(args.study, args.series)
        what = f"series {args.series}"
    else:
        await ctx.client.delete_study(args.study)
        what = f"study {args.study}"
    ctx.print(f"deleted {what}")
    return EXIT_OK


async def _run(
    args: argparse.Namespace, settings: _Settings, console: Console, out: TextIO
) -> int:
    concurrency = getattr(args, "concurrency", 1)
    logger.debug(
        "command %s, service %s, auth %s, concurrency %d",
        args.command,
        settings.url,
        settings.auth_kind,
        concurrency,
    )
    async with AsyncDICOMwebClient(
        settings.url,
        auth=settings.auth,
        max_connections=max(DEFAULT_MAX_CONNECTIONS, concurrency),
    ) as client:
        ctx = _Context(args, client, console, out)
        if args.command == "upload":
            return await _upload(ctx)
        if args.command == "download":
            return await _download(ctx)
        if args.command == "search":
            return await _search(ctx)
        if args.command == "delete":
            return await _delete(ctx)
        if args.what == "metadata":
            return await _retrieve_metadata(ctx)
        if args.what == "instance":
            return await _retrieve_instance(ctx)
        return await _retrieve_frames(ctx)


# -- entry point ------------------------------------------------------------------------------

_EXPECTED = (DICOMwebError, OSError, ValueError)


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of a single member."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dicomweb-async`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 when everything succeeded, 1 when anything failed, 2 for a
        usage error, 130 when interrupted with Ctrl-C.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    redact = Redactor(_secrets_in_argv(arguments))
    parser = build_parser()
    errors = io.StringIO()
    try:
        # argparse prints usage errors itself; they are captured to be redacted first.
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(arguments)
            settings = _resolve(args, parser, redact)
            _check_command(args, parser)
    except SystemExit as exc:
        sys.stderr.write(redact(errors.getvalue()))
        sys.stderr.flush()
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    sys.stderr.write(redact(errors.getvalue()))

    console = Console(sys.stderr, redact, show_progress=not args.quiet)
    out = sys.stdout
    with _logging_to(console, args.verbose):
        try:
            settings.ask_password(redact)
            return asyncio.run(_run(args, settings, console, out))
        except KeyboardInterrupt:
            console.close()
            resumable = args.command == "upload" and args.journal
            hint = "; re-run with the same --journal to resume" if resumable else ""
            console.message(f"interrupted{hint}")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader of our output went away (e.g. `| head`); nothing left to say.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
        except Exception as exc:
            leaf = _leaf(exc)
            expected = isinstance(leaf, _EXPECTED)
            if args.verbose or not expected:
                console.close()
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                console.message(text.rstrip("\n"))
            message = str(leaf) or type(leaf).__name__
            if not expected:
                message = f"unexpected {type(leaf).__name__}: {message}"
            console.error(message)
            return EXIT_FAILED
        finally:
            console.close()
