"""The ``copy`` command: two servers, each with credentials of its own."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from .. import AsyncDICOMwebClient, AuthLike, copy_studies, verify_copy
from .commands import bulk_retry
from .console import Console
from .secrets import Redactor
from .tables import copy_summary, element_text, verify_summary

__all__ = ["Side", "resolve_sides", "run_copy"]


@dataclass(frozen=True)
class Side:
    """One server of a copy, resolved from its ``--from-...`` or ``--to-...`` options."""

    url: str
    auth: AuthLike
    azure: bool
    auth_kind: str
    profile: str | None = None


def _side(
    args: argparse.Namespace, side: str, parser: argparse.ArgumentParser, redact: Redactor
) -> Side:
    url: str = getattr(args, f"{side}_url")
    parts = urlsplit(url)
    redact.add(parts.password)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--{side} must be an http:// or https:// URL, not {url!r}")
    token_env = getattr(args, f"{side}_token_env")
    user = getattr(args, f"{side}_user")
    password_env = getattr(args, f"{side}_password_env")
    azure = bool(getattr(args, f"{side}_azure"))
    profile: str | None = getattr(args, f"{side}_profile")
    if sum(map(bool, (token_env, user, azure))) > 1:
        parser.error(f"give one of --{side}-token-env, --{side}-user and --{side}-azure")
    if password_env and not user:
        parser.error(f"--{side}-password-env needs --{side}-user")
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            parser.error(f"environment variable {token_env} (--{side}-token-env) is not set")
        redact.add(token)
        return Side(url, token, False, "bearer token", profile)
    if user:
        if not password_env:
            parser.error(f"--{side}-user needs --{side}-password-env VAR")
        password = os.environ.get(password_env)
        if password is None:
            parser.error(f"environment variable {password_env} (--{side}-password-env) is not set")
        redact.add(password)
        return Side(url, (user, password), False, f"basic auth as {user}", profile)
    if azure:
        return Side(url, None, True, "azure-identity", profile)
    return Side(url, None, False, "none", profile)


def resolve_sides(
    args: argparse.Namespace, parser: argparse.ArgumentParser, redact: Redactor
) -> tuple[Side, Side]:
    """The source and destination of ``copy``; usage errors exit through ``parser``."""
    return _side(args, "from", parser, redact), _side(args, "to", parser, redact)


@contextlib.asynccontextmanager
async def _client(side: Side, max_connections: int) -> AsyncIterator[AsyncDICOMwebClient]:
    if not side.azure:
        async with AsyncDICOMwebClient(
            side.url, auth=side.auth, max_connections=max_connections, profile=side.profile
        ) as client:
            yield client
        return
    identity: Any = importlib.import_module("azure.identity.aio")
    async with identity.DefaultAzureCredential() as credential:
        client = AsyncDICOMwebClient.for_azure(
            side.url, credential, max_connections=max_connections, profile=side.profile or "azure"
        )
        async with client:
            yield client


async def run_copy(
    args: argparse.Namespace,
    sides: tuple[Side, Side],
    console: Console,
    out: TextIO,
    max_connections: int,
) -> bool:
    """Copy the given studies and those the filters find; print the summary (and verify)."""

    def emit(line: str) -> None:
        console.close()
        out.write(console.redact(line) + "\n")
        out.flush()

    async with (
        _client(sides[0], max_connections) as source,
        _client(sides[1], max_connections) as destination,
    ):
        studies = list(dict.fromkeys(args.studies))
        if args.filters:
            found = await source.search_for_studies(
                search_filters=args.filters, get_remaining=True
            )
            matched = [uid for uid in (element_text(i.get("0020000D")) for i in found) if uid]
            console.message(
                f"{len(matched)} {'study matches' if len(matched) == 1 else 'studies match'} "
                "the filters at the source"
            )
            studies = list(dict.fromkeys([*studies, *matched]))
        report = await copy_studies(
            source,
            destination,
            studies,
            concurrency=args.concurrency,
            max_request_bytes=args.max_request_bytes,
            journal=args.journal,
            skip_existing=args.skip_existing,
            progress=console.progress,
            retry=bulk_retry(args),
        )
        for line in copy_summary(report):
            emit(line)
        ok = report.ok
        if args.verify:
            differences = await verify_copy(source, destination, studies)
            for line in verify_summary(differences, len(studies)):
                emit(line)
            ok = ok and not differences
        return ok
