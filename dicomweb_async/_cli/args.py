"""The command's arguments: the argparse parser and the parsers of sizes, frames and filters."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from .. import PROFILES
from .connection import URL_ENV

__all__ = ["build_parser", "check_command", "parse_filters", "parse_frames", "parse_size"]

PROG = "dicomweb-async"

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

    Parameters
    ----------
    text : str
        Comma-separated frame numbers and ascending ranges.

    Returns
    -------
    list of int
        The frame numbers, each once, in the order given.

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

    Parameters
    ----------
    items : iterable of str
        ``KEY=VALUE`` texts; the value may be empty.

    Returns
    -------
    dict
        Key to value, or to the list of values of a repeated key.

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


# -- the parser -------------------------------------------------------------------------------

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
        "--profile",
        choices=sorted(PROFILES),
        default=default(None),
        help="what the server accepts (default generic); e.g. orthanc refuses DELETE early",
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


def _add_cluster_options(parser: argparse.ArgumentParser, positive: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="shard the work over a local Dask cluster of N processes on 127.0.0.1 "
        "(--concurrency stays the total; needs the dask extra)",
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="shard the work over the Dask cluster of this scheduler (tcp://host:8786)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="shard the work over Ray instead: alone, a local Ray of --workers CPUs (all by "
        "default) on 127.0.0.1; with ADDRESS, that Ray cluster (needs the ray extra)",
    )


def _add_retry_option(parser: argparse.ArgumentParser, positive: Any) -> None:
    parser.add_argument(
        "--max-attempts",
        type=positive,
        metavar="N",
        help="tries per request for 429, 502, 503, 504 and broken connections (default 8, "
        "with backoff up to 15 s); what still fails gets one more pass at the end; "
        "1 turns retrying off",
    )


def _add_resource(parser: argparse.ArgumentParser, *, instance: bool) -> None:
    """STUDY [SERIES [SOP]] positionals; all three are required for an ``instance``."""
    optional: dict[str, Any] = {} if instance else {"nargs": "?"}
    parser.add_argument("study", metavar="STUDY")
    parser.add_argument("series", metavar="SERIES", **optional)
    parser.add_argument("sop", metavar="SOP", **optional)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (commands ``upload``, ``download``, ``search``,
    ``retrieve`` and ``delete``)."""
    from .. import __version__

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
        help="record confirmed instances in FILE; a re-run with it skips them "
        "(with --workers, --scheduler or --ray: a folder of per-shard journals)",
    )
    upload.add_argument(
        "--upsert",
        action="store_true",
        help="replace instances the server has (PUT; the Azure DICOM service, API v2)",
    )
    _add_retry_option(upload, positive)
    _add_cluster_options(upload, positive)

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
    _add_retry_option(download, positive)
    _add_cluster_options(download, positive)
    download.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also download the studies a search with these filters finds (repeatable)",
    )

    copy = command(
        "copy",
        "Copy studies from one DICOMweb server to another, streamed (WADO-RS into STOW-RS).",
    )
    copy.add_argument("studies", nargs="*", metavar="STUDY_UID")
    for side, where in (("from", "source"), ("to", "destination")):
        group = copy.add_argument_group(f"the {where}")
        group.add_argument(
            f"--{side}",
            dest=f"{side}_url",
            required=True,
            metavar="URL",
            help=f"the {where}'s DICOMweb service root",
        )
        group.add_argument(
            f"--{side}-token-env", metavar="VAR", help="read its bearer token from VAR"
        )
        group.add_argument(f"--{side}-user", metavar="USER", help="Basic auth user")
        group.add_argument(
            f"--{side}-password-env", metavar="VAR", help="read the Basic auth password from VAR"
        )
        group.add_argument(
            f"--{side}-profile",
            choices=sorted(PROFILES),
            help=f"what the {where} accepts (default generic; azure with --{side}-azure)",
        )
        group.add_argument(
            f"--{side}-azure",
            action="store_true",
            help="an Azure DICOM service (URL without /v2): tokens from azure-identity's "
            "DefaultAzureCredential"
            + ("; implicit VR instances are converted to explicit VR" if side == "to" else ""),
        )
    copy.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also copy the studies a search of the source with these filters finds",
    )
    copy.add_argument(
        "--concurrency",
        type=positive,
        default=4,
        metavar="N",
        help="source requests (series or instances) in flight (4)",
    )
    copy.add_argument(
        "--max-request-bytes",
        type=size,
        metavar="SIZE",
        help="group instances of a study into STOW-RS requests up to SIZE; "
        "default: one instance per request",
    )
    copy.add_argument(
        "--journal",
        metavar="FILE",
        help="record instances the destination confirmed; a re-run with it copies the rest",
    )
    copy.add_argument(
        "--no-skip-existing",
        dest="skip_existing",
        action="store_false",
        help="do not list each study at the destination first to skip what it has",
    )
    copy.add_argument(
        "--verify",
        action="store_true",
        help="afterwards, compare each study's instances at both servers (QIDO-RS)",
    )
    _add_retry_option(copy, positive)

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
    _add_resource(metadata, instance=False)

    instance = retrieve_command("instance", "Save one instance as a DICOM file.")
    _add_resource(instance, instance=True)
    instance.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="file to write (a folder gets <SOP>.dcm inside; '-' writes to standard output)",
    )

    frames = retrieve_command("frames", "Save frames of an instance, one file per frame.")
    _add_resource(frames, instance=True)
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
    _add_resource(delete, instance=False)
    return parser


def check_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Check combinations argparse cannot express, and parse the ``--filter`` items.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line; ``copy``, ``download`` and ``search`` gain
        ``args.filters``.
    parser : argparse.ArgumentParser
        Reports usage errors (``parser.error`` exits).
    """
    if args.command == "copy":
        given = [
            "--" + n.replace("_", "-")
            for n in ("url", "token", "token_env", "user", "password", "password_env", "profile")
            if getattr(args, n, None)
        ]
        if given:
            parser.error(f"copy: {', '.join(given)} do not apply; use --from-... and --to-...")
    if args.command in ("copy", "download"):
        if not args.studies and not args.filter:
            parser.error(f"{args.command}: give STUDY_UID arguments, --filter KEY=VALUE, or both")
        try:
            args.filters = parse_filters(args.filter)
        except ValueError as exc:
            parser.error(f"{args.command}: {exc}")
    if args.command == "search":
        if args.level == "studies" and args.series:
            parser.error("search studies: --series does not apply")
        try:
            args.filters = parse_filters(args.filter)
        except ValueError as exc:
            parser.error(f"search: {exc}")
