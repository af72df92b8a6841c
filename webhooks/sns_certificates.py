"""The SNS signing certificates: the one place Outbox fetches ``SigningCertURL``.

:meth:`SnsCertificates.get` never blocks the event loop (aiohttp), refuses any URL but
``https://sns.<region>.amazonaws.com/....pem`` before anything is fetched
(:func:`webhooks.providers.ses.signing_cert_url_ok`), follows no redirect, reads at most
:data:`MAX_PEM` bytes, accepts only a readable X.509 certificate within its validity period, and
caches what it accepted by URL (concurrent requests for one URL share one fetch).

Where the bytes come from is injectable, the rule on the URL is not: ``ssl`` is the trust used
for the server's certificate (default: the system's), ``resolver`` maps the SNS host name to an
address (default: DNS). Tests serve a certificate from a local HTTPS server by passing both; the
TLS host name checked is still the SNS host of the URL.

Exceptions::

    CertificateError            (ValueError)
     ├── CertificateRefused      the URL is not SNS's: nothing was fetched
     ├── CertificateUnavailable  the fetch failed (connection, TLS, timeout, HTTP status, size)
     └── CertificateInvalid      fetched, but not an X.509 certificate within its validity
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module

import aiohttp
from aiohttp.abc import AbstractResolver

from webhooks.providers import ses

FETCH_TIMEOUT = 10.0
MAX_PEM = 65536
CACHE_MAX = 32


class CertificateError(ValueError):
    """No usable SNS signing certificate for a URL."""


class CertificateRefused(CertificateError):
    """The URL is not an SNS certificate URL; nothing was fetched."""


class CertificateUnavailable(CertificateError):
    """The certificate could not be fetched (the sender may retry later)."""


class CertificateInvalid(CertificateError):
    """What was fetched is not an X.509 certificate within its validity period."""


class SnsCertificates:
    """Fetches and caches SNS signing certificates (see the module docstring)."""

    def __init__(self, *, ssl: ssl_module.SSLContext | None = None,
                 resolver: AbstractResolver | None = None,
                 timeout: float = FETCH_TIMEOUT, cache_max: int = CACHE_MAX) -> None:
        self._ssl = ssl
        self._resolver = resolver
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache_max = cache_max
        self._cache: dict[str, str] = {}
        self._pending: dict[str, asyncio.Task[str]] = {}
        self.fetches = 0  # downloads started (the cache's effect, for tests and logs)

    async def get(self, url: str) -> str:
        """The PEM certificate at ``url``: cached, else fetched and checked.
        :class:`CertificateError` (one of its three kinds) when there is none to use."""
        if not ses.signing_cert_url_ok(url):
            raise CertificateRefused(f"not an SNS certificate URL: {url[:200]!r}")
        pem = self._cache.get(url)
        if pem is not None:
            return pem
        task = self._pending.get(url)
        if task is None:
            task = asyncio.ensure_future(self._fetch_checked(url))
            self._pending[url] = task
            task.add_done_callback(lambda _: self._pending.pop(url, None))
        return await asyncio.shield(task)

    async def _fetch_checked(self, url: str) -> str:
        pem = await self._download(url)
        if not ses.certificate_current(pem):
            raise CertificateInvalid(f"{url}: not an X.509 certificate within its validity")
        if len(self._cache) >= self._cache_max:
            self._cache.pop(next(iter(self._cache)))
        self._cache[url] = pem
        return pem

    async def _download(self, url: str) -> str:
        self.fetches += 1
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True,
                                         resolver=self._resolver)
        try:
            async with (aiohttp.ClientSession(connector=connector, timeout=self._timeout)
                        as session, session.get(url, allow_redirects=False) as response):
                if response.status != 200:
                    raise CertificateUnavailable(f"{url}: HTTP {response.status}")
                body = await response.content.read(MAX_PEM + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CertificateUnavailable(f"{url[:120]}: {type(exc).__name__}: {exc}"[:500]
                                         ) from None
        if len(body) > MAX_PEM:
            raise CertificateUnavailable(f"{url}: larger than {MAX_PEM} bytes")
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise CertificateInvalid(f"{url}: not a PEM (not ASCII)") from None
