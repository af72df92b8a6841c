"""The DNS resolver every lookup of Outbox uses (MX checks, ``outbox domains verify``):
``OUTBOX_DNS_NAMESERVERS`` when set (``host[:port]`` each, parsed by
:func:`config.settings.parse_nameserver`), else the system's (``/etc/resolv.conf``)."""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncresolver
import dns.nameserver

DEFAULT_LIFETIME = 5.0  # seconds for one lookup, every retry and server included


def make_resolver(nameservers: Sequence[tuple[str, int]] = (),
                  lifetime: float = DEFAULT_LIFETIME) -> dns.asyncresolver.Resolver:
    """An async resolver asking ``nameservers`` (``(address, port)`` pairs), or the system's
    when there are none. UDP, TCP when an answer is truncated (dnspython's behaviour)."""
    if not nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                for address, port in nameservers]
    resolver.lifetime = lifetime
    return resolver
