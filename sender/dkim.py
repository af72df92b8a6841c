"""DKIM signatures (RFC 6376), RSA-SHA256 and Ed25519-SHA256 (RFC 8463), relaxed/relaxed.

Why not dkimpy: its ``dkim.sign`` does RSA in pure Python, about 8.3 ms of CPU a message on
this kind of machine. Here the canonicalisation and the hashes are a few C-speed byte
operations (RFC 6376 3.4.2 and 3.4.4, property-tested against dkimpy's in
``tests/unit/test_dkim.py``) and the signature is OpenSSL's, through ``cryptography``
(RSA-2048 about 250 µs, Ed25519 about 30 µs). ``python -m benchmarks.dkim`` measures both.

Contract
--------
=====================  ========================================================================
input                  the whole message as bytes, CRLF line ends, header block, empty line,
                       body (what :func:`sender.mime.render_email` gives as ``data``); not
                       dot-stuffed
output                 one ``DKIM-Signature`` header per key, RSA first then Ed25519 (RFC 8463
                       dual signing), prepended; the message itself is not changed, so the
                       dot-stuffed form is ``signature_headers(data) + rendered.wire``
c=                     ``relaxed/relaxed``
h=                     every header of :data:`DEFAULT_HEADERS` the message has, once per
                       instance (bottom-up, RFC 6376 5.4.2), in that order; ``From`` and
                       ``Reply-To`` once more than present (:data:`OVERSIGNED`: one added
                       later breaks the signature)
t=                     the signing time (``now``, seconds since the epoch)
bh=, b=                SHA-256 of the relaxed body; the signature over the SHA-256 of the
                       signed headers (Ed25519 signs that 32-byte digest, RFC 8463 3)
lines                  the signature header is folded under 78 characters a line
=====================  ========================================================================

Errors: :class:`DkimError` (a ``ValueError``) for a key, selector, domain or message that cannot
be signed; its text never holds key material.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from suppression.address import BadAddress, email_domain

__all__ = [
    "Algorithm", "DEFAULT_HEADERS", "OVERSIGNED", "DkimError", "DkimKey", "DkimSigner",
    "PrivateKey", "generate_ed25519", "generate_rsa", "public_record", "relaxed_body",
    "relaxed_header", "txt_strings",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: RFC 6376 5.4.1's recommended headers, then the ones issue 18 adds (one-click unsubscribe,
#: the Message-ID and the MIME headers that say how to read the body).
DEFAULT_HEADERS: tuple[str, ...] = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc",
    "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc",
    "In-Reply-To", "References",
    "List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner",
    "List-Archive", "List-Unsubscribe-Post",
    "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)

#: Listed in h= once more than the message has them, so that one added later (a second From,
#: a Reply-To on a message that had none, diverting the replies) breaks the signature.
OVERSIGNED: tuple[str, ...] = ("From", "Reply-To")

_MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers refuse smaller keys
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z", re.IGNORECASE)
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+\Z")
_FTEXT_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")

_FIELD_SPLIT = re.compile(rb"\r\n(?![ \t])")  # a line not starting with WSP starts a field
_WSP_RUN = re.compile(rb"[ \t]{2,}|\t")  # only the runs relaxed canonicalisation changes
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_MAX_LINE = 78

_PKCS1 = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())


class DkimError(ValueError):
    """A key, selector, domain or message that cannot be signed; the message says why."""


# ------------------------------------------------------------------------------------ keys


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key of a sending domain: ``d=domain``, ``s=selector``, ``a=algorithm``.

    ``domain`` is lower-case A-labels (use :meth:`from_pem`, which converts an IDN);
    ``algorithm`` must match the key's type; RSA keys have at least 1024 bits."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not _DOMAIN_RE.match(self.domain):
            raise DkimError(f"DKIM domain {self.domain!r} is not a lower-case ASCII domain")
        if not isinstance(self.selector, str) or not _SELECTOR_RE.match(self.selector):
            raise DkimError(f"DKIM selector {self.selector!r} is not dot-separated "
                            "letters, digits and hyphens")
        expected = _algorithm_of(self.private_key)
        if expected != self.algorithm:
            raise DkimError(f"algorithm {self.algorithm!r} does not match the key ({expected})")

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes) -> DkimKey:
        """The key in ``pem`` (PKCS8 or traditional, unencrypted) for ``domain`` (an IDN is
        converted to A-labels) and ``selector``; the algorithm follows from the key."""
        return cls._load(domain, selector, pem, validate=True)

    @classmethod
    def from_sealed_pem(cls, domain: str, selector: str, pem: bytes) -> DkimKey:
        """:meth:`from_pem` for a key Outbox made itself and has just unsealed from its domain
        store (``suppression.sealed``: AES-256-GCM, so its bytes are exactly those made by
        ``cryptography``'s generator): OpenSSL's RSA key check is skipped. It costs ~30 ms of
        CPU for a 2048-bit key, against ~15 µs for the rest, on each key a worker loads (every
        sending domain, at its first message after start-up). Never for a key from outside."""
        return cls._load(domain, selector, pem, validate=False)

    @classmethod
    def _load(cls, domain: str, selector: str, pem: bytes, *, validate: bool) -> DkimKey:
        try:
            key = serialization.load_pem_private_key(
                pem, password=None, unsafe_skip_rsa_key_validation=not validate)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise DkimError("not an unencrypted PEM private key") from None  # never echo it
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise DkimError(f"DKIM keys are RSA or Ed25519, not {type(key).__name__}")
        try:
            a_label = email_domain(domain)
        except BadAddress as exc:
            raise DkimError(f"DKIM domain: {exc}") from None
        return cls(a_label, selector, _algorithm_of(key), key)


def _algorithm_of(key: object) -> Algorithm:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise DkimError(f"RSA key of {key.key_size} bits: DKIM needs {_MIN_RSA_BITS} at least")
        return "rsa-sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256"
    raise DkimError(f"DKIM keys are RSA or Ed25519, not {type(key).__name__}")


def _pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate_rsa(bits: int = 2048) -> bytes:
    """A new RSA key (public exponent 65537) as unencrypted PKCS8 PEM."""
    if bits < _MIN_RSA_BITS:
        raise DkimError(f"RSA keys for DKIM have at least {_MIN_RSA_BITS} bits")
    return _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def generate_ed25519() -> bytes:
    """A new Ed25519 key as unencrypted PKCS8 PEM."""
    return _pkcs8(ed25519.Ed25519PrivateKey.generate())


def public_record(key: DkimKey) -> str:
    """The DNS TXT value to publish at ``{selector}._domainkey.{domain}``: RSA as the base64
    of the DER SubjectPublicKeyInfo (RFC 6376 3.6.1), Ed25519 as the raw 32-byte key (RFC 8463
    4). Longer than 255 characters for RSA: publish it as :func:`txt_strings`."""
    public = key.private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def txt_strings(value: str) -> tuple[str, ...]:
    """``value`` as the character-strings of one TXT record (at most 255 octets each; the
    verifier concatenates them, RFC 6376 3.6.2.2)."""
    return tuple(value[i:i + 255] for i in range(0, len(value), 255)) or ("",)


# -------------------------------------------------------------------------- canonicalisation


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: ``name`` lower-cased, ``value`` unfolded (CRLF removed), runs of WSP
    as one space, WSP at either end and around the colon removed; ``name:value\\r\\n``."""
    return name.rstrip(b" \t").lower() + b":" + _relaxed_value(value) + b"\r\n"


def _relaxed_value(value: bytes) -> bytes:
    """A header value (after the colon) canonicalised as :func:`relaxed_header` says."""
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip(b" \t")


def _plain(head: bytes) -> bool:
    """No tab and no two WSP in a row anywhere in the header block, not even across a fold:
    then relaxed canonicalisation of each value is only :func:`_unfold_strip`. Three
    searches over the block cost less than three over each of a dozen values."""
    return b"\t" not in head and b"  " not in head and b" \r\n" not in head


def _unfold_strip(value: bytes) -> bytes:
    """:func:`_relaxed_value` of a value that has no tab and no WSP run after unfolding."""
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    return value.strip(b" ")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP at the end of each line removed, other runs of WSP as one space,
    empty lines at the end removed, a final CRLF added to a non-empty body; an empty body
    (or one of empty lines only) is empty."""
    tab = b"\t" in body  # one memchr; the multi-byte searches cost ~0.7 ns a byte each
    if b" \r\n" in body or (tab and b"\t\r\n" in body):
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if tab or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end == 0:
        return b""
    return body + b"\r\n" if end == len(body) else body[:end + 2]


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header block without its last CRLF, body)."""
    if not isinstance(message, bytes):
        raise DkimError("the message must be bytes")
    if message.startswith(b"\r\n"):
        raise DkimError("the message has no header")
    i = message.find(b"\r\n\r\n")
    if i >= 0:
        return message[:i], message[i + 4:]
    if not message.endswith(b"\r\n"):
        raise DkimError("the message's header block does not end with CRLF")
    return message[:-2], b""


def _fields(head: bytes) -> dict[bytes, list[bytes]]:
    """Every header field's value (after the colon, folds kept) by lower-case name, in
    order."""
    fields: dict[bytes, list[bytes]] = {}
    for raw in _FIELD_SPLIT.split(head):
        colon = raw.find(b":")
        if colon <= 0:
            raise DkimError("the message has a header line without a name and colon")
        name = raw[:colon].rstrip(b" \t").lower()
        values = fields.get(name)
        if values is None:
            fields[name] = [raw[colon + 1:]]
        else:
            values.append(raw[colon + 1:])
    return fields


# ----------------------------------------------------------------------------------- signer


class DkimSigner:
    """Signs messages with one or more :class:`DkimKey`; built once (the header list)."""

    def __init__(self, headers: Sequence[str] = DEFAULT_HEADERS, *,
                 oversign: Iterable[str] = OVERSIGNED) -> None:
        names = list(dict.fromkeys(headers))
        oversign = tuple(oversign)
        for name in (*names, *oversign):
            if not isinstance(name, str) or not _FTEXT_RE.match(name):
                raise DkimError(f"invalid header name {name!r}")
        lower = [n.lower() for n in names]
        if "from" not in lower:
            raise DkimError("a DKIM signature must cover From (RFC 6376 5.4)")
        if len(set(lower)) != len(lower):
            raise DkimError("a header is listed twice (names are case-insensitive)")
        over = {n.lower() for n in oversign}
        #: (lower-case bytes, name for h=, extra oversigned instances)
        self._plan = tuple((n.encode("ascii"), name, int(n in over))
                           for n, name in zip(lower, names, strict=True))

    def sign(self, message: bytes, keys: Sequence[DkimKey], *, now: int | None = None) -> bytes:
        """``message`` with one DKIM-Signature header per key prepended (none: unchanged)."""
        return self.signature_headers(message, keys, now=now) + message

    def signature_headers(self, message: bytes, keys: Sequence[DkimKey], *,
                          now: int | None = None) -> bytes:
        """Only the DKIM-Signature headers :meth:`sign` would prepend (CRLF-terminated), for
        a caller that holds the message twice (plain and dot-stuffed)."""
        if not keys:
            return b""
        head, body = _split(message)
        h_tag, canonical = self._select(_fields(head), _plain(head))
        signed = hashlib.sha256(canonical)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        t = int(time.time()) if now is None else _timestamp(now)
        out = []
        for key in sorted(keys, key=lambda k: k.algorithm != "rsa-sha256"):
            out.append(_signature(key, h_tag, body_hash, t, signed))
        return b"".join(out)

    def _select(self, fields: dict[bytes, list[bytes]],
                plain: bool) -> tuple[tuple[str, ...], bytes]:
        """The h= names and the signed headers canonicalised in h= order (several instances
        of a name: the last first, RFC 6376 5.4.2). ``plain``: see :func:`_plain`."""
        relaxed = _unfold_strip if plain else _relaxed_value
        if b"from" not in fields:
            raise DkimError("the message has no From header")
        h_tag: list[str] = []
        canonical: list[bytes] = []
        for lower, name, extra in self._plan:
            values = fields.get(lower)
            if values is None:
                if extra:
                    h_tag.append(name)
                continue
            h_tag.extend([name] * (len(values) + extra))
            for value in reversed(values):
                canonical += (lower, b":", relaxed(value), b"\r\n")
        return tuple(h_tag), b"".join(canonical)


def _timestamp(now: int) -> int:
    if not isinstance(now, int) or isinstance(now, bool) or now < 0:
        raise DkimError(f"now must be seconds since the epoch, not {now!r}")
    return now


def _signature(key: DkimKey, h_tag: tuple[str, ...], body_hash: str, t: int,
               signed: hashlib._Hash) -> bytes:
    """One folded DKIM-Signature header for ``key``: the value up to ``b=`` is hashed after
    the signed headers (relaxed, no final CRLF, RFC 6376 3.7), then ``b=`` is filled in."""
    before_t, after_t = _template(key.algorithm, key.domain, key.selector, h_tag)
    value = f"{before_t}{t}{after_t}{body_hash};\r\n b="
    digest_input = signed.copy()
    digest_input.update(b"dkim-signature:" + _relaxed_value(value.encode("ascii")))
    digest = digest_input.digest()
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        raw = private.sign(digest, _PKCS1, _PREHASHED)
    else:
        raw = private.sign(digest)
    return f"DKIM-Signature:{value}{_fold_b(base64.b64encode(raw).decode())}\r\n".encode()


@lru_cache(maxsize=1024)
def _template(algorithm: str, domain: str, selector: str,
              h_tag: tuple[str, ...]) -> tuple[str, str]:
    """The folded value around ``t=``'s digits, up to ``bh=``: the same for every message
    with these headers (``t=`` has 10 digits from 2001 to 2286, so the folds do not move)."""
    last = len(h_tag) - 1
    tags = ["v=1;", f"a={algorithm};", "c=relaxed/relaxed;", f"d={domain};",
            f"s={selector};", "t=0000000000;"]
    tags += [("h=" if i == 0 else "") + name + (";" if i == last else ":")
             for i, name in enumerate(h_tag)]
    before, _, after = (_fold(tags) + "\r\n bh=").partition("t=0000000000")
    return before + "t=", after


def _fold(tokens: list[str]) -> str:
    """`` tag=value; ...`` after ``DKIM-Signature:``, folded before 78 characters: between
    tags, and in ``h=`` after a colon (FWS is allowed there, RFC 6376 3.5). The h= names
    follow each other without a space unless folded."""
    out: list[str] = []
    width = len("DKIM-Signature:")
    for token in tokens:
        glue = "" if out and out[-1].endswith(":") else " "
        if width + len(glue) + len(token) > _MAX_LINE and out:
            out.append("\r\n ")
            width = 1
        elif glue:
            out.append(glue)
            width += 1
        out.append(token)
        width += len(token)
    return "".join(out)


def _fold_b(signature: str) -> str:
    """The base64 signature after `` b=``, lines of at most 78 characters."""
    first = _MAX_LINE - len(" b=")
    rest = _MAX_LINE - 1
    parts = [signature[:first]]
    parts.extend(signature[i:i + rest] for i in range(first, len(signature), rest))
    return "\r\n ".join(parts)
