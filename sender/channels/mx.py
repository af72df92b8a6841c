"""Recipient address checks for email: syntax (email-validator, internationalised addresses
allowed) and, when enabled, the domain's MX records (dnspython's async resolver).

Answers are cached for their TTL, negative ones too (NXDOMAIN, no MX and no address, a null
MX per RFC 7505); a DNS timeout or server failure never blocks sending — the domain is taken
as deliverable and not cached, so the next job asks again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.SOA import SOA
from email_validator import EmailNotValidError, validate_email

from suppression.address import BadAddress, email_domain

log = logging.getLogger("outbox.mx")
NEGATIVE_TTL = 3600  # seconds a "no such domain" is remembered when the answer has no TTL
MIN_TTL, MAX_TTL = 60, 86400


class Undeliverable(ValueError):
    """The address cannot receive mail; ``reason`` is the classifier's vocabulary."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Entry:
    deliverable: bool
    why: str
    expires: float
    hosts: tuple[str, ...] = ()  # the MX hosts (lower case), for the shaping provider groups


# RFC 5322 dot-atom local part in ASCII (what nearly every address has): email-validator
# accepts exactly these without changing them, so they need only their domain checked.
_ASCII_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def check_syntax(address: str) -> str:
    """The address with its domain as the A-label the keys and the wire use
    (:func:`suppression.address.email_domain`); Undeliverable(reason ``syntaxerror``) when it
    is not one.

    The domain's verdict is cached (a blast repeats few domains); a plain ASCII local part
    then needs only a regular expression, anything else goes through email-validator whole."""
    local, at, domain = address.rpartition("@")
    if not (at and len(local) <= 64 and _ASCII_LOCAL.match(local)):
        local, _, domain = _validate(address).rpartition("@")
    return f"{local}@{_domain(domain)}"


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str:
    checked = _validate(f"postmaster@{domain}").rpartition("@")[2]
    try:
        return email_domain(checked)
    except BadAddress as exc:
        raise Undeliverable(f"invalid address: {exc}", "syntaxerror") from None


def _validate(address: str) -> str:
    try:
        return validate_email(address, check_deliverability=False,
                              allow_smtputf8=True).normalized
    except EmailNotValidError as exc:
        raise Undeliverable(f"invalid address: {exc}", "syntaxerror") from None


class MxChecker:
    """Cached MX lookups. ``resolver`` is injected (tests point it at a local DNS server)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None,
                 timeout: float = 3.0) -> None:
        self._resolver = resolver or dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._cache: dict[str, _Entry] = {}
        self.lookups = 0

    async def check(self, domain: str) -> None:
        """Raise Undeliverable(reason ``hostunknown``) when ``domain`` cannot take mail."""
        domain = domain.lower().rstrip(".")
        entry = self._cache.get(domain)
        if entry is None or entry.expires < time.monotonic():
            entry = await self._lookup(domain)
            if entry is not None:
                self._cache[domain] = entry
        if entry is not None and not entry.deliverable:
            raise Undeliverable(f"{domain}: {entry.why}", "hostunknown")

    def hosts(self, domain: str) -> tuple[str, ...]:
        """The MX hosts of ``domain`` from the cache (none when not looked up, or expired)."""
        entry = self._cache.get(domain.lower().rstrip("."))
        return entry.hosts if entry is not None and entry.expires >= time.monotonic() else ()

    async def _lookup(self, domain: str) -> _Entry | None:
        self.lookups += 1
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            return _negative("no such domain", _soa_ttl(exc))
        except dns.resolver.NoAnswer:
            return await self._fallback_address(domain)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError) as exc:
            log.warning("MX lookup for %s failed, sending anyway: %s", domain, exc)
            return None
        ttl = _clamp(answer.rrset.ttl if answer.rrset else MIN_TTL)
        hosts = [r.exchange.to_text(omit_final_dot=True) for r in answer]
        if hosts == [""] or hosts == ["."] or all(h in ("", ".") for h in hosts):
            return _negative("null MX: the domain accepts no mail", ttl)
        return _Entry(True, "mx", time.monotonic() + ttl, tuple(h.lower() for h in hosts))

    async def _fallback_address(self, domain: str) -> _Entry | None:
        """No MX: RFC 5321 says deliver to the domain's own address record, if any."""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(domain, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError):
                return None
            ttl = answer.rrset.ttl if answer.rrset else MIN_TTL
            return _Entry(True, rdtype, time.monotonic() + _clamp(ttl))
        return _negative("no MX and no address record", NEGATIVE_TTL)


def _negative(why: str, ttl: float) -> _Entry:
    return _Entry(False, why, time.monotonic() + _clamp(ttl))


def _clamp(ttl: float) -> float:
    return max(MIN_TTL, min(MAX_TTL, ttl))


def _soa_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """The negative-caching TTL from the SOA in the NXDOMAIN answer (RFC 2308), if present."""
    # dnspython leaves NXDOMAIN.responses() unannotated; this names what it returns
    responses: Callable[[], Mapping[dns.name.Name, dns.message.Message]] = exc.responses
    for response in responses().values():
        for rrset in response.authority:
            soa = rrset[0] if rrset.rdtype == dns.rdatatype.SOA else None
            if isinstance(soa, SOA):
                return min(rrset.ttl, soa.minimum)
    return NEGATIVE_TTL
