"""The ``dicomweb-async`` command: upload, download, search, retrieve and delete from a shell.

Run ``dicomweb-async --help`` (or ``python -m dicomweb_async --help``). Only the standard
library is used on top of the package's own dependencies, so the command needs no extra.

Exit codes: 0 when everything succeeded, 1 when anything failed (a file, an instance, or
the whole command, reported on one ``error:`` line), 2 for usage errors, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TextIO

from .. import AsyncDICOMwebClient, DICOMwebError
from . import commands, copying, sharded
from .args import build_parser, check_command
from .connection import Settings, resolve_settings
from .console import Console, logging_to
from .secrets import Redactor, secrets_in_argv

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# The client's own pool default; raised when more transfers should run at once.
DEFAULT_MAX_CONNECTIONS = 16

logger = logging.getLogger("dicomweb_async.cli")

# By command name, and by the WHAT of `retrieve WHAT`.
_COMMANDS: dict[str, Callable[[commands.Context], Awaitable[bool]]] = {
    "upload": commands.upload,
    "download": commands.download,
    "search": commands.search,
    "delete": commands.delete,
    "metadata": commands.retrieve_metadata,
    "instance": commands.retrieve_instance,
    "frames": commands.retrieve_frames,
}


async def _run(args: argparse.Namespace, settings: Settings, console: Console, out: TextIO) -> int:
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
        profile=getattr(args, "profile", None),
    ) as client:
        command = _COMMANDS[args.what if args.command == "retrieve" else args.command]
        ok = await command(commands.Context(args, client, console, out))
        return EXIT_OK if ok else EXIT_FAILED


async def _exit_code(done: Awaitable[bool]) -> int:
    return EXIT_OK if await done else EXIT_FAILED


def _run_interruptibly(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, with Ctrl-C cancelling ``main`` as Python 3.11 does.

    Python 3.10 raises KeyboardInterrupt in whatever task happens to run when the signal
    arrives (a request body being sent, say), which leaves that task's error to be
    printed at exit; cancelling the main task instead unwinds every task in order.
    """
    if sys.version_info >= (3, 11):
        return asyncio.run(main)

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        interrupted = False

        def on_interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        except (NotImplementedError, RuntimeError, ValueError):  # no signal handlers here
            return await main
        try:
            return await main
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    return asyncio.run(guarded())


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
    redact = Redactor(secrets_in_argv(arguments))
    parser = build_parser()
    errors = io.StringIO()
    try:
        # argparse prints usage errors itself; they are captured to be redacted first.
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(arguments)
            if args.command == "copy":
                check_command(args, parser)
                sides = copying.resolve_sides(args, parser, redact)
            else:
                settings = resolve_settings(args, parser, redact)
                check_command(args, parser)
            if args.command != "copy" and sharded.sharded(args):
                if settings.ask_password_for is not None:
                    parser.error("a cluster takes a bearer token, not --user")
                if args.command == "upload" and args.upsert:
                    parser.error("--upsert does not combine with a cluster")
                if args.command == "download" and not args.skip_existing:
                    parser.error("--no-skip-existing does not combine with a cluster")
                args.target = sharded.target(args, settings.url, settings.auth, parser)
    except SystemExit as exc:
        sys.stderr.write(redact(errors.getvalue()))
        sys.stderr.flush()
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    sys.stderr.write(redact(errors.getvalue()))

    console = Console(sys.stderr, redact, show_progress=not args.quiet)
    out = sys.stdout
    with logging_to(console, args.verbose):
        try:
            if args.command == "copy":
                connections = max(DEFAULT_MAX_CONNECTIONS, 2 * args.concurrency)
                copied = copying.run_copy(args, sides, console, out, connections)
                return _run_interruptibly(_exit_code(copied))
            settings.ask_password(redact)
            return _run_interruptibly(_run(args, settings, console, out))
        except KeyboardInterrupt:
            console.close()
            resumable = args.command in ("upload", "copy") and args.journal
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
