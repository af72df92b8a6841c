"""The SNS certificate fetcher against a real HTTPS server on loopback (tests/integration/
sns_standin.py: TLS with a certificate for sns.us-east-1.amazonaws.com made here, trusted by
injection): a good certificate verifies a signature; it is fetched once and cached; a URL not
SNS's is refused with no lookup and no request; every kind of failed fetch is a clear error and
nothing is cached; the fetch runs on the event loop without blocking it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.sns_standin import SNS_HOST, Loopback, SnsStandIn, sns_standin
from tests.unit.test_provider_ses import CERT, fixture, make_certificate, notification, sign
from webhooks.providers import ses
from webhooks.sns_certificates import (
    MAX_PEM,
    CertificateInvalid,
    CertificateRefused,
    CertificateUnavailable,
    SnsCertificates,
)

pytestmark = pytest.mark.integration
PATH = "/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
URL = f"https://{SNS_HOST}{PATH}"


@pytest.fixture
async def standin(tmp_path, unused_tcp_port) -> SnsStandIn:
    async with sns_standin(tmp_path, unused_tcp_port) as running:
        running.pems[PATH] = CERT
        yield running


async def test_a_good_certificate_is_fetched_over_tls_and_verifies(standin):
    fetcher = standin.fetcher()
    pem = await fetcher.get(URL)
    assert pem == CERT
    assert standin.requests == [URL]  # the Host header was SNS's, over the verified TLS
    assert ses.verify(sign(notification(fixture("ses-bounce"))), pem)


async def test_a_certificate_is_fetched_once_and_cached(standin):
    fetcher = standin.fetcher()
    assert await fetcher.get(URL) == CERT
    assert await fetcher.get(URL) == CERT
    other = f"https://{SNS_HOST}/other.pem"
    standin.pems["/other.pem"] = CERT
    standin.hold.clear()
    waiting = [asyncio.ensure_future(fetcher.get(other)) for _ in range(5)]
    while len(standin.requests) < 2:
        await asyncio.sleep(0.01)
    standin.hold.set()
    assert await asyncio.gather(*waiting) == [CERT] * 5
    assert standin.requests == [URL, other]  # five concurrent asks, one fetch
    assert fetcher.fetches == 2


@pytest.mark.parametrize("url", [
    f"http://{SNS_HOST}{PATH}",
    f"https://{SNS_HOST}.evil.example{PATH}",
    f"https://evil.example/{SNS_HOST}{PATH}",
    f"https://{SNS_HOST}@evil.example{PATH}",
    f"https://{SNS_HOST}:8443{PATH}",
    "https://s3.amazonaws.com/x.pem",
    f"https://{SNS_HOST}/x.txt",
    "",
])
async def test_a_url_not_from_sns_is_refused_without_a_lookup_or_request(standin, url):
    resolver = Loopback(standin.port)
    fetcher = SnsCertificates(ssl=standin.trust, resolver=resolver)
    with pytest.raises(CertificateRefused, match="not an SNS certificate URL"):
        await fetcher.get(url)
    assert resolver.asked == []
    assert standin.requests == []


async def test_http_errors_and_redirects_are_unavailable_and_not_cached(standin):
    fetcher = standin.fetcher()
    missing = f"https://{SNS_HOST}/missing.pem"
    with pytest.raises(CertificateUnavailable, match=f"{missing}: HTTP 404"):
        await fetcher.get(missing)
    with pytest.raises(CertificateUnavailable, match="HTTP 302"):  # not followed
        await fetcher.get(f"https://{SNS_HOST}/moved.pem")
    assert f"https://{SNS_HOST}/elsewhere.pem" not in standin.requests
    standin.pems["/missing.pem"] = CERT
    assert await fetcher.get(missing) == CERT  # the failure was not remembered


async def test_a_server_we_do_not_trust_is_unavailable(standin):
    untrusting = SnsCertificates(resolver=Loopback(standin.port))  # the system's trust
    with pytest.raises(CertificateUnavailable, match="CERTIFICATE_VERIFY_FAILED.*self-signed"):
        await untrusting.get(URL)


async def test_a_host_the_tls_certificate_does_not_name_is_unavailable(standin):
    other_region = f"https://sns.eu-west-1.amazonaws.com{PATH}"  # a valid SNS URL
    with pytest.raises(CertificateUnavailable, match="Hostname mismatch"):
        await standin.fetcher().get(other_region)


async def test_nothing_listening_is_unavailable(standin, unused_tcp_port_factory):
    closed = SnsCertificates(ssl=standin.trust, resolver=Loopback(unused_tcp_port_factory()))
    with pytest.raises(CertificateUnavailable, match="Connect call failed"):
        await closed.get(URL)


async def test_a_server_that_never_answers_times_out(standin):
    standin.hold.clear()
    with pytest.raises(CertificateUnavailable, match="Timeout"):
        await standin.fetcher(timeout=0.5).get(URL)


async def test_an_oversized_or_unreadable_body_is_refused(standin):
    fetcher = standin.fetcher()
    standin.pems["/big.pem"] = "A" * (MAX_PEM + 1)
    with pytest.raises(CertificateUnavailable, match=f"larger than {MAX_PEM} bytes"):
        await fetcher.get(f"https://{SNS_HOST}/big.pem")
    standin.pems["/binary.pem"] = b"\xff\xfe not a pem"
    with pytest.raises(CertificateInvalid, match="not ASCII"):
        await fetcher.get(f"https://{SNS_HOST}/binary.pem")
    standin.pems["/text.pem"] = "hello"
    with pytest.raises(CertificateInvalid, match="not an X.509 certificate"):
        await fetcher.get(f"https://{SNS_HOST}/text.pem")


async def test_an_expired_certificate_is_invalid_and_not_cached(standin):
    _, expired = make_certificate(days=2, start=datetime.now(UTC) - timedelta(days=10))
    standin.pems["/expired.pem"] = expired
    fetcher = standin.fetcher()
    for _ in range(2):
        with pytest.raises(CertificateInvalid, match="within its validity"):
            await fetcher.get(f"https://{SNS_HOST}/expired.pem")
    assert fetcher.fetches == 2


async def test_the_fetch_does_not_block_the_event_loop(standin):
    """The stand-in serves from this very loop: a fetch that blocked it could never be
    answered. While the answer is held, other tasks keep running."""
    standin.hold.clear()
    fetch = asyncio.ensure_future(standin.fetcher().get(URL))
    ticks = 0
    while not standin.requests:
        await asyncio.sleep(0.01)
    for _ in range(10):
        await asyncio.sleep(0.01)
        ticks += 1
    assert not fetch.done()
    standin.hold.set()
    assert await fetch == CERT
    assert ticks == 10
