"""A stand-in for SNS's certificate host: a real HTTPS server on loopback (aiohttp, a
self-signed TLS certificate for ``sns.us-east-1.amazonaws.com`` made here with ``cryptography``)
and what a :class:`webhooks.sns_certificates.SnsCertificates` needs to reach it: the trust (an
SSL context holding that certificate) and a resolver sending the SNS host names to loopback.

The URL rule is untouched: the fetcher is asked for ``https://sns.us-east-1.amazonaws.com/...``
and TLS checks that host name against the stand-in's certificate."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webhooks.sns_certificates import SnsCertificates

SNS_HOST = "sns.us-east-1.amazonaws.com"


def tls_certificate(directory: Path, host: str = SNS_HOST) -> tuple[Path, Path]:
    """A self-signed server certificate for ``host`` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "sns-tls.pem", directory / "sns-tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Loopback(AbstractResolver):
    """Every host name resolves to 127.0.0.1:``port``; the names asked are recorded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        return [{"hostname": host, "host": "127.0.0.1", "port": self.port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


@dataclass
class SnsStandIn:
    """The running stand-in: ``pems`` maps a path to the body served there (404 otherwise);
    ``requests`` records each request as ``https://<Host header><path>``; while ``hold`` is
    clear, answers wait for it."""

    port: int
    trust: ssl.SSLContext
    pems: dict[str, str | bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)

    def fetcher(self, **options: float) -> SnsCertificates:
        """A fetcher trusting the stand-in and resolving every host to it."""
        return SnsCertificates(ssl=self.trust, resolver=Loopback(self.port), **options)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"https://{request.host}{request.path}")
        await self.hold.wait()
        if request.path == "/moved.pem":
            raise web.HTTPFound(f"https://{SNS_HOST}/elsewhere.pem")
        body = self.pems.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body.encode() if isinstance(body, str) else body,
                            content_type="application/x-x509-ca-cert")


@asynccontextmanager
async def sns_standin(directory: Path, port: int) -> AsyncIterator[SnsStandIn]:
    """The stand-in serving HTTPS on 127.0.0.1:``port`` until the block ends."""
    cert, key = tls_certificate(directory)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    standin = SnsStandIn(port, ssl.create_default_context(cafile=str(cert)))
    standin.hold.set()
    app = web.Application()
    app.router.add_get("/{name:.*}", standin.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ssl).start()
        yield standin
    finally:
        standin.hold.set()  # no answer left waiting
        await runner.cleanup()
