"""The command's connection: service URL and credentials from options and the environment."""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import sys
from urllib.parse import urlsplit

from .. import AuthLike
from .secrets import Redactor

__all__ = ["URL_ENV", "Settings", "resolve_settings"]

#: The environment variable that stands in for ``--url``.
URL_ENV = "DICOMWEB_URL"


class Settings:
    """The connection, resolved from options and the environment.

    Parameters
    ----------
    url : str
        The DICOMweb service root.
    auth : AuthLike
        What the client is given as ``auth``.
    auth_kind : str
        The kind of authentication, for the debug log (never the credentials).
    ask_password_for : str, optional
        The user whose password is still to be typed in.
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


def resolve_settings(
    args: argparse.Namespace, parser: argparse.ArgumentParser, redact: Redactor
) -> Settings:
    """Check what argparse cannot and find the URL and credentials.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.
    parser : argparse.ArgumentParser
        Reports usage errors (``parser.error`` exits).
    redact : Redactor
        Learns every secret found (URL password, token, password).

    Returns
    -------
    Settings
    """
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
        return Settings(url, token, "bearer token")
    if args.user:
        kind = f"basic auth as {args.user}"
        if password is None:
            if not sys.stdin.isatty():
                parser.error("--user needs --password-env VAR (or --password)")
            return Settings(url, None, kind, ask_password_for=args.user)
        return Settings(url, _basic(args.user, password, redact), kind)
    return Settings(url, None, "none")
