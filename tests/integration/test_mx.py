"""Address checks against a real DNS server on loopback (dnspython builds its answers)."""

from __future__ import annotations

import asyncio
from collections import Counter

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rrset
import pytest

from sender.channels.mx import MxChecker, Undeliverable, check_syntax

pytestmark = pytest.mark.integration

ZONE = {
    ("mx.example.", "MX"): ["10 mail.mx.example."],
    ("nullmx.example.", "MX"): ["0 ."],
    ("aonly.example.", "A"): ["127.0.0.1"],
}
SOA = "ns.example. admin.example. 1 3600 600 86400 120"


class DnsServer(asyncio.DatagramProtocol):
    """Answers from ZONE; NXDOMAIN for nx.example; silence for slow.example."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str]] = Counter()

    # narrower than BaseProtocol's BaseTransport on purpose, as typeshed's own DatagramProtocol
    # declares it (with the same ignore): a datagram endpoint is given a DatagramTransport
    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        if name == "slow.example.":
            return
        response = dns.message.make_response(query)
        if name == "nx.example.":
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text("example.", 120, "IN", "SOA", SOA))
        elif (name, rdtype) in ZONE:
            response.answer.append(
                dns.rrset.from_text(name, 300, "IN", rdtype, *ZONE[(name, rdtype)]))
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server():
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(DnsServer, local_addr=("127.0.0.1", 0))
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    yield server, resolver
    transport.close()


async def test_a_domain_with_mx_is_deliverable_and_cached(dns_server):
    server, resolver = dns_server
    checker = MxChecker(resolver)
    for _ in range(5):
        await checker.check("MX.example")
    assert server.queries[("mx.example.", "MX")] == 1


@pytest.mark.parametrize(("domain", "why"), [
    ("nx.example", "no such domain"),
    ("nullmx.example", "null MX"),
    ("nothing.example", "no MX and no address record"),
])
async def test_undeliverable_domains_are_refused_and_the_answer_cached(dns_server, domain, why):
    server, resolver = dns_server
    checker = MxChecker(resolver)
    for _ in range(3):
        with pytest.raises(Undeliverable, match=why) as info:
            await checker.check(domain)
        assert info.value.reason == "hostunknown"
    assert server.queries[(f"{domain}.", "MX")] == 1


async def test_a_domain_without_mx_but_with_an_address_takes_mail(dns_server):
    server, resolver = dns_server
    await MxChecker(resolver).check("aonly.example")
    assert server.queries[("aonly.example.", "A")] == 1


async def test_a_dns_timeout_never_blocks_sending_and_is_not_cached(dns_server):
    server, resolver = dns_server
    checker = MxChecker(resolver, timeout=0.3)
    await checker.check("slow.example")
    await checker.check("slow.example")
    assert server.queries[("slow.example.", "MX")] >= 2


@pytest.mark.parametrize("address",
                         ["plain@example.com", "陳大文@例子.香港", "a.b+tag@sub.example.org"])
def test_valid_syntax_including_internationalised_addresses(address):
    assert check_syntax(address)


@pytest.mark.parametrize("address",
                         ["no-at-sign", "two@@example.com", "a@-bad-.com", "a b@example.com"])
def test_invalid_syntax_is_refused(address):
    with pytest.raises(Undeliverable) as info:
        check_syntax(address)
    assert info.value.reason == "syntaxerror"


async def test_the_email_channel_rejects_an_undeliverable_domain_before_sending(
        dns_server, smtp_server):
    from config import parse_smtp_url
    from sender.channels.base import SendFailure
    from sender.channels.smtp import EmailOptions, SmtpChannel, SmtpPool
    from sender.models import EmailJob
    from tests.integration.helpers import email_job

    server, resolver = dns_server
    url, recorder = smtp_server
    channel = SmtpChannel(SmtpPool(parse_smtp_url(url), size=1, timeout=5, max_messages=10,
                                   idle_timeout=10),
                          options=EmailOptions("mail.test", mx=MxChecker(resolver)))
    with pytest.raises(SendFailure) as info:
        await channel.send(EmailJob.model_validate(email_job(to="x@nx.example")))
    await channel.send(EmailJob.model_validate(email_job(to="x@mx.example")))
    await channel.close()
    assert (info.value.status, info.value.outcome.reason) == ("rejected", "hostunknown")
    assert [r for _, r, _ in recorder.messages] == [["x@mx.example"]]


@pytest.mark.parametrize("address", [
    "plain@example.com", "Mixed.Case+tag@Example.COM", "o'brien@example.ie", "x@例子.香港",
    "a..b@example.com", ".a@example.com", "a.@example.com", "a@example", "a@-x.com",
    "a@x_y.com", "a@localhost", "a@b.invalid", "x" * 65 + "@example.com", "a@" + "b" * 64 + ".com",
    "用户@例子.广告", "a b@example.com", "a@[127.0.0.1]", "@example.com", "a@",
])
def test_the_fast_path_agrees_with_email_validator(address):
    from email_validator import EmailNotValidError, validate_email

    from suppression.address import email_domain

    try:
        local, _, domain = validate_email(address, check_deliverability=False,
                                          allow_smtputf8=True).normalized.rpartition("@")
        expected = f"{local}@{email_domain(domain)}"  # the domain as the keys and wire have it
    except EmailNotValidError:
        expected = None
    try:
        got = check_syntax(address)
    except Undeliverable:
        got = None
    assert got == expected


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_atom = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-.", min_size=0, max_size=20)
_label = st.text("abcxyz019-_", min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_atom, st.lists(_label, min_size=1, max_size=4))
def test_the_fast_path_agrees_with_email_validator_on_generated_addresses(local, labels):
    test_the_fast_path_agrees_with_email_validator(f"{local}@{'.'.join(labels)}")
