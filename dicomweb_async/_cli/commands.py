"""The command's subcommands: upload, download, search, retrieve and delete.

Each takes a :class:`Context` and returns whether everything succeeded; errors that end
the whole command are raised.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import anyio

from .. import AsyncDICOMwebClient, DICOMwebError, DownloadReport, RetryPolicy, UploadReport
from . import sharded
from .console import Console
from .tables import (
    SEARCH_COLUMNS,
    download_summary,
    element_text,
    format_table,
    upload_summary,
)

__all__ = [
    "Context",
    "delete",
    "download",
    "retrieve_frames",
    "retrieve_instance",
    "retrieve_metadata",
    "search",
    "upload",
]

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


class Context:
    """What every command needs: the parsed arguments, the client and the outputs.

    Parameters
    ----------
    args : argparse.Namespace
    client : AsyncDICOMwebClient
    console : Console
        Progress and messages (standard error).
    out : text stream
        Results (standard output).
    """

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
        """Print a line of results, below any progress bar."""
        self.console.close()
        self.out.write(line + "\n")
        self.out.flush()


def bulk_retry(args: argparse.Namespace) -> RetryPolicy | None:
    """The retry policy ``--max-attempts`` asks for (None: the bulk default)."""
    attempts: int | None = getattr(args, "max_attempts", None)
    return None if attempts is None else RetryPolicy.for_bulk(attempts)


async def upload(ctx: Context) -> bool:
    """Upload files and folders, then print the summary."""
    args = ctx.args
    report: UploadReport
    if sharded.sharded(args):
        # A cluster's client runs an event loop of its own: it is kept off this one.
        report = await anyio.to_thread.run_sync(sharded.store, args, ctx.console.progress)
    else:
        report = await ctx.client.store_folder(
            args.sources,
            concurrency=args.concurrency,
            max_request_bytes=args.max_request_bytes,
            journal=args.journal,
            progress=ctx.console.progress,
            retry=bulk_retry(args),
            upsert=args.upsert,
        )
    for line in upload_summary(report):
        ctx.print(ctx.console.redact(line))
    return report.ok


async def download(ctx: Context) -> bool:
    """Download the given studies and those the filters find, then print the summary."""
    args = ctx.args
    studies = list(dict.fromkeys(args.studies))
    if args.filters:
        found = await ctx.client.search_for_studies(
            search_filters=args.filters, get_remaining=True
        )
        matched = [element_text(item.get("0020000D")) for item in found]
        matched = [uid for uid in matched if uid]
        found_text = "1 study matches" if len(matched) == 1 else f"{len(matched)} studies match"
        ctx.console.message(f"{found_text} the filters")
        studies = list(dict.fromkeys([*studies, *matched]))
        if not studies:
            return True
    report: DownloadReport
    if sharded.sharded(args):
        report = await anyio.to_thread.run_sync(
            sharded.download, args, studies, ctx.console.progress
        )
    else:
        report = await ctx.client.download_studies(
            studies,
            args.out,
            concurrency=args.concurrency,
            skip_existing=args.skip_existing,
            progress=ctx.console.progress,
            retry=bulk_retry(args),
        )
    for line in download_summary(report):
        ctx.print(ctx.console.redact(line))
    return report.ok


async def search(ctx: Context) -> bool:
    """Search studies, series or instances; print a table or DICOM JSON."""
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
        return True
    if not results:
        ctx.console.message("no matches")
        return True
    columns = list(SEARCH_COLUMNS[args.level])
    # A column that the route fixes to one value carries no information.
    if args.study and args.level != "studies":
        columns.remove("StudyInstanceUID")
    if args.series and args.level == "instances":
        columns.remove("SeriesInstanceUID")
    columns += [name for name in args.field if name.lower() != "all"]
    for line in format_table(results, columns):
        ctx.print(line)
    return True


async def retrieve_metadata(ctx: Context) -> bool:
    """Print the metadata of a study, series or instance as DICOM JSON."""
    args = ctx.args
    result: list[dict[str, Any]]
    if args.sop:
        result = [await ctx.client.retrieve_instance_metadata(args.study, args.series, args.sop)]
    elif args.series:
        result = await ctx.client.retrieve_series_metadata(args.study, args.series)
    else:
        result = await ctx.client.retrieve_study_metadata(args.study)
    ctx.print(json.dumps(result, indent=2))
    return True


async def retrieve_instance(ctx: Context) -> bool:
    """Save one instance to a file, into a folder, or to standard output."""
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
    return True


async def retrieve_frames(ctx: Context) -> bool:
    """Save the requested frames of an instance, one file per frame."""
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
    return True


async def delete(ctx: Context) -> bool:
    """Delete a study, series or instance."""
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
    return True
