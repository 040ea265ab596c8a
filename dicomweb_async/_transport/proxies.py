"""Which proxy a request goes through, from the environment, as httpx decides it.

Hospital networks often reach cloud services only through a proxy named in
``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, with ``NO_PROXY`` listing the hosts to reach
directly. httpx honours these when it builds its own transport; the client's own pools are
built here, so the same rules are applied here, for every engine.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ProxyRules"]


def _env(environ: Mapping[str, str], name: str) -> str | None:
    # The lower-case form wins, as in urllib and httpx; an empty value means "not set".
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def _with_scheme(url: str) -> str:
    # "proxy:3128" is common in the environment and means http://proxy:3128.
    return url if "://" in url else f"http://{url}"


def _host_matches(host: str, entry: str) -> bool:
    entry = entry.strip().lower().rstrip(".")
    if not entry:
        return False
    if entry.startswith("*."):
        entry = entry[1:]
    if "/" in entry:  # a network, e.g. 10.0.0.0/8
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    if entry.startswith("."):
        return host.endswith(entry) or host == entry[1:]
    return host == entry or host.endswith("." + entry)


@dataclass(frozen=True)
class ProxyRules:
    """Proxies by URL scheme and the hosts that bypass them.

    Attributes
    ----------
    http, https : str or None
        The proxy URL for ``http://`` and ``https://`` requests (``ALL_PROXY`` where the
        scheme's own variable is not set).
    no_proxy : tuple of str
        Host names, domain suffixes (``.example.org``), IP addresses or networks
        (``10.0.0.0/8``) reached directly; ``*`` turns every proxy off.
    """

    http: str | None = None
    https: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProxyRules:
        """The rules in ``environ`` (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        every = _env(env, "ALL_PROXY")
        http = _env(env, "HTTP_PROXY") or every
        https = _env(env, "HTTPS_PROXY") or every
        bypass = tuple(h.strip() for h in (_env(env, "NO_PROXY") or "").split(",") if h.strip())
        if "*" in bypass:
            return cls()
        return cls(
            _with_scheme(http) if http else None,
            _with_scheme(https) if https else None,
            bypass,
        )

    def __bool__(self) -> bool:
        return self.http is not None or self.https is not None

    def proxy_for(self, scheme: str, host: str) -> str | None:
        """The proxy URL for a request to ``scheme://host``, or None to go directly."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        host = host.lower().strip("[]")
        if any(_host_matches(host, entry) for entry in self.no_proxy):
            return None
        return proxy
