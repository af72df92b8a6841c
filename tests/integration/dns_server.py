"""A small authoritative DNS server for tests, on loopback, over UDP and TCP on one port.

Answers from a zone the test changes as it goes (``zone.set(name, "TXT", value)``), NXDOMAIN
for a name it does not hold, NOERROR with no answer for a type it does not hold, SERVFAIL for
the names in ``failing``. With
``truncate_udp`` every UDP answer is sent truncated (TC set), so clients must ask again over
TCP; ``served`` counts queries per transport. Built on dnspython's own wire format code."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def txt_rdata(value: str) -> str:
    """A TXT value as zone text: quoted strings of at most 255 characters each."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


@dataclass
class Zone:
    """``(name, type) -> [rdata text]``; names without the final dot, lower case."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)
    truncate_udp: bool = False
    failing: set[str] = field(default_factory=set)  # names answered SERVFAIL

    def set(self, name: str, rdtype: str, *values: str) -> None:
        """Replace the records of ``name``/``rdtype`` (TXT values given plain)."""
        rdtype = rdtype.upper()
        data = [txt_rdata(v) if rdtype == "TXT" else v if v.endswith(".") else v + "."
                if rdtype == "CNAME" else v for v in values]
        self.records[(name.lower().rstrip("."), rdtype)] = data

    def delete(self, name: str, rdtype: str) -> None:
        self.records.pop((name.lower().rstrip("."), rdtype.upper()), None)

    def answer(self, wire: bytes, transport: str) -> bytes:
        """The reply to one query."""
        query = dns.message.from_wire(wire)
        self.served[transport] += 1
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rdtype) in self.records:
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", rdtype,
                                                       *self.records[(name, rdtype)]))
        if transport == "udp" and self.truncate_udp:
            response.answer.clear()
            response.flags |= dns.flags.TC
        return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.zone.answer(data, "udp"), addr)


async def _tcp(zone: Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            reply = zone.answer(await reader.readexactly(size), "tcp")
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[str]:
    """Serve ``zone`` on 127.0.0.1 (UDP and TCP, one free port) in this loop; yields
    ``127.0.0.1:<port>`` as ``OUTBOX_DNS_NAMESERVERS`` takes it."""
    loop = asyncio.get_running_loop()
    for _ in range(20):  # a free UDP port whose TCP twin is free too
        udp, _proto = await loop.create_datagram_endpoint(lambda: _Udp(zone),
                                                          local_addr=("127.0.0.1", 0))
        port = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(lambda r, w: _tcp(zone, r, w), "127.0.0.1", port,
                                             family=socket.AF_INET)
        except OSError:
            udp.close()
            continue
        break
    else:
        raise RuntimeError("no free port for the test DNS server")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()
