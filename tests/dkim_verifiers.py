"""Two DKIM verifiers that share no code with ``sender.dkim``: dkimpy and Debian's OpenDKIM.

* :func:`dkimpy_results`: dkimpy's verifier, each signature on its own, the public keys given
  through its ``dnsfunc`` hook.
* :class:`OpenDkim`: ``opendkim-testmsg`` (Debian's ``opendkim-tools``, libopendkim in C) reads
  the message on stdin and looks the key up in DNS; it has no option for a key file. So a small
  DNS server (dnspython, UDP) answers on a loopback address of its own at port 53, and the tool
  runs in a private mount namespace (``unshare --mount``, as root) whose ``/etc/resolv.conf`` is
  bind-mounted to a file naming that server: the machine's resolver is never touched and no
  query leaves the machine. ``opendkim-testmsg`` prints nothing and exits 0 when the signature
  verifies; it exits non-zero with the reason on stderr otherwise. It stops at the first
  signature, so a dual-signed message is checked one signature at a time
  (:func:`one_signature_each`).
"""

from __future__ import annotations

import os
import random
import re
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

import dkim
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from sender.dkim import DkimKey, public_record

_SIGNATURE = re.compile(rb"DKIM-Signature:.*?\r\n(?![ \t])", re.S | re.I)


def split_signatures(message: bytes) -> tuple[list[bytes], bytes]:
    """(the DKIM-Signature headers at the top of ``message``, the rest)."""
    signatures = []
    while (m := _SIGNATURE.match(message)) is not None:
        signatures.append(m.group(0))
        message = message[m.end():]
    return signatures, message


def one_signature_each(message: bytes) -> list[bytes]:
    """``message`` once per DKIM-Signature at its top, with that signature alone (the others
    are not covered by any signature, so removing them changes nothing a verifier checks)."""
    signatures, rest = split_signatures(message)
    return [sig + rest for sig in signatures]


def _dnsfunc(records: Mapping[str, str]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode("ascii").rstrip(".").lower())
        return value.encode("ascii") if value is not None else None
    return lookup


def dkimpy_results(message: bytes, records: Mapping[str, str]) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``message``, top first; ``records`` maps
    ``selector._domainkey.domain`` to its TXT value."""
    count = len(split_signatures(message)[0])
    verifier = dkim.DKIM(message)
    return [_dkimpy_one(verifier, i, records) for i in range(count)]


def _dkimpy_one(verifier: dkim.DKIM, index: int, records: Mapping[str, str]) -> bool:
    try:
        return bool(verifier.verify(idx=index, dnsfunc=_dnsfunc(records)))
    except dkim.DKIMException:  # what dkim.verify() also reads as "not verified"
        return False


class _TxtHandler(socketserver.BaseRequestHandler):
    server: _TxtServer

    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        self.server.queries.append(question.name.to_text())
        value = self.server.records.get(question.name.to_text().rstrip(".").lower())
        if value is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            strings = [value[i:i + 255].encode("ascii") for i in range(0, len(value), 255)]
            rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
            reply.answer.append(dns.rrset.from_rdata(question.name, 60, rdata))
        sock.sendto(reply.to_wire(), self.client_address)


class _TxtServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    records: Mapping[str, str]
    queries: list[str]


def _bind_loopback_53() -> _TxtServer:
    """A TXT server on port 53 of a loopback address nobody else uses (resolv.conf cannot name
    a port); a few random addresses are tried."""
    rng = random.Random(os.getpid())
    last: OSError | None = None
    for _ in range(20):
        host = f"127.53.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
        try:
            return _TxtServer((host, 53), _TxtHandler)
        except OSError as exc:
            last = exc
    raise RuntimeError(f"no loopback address free on port 53 (root needed): {last}")


class OpenDkim:
    """``with OpenDkim(records) as od: od.verify(message)`` runs ``opendkim-testmsg``."""

    def __init__(self, records: Mapping[str, str]) -> None:
        self.records = dict(records)
        self._server: _TxtServer | None = None
        self._resolv = ""

    def __enter__(self) -> OpenDkim:
        server = _bind_loopback_53()
        server.records, server.queries = self.records, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        fd, self._resolv = tempfile.mkstemp(prefix="outbox-dkim-resolv-")
        with os.fdopen(fd, "w") as f:
            f.write(f"nameserver {server.server_address[0]}\noptions timeout:2 attempts:2\n")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._resolv:
            os.unlink(self._resolv)

    @property
    def queries(self) -> list[str]:
        """The names the tool looked up (proves it asked this server)."""
        assert self._server is not None
        return self._server.queries

    def verify(self, message: bytes) -> tuple[int, str]:
        """(exit status, stderr) of ``opendkim-testmsg`` on ``message`` (its first signature)."""
        script = 'mount --bind "$1" /etc/resolv.conf && exec opendkim-testmsg'
        done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", self._resolv],
                              input=message, capture_output=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace").strip()

    def results(self, message: bytes) -> list[tuple[int, str]]:
        """:meth:`verify` of each signature of ``message`` alone, top first."""
        return [self.verify(m) for m in one_signature_each(message)]


def records_of(keys: Iterable[DkimKey]) -> dict[str, str]:
    """``{selector._domainkey.domain: public record}`` of ``keys``."""
    return {f"{k.selector}._domainkey.{k.domain}": public_record(k) for k in keys}
