"""Render an :class:`~sender.models.EmailJob` straight to RFC 5322 / MIME bytes.

``email.message.EmailMessage`` costs 3–4 ms a message; this renders the same thing in tens of
microseconds by writing the bytes directly with small encoders (``binascii`` does the body
encoding in C). ``tests/unit/test_mime.py`` proves the output by parsing it back with
``email.parser.BytesParser(policy=email.policy.default)``.

Decisions
---------
* Not done on purpose: lines starting ``From `` are not escaped (that is mbox's problem, not
  SMTP's).
* **On the wire**: ``data`` is the message (CRLF lines, ending with CRLF); ``wire`` is the same
  bytes dot-stuffed (a line starting ``.`` gets another, RFC 5321 4.5.2), what the SMTP channel
  writes after DATA's 354 as it is, so nothing scans the body again on the way out. Without a
  line starting ``.`` (nearly always) ``wire`` is ``data`` itself, not a copy.
* **Headers**: ``From``, ``To``, ``Reply-To`` (when set), ``Subject``, ``Date``, ``Message-ID``,
  ``MIME-Version``, then ``extra_headers`` (the worker's), then the job's ``headers``, then the
  ``Content-*`` headers. Lines are folded at 78 octets where possible; no line may exceed 998
  octets (a header that cannot be folded under 998 raises :class:`MimeError`).
* **Header text** (subject, display names, caller header values) that is printable ASCII is
  written as is (folded at spaces); anything else (non-ASCII, control characters, leading or
  trailing white space, text that looks like an encoded-word ``=?``) becomes RFC 2047
  encoded-words in UTF-8, ``Q`` or ``B``, whichever is shorter, each word at most 75 characters
  and holding whole characters only.
* **Caller headers** (``job.headers`` and ``extra_headers``): names must be RFC 5322 ftext and
  at most 76 characters; values must not contain CR, LF or NUL. Job headers follow the
  allow-list of :mod:`sender.job_headers` (job validation applies it first; this is the second
  line). The worker's ``extra_headers`` may not use :data:`RESERVED_HEADERS` (plus any
  ``Content-*`` name, which would describe our body), except ``List-Unsubscribe`` and
  ``List-Unsubscribe-Post``. A job header with the same name as one of ``extra_headers`` is
  dropped: the worker's header wins.
* **Addresses** are parsed by a strict little parser of our own and cross-checked with
  :func:`email.utils.getaddresses` (both must see exactly one address, the same one). ``From``
  and ``To`` take one mailbox (``addr`` or ``Display Name <addr>``), ``Reply-To`` a list.
  An unquoted display name may contain atoms, white space, non-ASCII, ``.`` and ``(...)``;
  ``, ; : < > [ ] @ \\`` must be quoted. RFC 2047 encoded-words in a display name are decoded.
  Control characters other than tab are dropped from a display name (RFC 5322 3.2.3: no word
  of a phrase holds one); a name left with white space only is no name (the bare address).
  Addr-specs are dot-atoms (no quoted local parts, no domain literals); local part ≤ 64
  octets, domain ≤ 255.
* **IDN**: a non-ASCII domain is always converted to its A-label, in the headers and in the
  envelope, by the function that makes the suppression keys
  (:func:`suppression.address.email_domain`: IDNA 2008, UTS 46, non-transitional), so the
  domain on the wire is the domain that was checked, and an IDN domain alone never needs
  SMTPUTF8. A non-ASCII *local part* is left as
  UTF-8 (RFC 6532) in the header and the envelope and sets ``smtputf8=True``; display names and
  the subject are RFC 2047-encoded even then, so the only raw UTF-8 is in addresses.
* **Bodies**: line endings normalised to CRLF and a final line break added when missing (like
  every mail program). ``7bit`` when the bytes are ASCII, without NUL, with lines ≤ 998 octets;
  otherwise quoted-printable, or base64 when that is smaller (mostly CJK text). Text + html is
  ``multipart/alternative`` (text first) with a boundary starting ``=_``, which can never appear
  in quoted-printable or base64 output, and is checked against 7bit parts.
* **Attachments** (``job.attachments``, validated by :class:`sender.models.Attachment`): the
  body and the images with a ``content_id`` (``Content-Disposition: inline``, ``Content-ID:
  <id>``, for ``<img src="cid:id">``) in a ``multipart/related`` whose ``type`` is the body's
  (RFC 2387); the other files after it in a ``multipart/mixed`` (``Content-Disposition:
  attachment``). Each file is base64; its name is a parameter of both ``Content-Disposition``
  (``filename``) and ``Content-Type`` (``name``, for older readers): a quoted string when it
  is printable ASCII of at most 60 characters, else RFC 2231 ``filename*0*=utf-8''%E5...``
  continuations of whole characters, so no header line exceeds 78 octets.
* **Footers**: ``footer_text`` is appended to the text part (on a new line); ``footer_html`` is
  inserted before the last ``</body>`` of the html, or appended when there is none. A footer for
  a part the job does not have is ignored.
* ``Message-ID`` is ``<{job.id}@{message_id_domain}>`` as the README fixes it. Note: job ids may
  contain ``:`` (:mod:`suppression.ids`), which is not dot-atom text, and strict parsers (Python's
  ``headerregistry``) misread such a Message-ID; the bytes still carry the id verbatim.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses
from functools import lru_cache

from sender import job_headers
from sender.models import Attachment, EmailJob
from suppression import ids
from suppression.address import BadAddress, email_domain
from suppression.address import email as canonical_email

__all__ = ["MimeError", "RenderedEmail", "check_job", "render_email", "dot_stuff",
           "RESERVED_HEADERS"]


class MimeError(ValueError):
    """Job content that cannot be rendered (bad header, too big); message says why."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    envelope_from: str  # the bare address of job.from_ (or an override)
    recipients: tuple[str, ...]  # (job.to,)
    data: bytes  # the full message, CRLF line endings
    message_id: str  # "<{job.id}@{message_id_domain}>"
    smtputf8: bool  # True when an address has non-ASCII (needs SMTPUTF8)
    wire: bytes  # data dot-stuffed for SMTP DATA (``data`` itself when no line starts ".")


#: Header names the worker's ``extra_headers`` may not set (lower case); ``content-*`` too.
#: Job headers follow the stricter allow-list of :mod:`sender.job_headers`.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "Reply-To", "Sender", "Return-Path",
        "Received", "DKIM-Signature", "List-Unsubscribe", "List-Unsubscribe-Post",
    )
)
#: Of those, the ones the worker's own ``extra_headers`` may set.
_OURS_MAY_SET = frozenset(("list-unsubscribe", "list-unsubscribe-post"))

_CRLF = "\r\n"
_MAX_LINE = 78  # RFC 5322 SHOULD
_HARD_LINE = 998  # RFC 5322 MUST
_MAX_NAME = 76  # longest header name we accept (keeps "Name: " + one encoded-word foldable)

_FTEXT_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
_PRINTABLE_ASCII_RE = re.compile(r"[\x20-\x7e]*\Z")
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_RAW_PHRASE_RE = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*\Z")
_DOMAIN_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
# dot-atom local part; UTF8-non-ascii allowed (RFC 6532), printability checked separately
_LOCAL_RE = re.compile(rf"[\u0080-\U0010ffff{_ATEXT}]+(?:\.[\u0080-\U0010ffff{_ATEXT}]+)*\Z")
# display-name tokens: quoted-string | white space | anything else up to a special
_PHRASE_TOKEN_RE = re.compile(r'"((?:[^"\\]|\\.)*)"|([ \t]+)|([^" \t,;:<>\[\]@\\]+)|(.)', re.S)
_BODY_CLOSE_RE = re.compile(r"</body\s*>", re.I)

# RFC 2047 "Q" for use anywhere a phrase may be: only letters, digits, ! * + - / stay literal.
_Q_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/ "
_Q_TABLE = {b: (chr(b) if b in _Q_SAFE else f"={b:02X}") for b in range(256)}
_Q_TABLE[0x20] = "_"
_EW_OVERHEAD = len("=?utf-8?q?") + len("?=")  # 12
_EW_MAX = 75
_B_CHUNK = (_EW_MAX - _EW_OVERHEAD) // 4 * 3  # 45 bytes -> 60 base64 characters

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ----------------------------------------------------------------------------------- headers


def _encoded_words(text: str, first_room: int) -> list[str]:
    """``text`` as RFC 2047 UTF-8 encoded-words (Q or B, the shorter), whole characters each.

    ``first_room`` is how many characters the first word may take (the rest of the first line).
    """
    data = text.encode("utf-8")
    n = len(data)
    q_len = n + 2 * len(data.translate(None, _Q_SAFE))
    b_len = (n + 2) // 3 * 4
    words: list[str] = []
    if q_len <= b_len:
        enc = data.decode("latin-1").translate(_Q_TABLE)
        room = first_room - _EW_OVERHEAD
        if room < 12:  # a 4-byte character takes 12
            room = _EW_MAX - _EW_OVERHEAD
        i, end = 0, len(enc)
        while i < end:
            j = i + room
            if j < end:
                if enc[j - 1] == "=":
                    j -= 1
                elif enc[j - 2] == "=":
                    j -= 2
                # do not split a UTF-8 sequence: back off while the next byte is a continuation
                while enc[j] == "=" and enc[j + 1] in "89AB" and j - 3 > i:
                    j -= 3
            else:
                j = end
            words.append(f"=?utf-8?q?{enc[i:j]}?=")
            i = j
            room = _EW_MAX - _EW_OVERHEAD
    else:
        cap = (first_room - _EW_OVERHEAD) // 4 * 3
        if cap < 6:
            cap = _B_CHUNK
        i = 0
        while i < n:
            j = i + cap
            if j < n:
                while data[j] & 0xC0 == 0x80:
                    j -= 1
            else:
                j = n
            encoded = binascii.b2a_base64(data[i:j], newline=False).decode("ascii")
            words.append(f"=?utf-8?b?{encoded}?=")
            i = j
            cap = _B_CHUNK
    return words


def _fold_tokens(prefix: str, tokens: Sequence[str]) -> str:
    """``prefix`` (``Name:``) and ``tokens`` joined by single spaces, folded before a space when a
    line would pass 78 characters. Never folds before the first token (the parser would keep the
    fold's white space) nor leaves a line of white space only."""
    lines = []
    line = prefix
    first = True
    for tok in tokens:
        if not first and len(line) + 1 + len(tok) > _MAX_LINE and not line.isspace():
            lines.append(line)
            line = " " + tok
        else:
            line = f"{line} {tok}"
        first = False
    lines.append(line)
    return _CRLF.join(lines) + _CRLF


def _needs_encoding(value: str) -> bool:
    return (
        not value.isascii()
        or _PRINTABLE_ASCII_RE.match(value) is None
        or "=?" in value
        or value[:1] == " "
        or value[-1:] == " "
    )


@lru_cache(maxsize=1024)
def _unstructured(name: str, value: str) -> str:
    """One unstructured header (Subject, caller headers), folded, CRLF-terminated."""
    if not value:
        return f"{name}:{_CRLF}"
    if not _needs_encoding(value):
        out = _fold_tokens(name + ":", value.split(" "))
        if max(map(len, out.split(_CRLF))) <= _HARD_LINE:
            return out
    return _fold_tokens(name + ":", _encoded_words(value, _MAX_LINE - len(name) - 2))


def _check_lines(header: str, name: str) -> str:
    if (len(header) > _HARD_LINE // 4
            and max(len(x.encode("utf-8")) for x in header.split(_CRLF)) > _HARD_LINE):
        raise MimeError(f"header {name} cannot be folded under {_HARD_LINE} octets a line")
    return header


# --------------------------------------------------------------------------------- addresses


def _idna_domain(domain: str) -> str:
    try:
        return email_domain(domain)
    except BadAddress as exc:
        raise MimeError(f"invalid internationalised domain: {exc}") from None


def _check_addr_spec(addr: str, what: str) -> str:
    """Validate a bare addr-spec; return it with an IDN domain as A-labels."""
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise MimeError(f"{what}: {addr!r} is not an email address")
    if not _LOCAL_RE.match(local) or not local.isprintable():
        raise MimeError(f"{what}: invalid local part in {addr!r}")
    if not local.isascii():  # invisible characters the ASCII-only checks above let through
        try:
            canonical_email(addr)
        except BadAddress as exc:
            raise MimeError(f"{what}: {exc}") from None
    if len(local.encode("utf-8", "surrogatepass")) > 64:
        raise MimeError(f"{what}: local part of {addr!r} is over 64 octets")
    if not domain.isascii():
        domain = _idna_domain(domain)
    if len(domain) > 255 or not _DOMAIN_RE.match(domain):
        raise MimeError(f"{what}: invalid domain in {addr!r}")
    return f"{local}@{domain}"


def _parse_phrase(display: str, what: str) -> str:
    """The display name of ``display`` (the text before ``<addr>``), unquoted."""
    parts: list[str | None] = []
    for m in _PHRASE_TOKEN_RE.finditer(display):
        quoted, space, atom, bad = m.groups()
        if quoted is not None:
            parts.append(re.sub(r"\\(.)", r"\1", quoted, flags=re.S))
        elif space is not None:
            parts.append(None)  # unquoted white space: one space, none at the ends
        elif atom is not None:
            parts.append(atom)
        else:
            hint = ("more than one address" if bad == ","
                    else f"unquoted {bad!r} in the display name")
            raise MimeError(f"{what}: {hint} in {display!r}")
    while parts and parts[0] is None:
        parts.pop(0)
    while parts and parts[-1] is None:
        parts.pop()
    name = "".join(" " if p is None else p for p in parts)
    if "=?" in name and '"' not in display:  # encoded-words are never decoded inside quotes
        try:
            name = str(make_header(decode_header(name)))
        except (UnicodeError, LookupError, ValueError, binascii.Error):
            pass  # not valid encoded-words: keep the text as it is
        if _BAD_VALUE_RE.search(name):
            raise MimeError(f"{what}: the display name decodes to CR, LF or NUL")
    return _visible_phrase(name)


# RFC 5322 3.2.3/3.2.4: a phrase's words (atoms, quoted strings) hold no control character
# but white space; obs-qtext allows them only as obsolete syntax, never to be generated (s. 4)
_PHRASE_CTL_RE = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _visible_phrase(name: str) -> str:
    """``name`` without control characters; "" when only white space is left (a phrase needs
    a word: the mailbox is then written as its bare address)."""
    name = _PHRASE_CTL_RE.sub("", name)
    return name if name.strip(" \t") else ""


def _parse_mailbox(value: str, what: str) -> tuple[str, str]:
    """``(display_name, addr_spec)`` of one mailbox, strictly; :class:`MimeError` otherwise."""
    if not isinstance(value, str):
        raise MimeError(f"{what}: not a string")
    if _BAD_VALUE_RE.search(value):
        raise MimeError(f"{what}: contains CR, LF or NUL")
    v = value.strip()
    if v.endswith(">"):
        lt = v.rfind("<")
        if lt < 0:
            raise MimeError(f"{what}: unbalanced '>' in {value!r}")
        addr = v[lt + 1 : -1].strip()
        name = _parse_phrase(v[:lt], what) if lt else ""
    else:
        addr, name = v, ""
    if not addr:
        raise MimeError(f"{what}: no address in {value!r}")
    if any(c in addr for c in ' \t<>,;:"()[]\\'):
        raise MimeError(f"{what}: {value!r} is not one valid address")
    # cross-check with the stdlib: it must see exactly this one address too
    pairs = getaddresses([v])
    if len(pairs) != 1 or pairs[0][1] != addr:
        raise MimeError(f"{what}: {value!r} is not exactly one address")
    return name, _check_addr_spec(addr, what)


def _split_address_list(value: str) -> list[str]:
    """Split on commas outside quoted strings and angle brackets."""
    out, start, quote, angle, i = [], 0, False, False, 0
    while i < len(value):
        c = value[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            out.append(value[start:i])
            start = i + 1
        i += 1
    out.append(value[start:])
    return [p for p in out if p.strip()]


def _phrase_tokens(name: str, room: int) -> list[str]:
    if _RAW_PHRASE_RE.match(name) and "=?" not in name:
        return name.split(" ")
    if _PRINTABLE_ASCII_RE.match(name) and "=?" not in name and name == name.strip(" ") \
            and len(name) + 2 < _MAX_LINE - 10:
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(name, room)


_BARE_ASCII_ADDR_RE = re.compile(
    rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


def _address_header(header: str, value: str, many: bool) -> tuple[str, tuple[str, ...]]:
    """The rendered ``header`` line(s) for ``value`` and the bare addresses it holds."""
    if len(value) <= 320 and _BARE_ASCII_ADDR_RE.match(value):
        # fast path (every To of a blast): a plain ASCII addr-spec, checked as strictly
        at = value.rindex("@")
        if at <= 64 and len(value) - at - 1 <= 255:
            return f"{header}: {value}\r\n", (value,)
    return _address_header_cached(header, value, many)


@lru_cache(maxsize=1024)
def _address_header_cached(header: str, value: str, many: bool) -> tuple[str, tuple[str, ...]]:
    pieces = _split_address_list(value) if many else [value]
    if not pieces:
        raise MimeError(f"{header}: no address in {value!r}")
    tokens: list[str] = []
    addrs = []
    for k, piece in enumerate(pieces):
        name, addr = _parse_mailbox(piece, header)
        addrs.append(addr)
        room = _MAX_LINE - len(header) - 2 if not tokens else _MAX_LINE - 1
        mailbox = _phrase_tokens(name, room) + [f"<{addr}>"] if name else [addr]
        if k < len(pieces) - 1:
            mailbox[-1] += ","
        tokens.extend(mailbox)
    return _check_lines(_fold_tokens(header + ":", tokens), header), tuple(addrs)


# ------------------------------------------------------------------------------ caller headers


def _caller_header(name: str, value: str, ours: bool) -> str:
    if not isinstance(name, str) or not isinstance(value, str):
        raise MimeError(f"header {name!r}: name and value must be strings")
    return _caller_header_cached(name, value, ours)


@lru_cache(maxsize=4096)
def _caller_header_cached(name: str, value: str, ours: bool) -> str:
    if not _FTEXT_RE.match(name):
        raise MimeError(f"invalid header name {name!r}")
    if len(name) > _MAX_NAME:
        raise MimeError(f"header name {name[:20]!r}... is over {_MAX_NAME} characters")
    lname = name.lower()
    if not ours:
        why = job_headers.refusal(name)
        if why is not None:
            raise MimeError(why)
    elif (lname in RESERVED_HEADERS and lname not in _OURS_MAY_SET) or lname.startswith("content-"):
        raise MimeError(f"header {name} is reserved")
    if _BAD_VALUE_RE.search(value):
        raise MimeError(f"header {name}: value contains CR, LF or NUL")
    return _check_lines(_unstructured(name, value), name)


@lru_cache(maxsize=256)
def _message_id_suffix(domain: str) -> str:
    if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
        raise MimeError(f"invalid message_id_domain {domain!r}")
    return f"@{domain}>"


_last_date: tuple[int, str] = (-1, "")


def _format_date(ts: float) -> str:
    global _last_date
    sec = int(ts)
    if _last_date[0] == sec:
        return _last_date[1]
    t = time.gmtime(sec)
    out = (f"Date: {_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000\r\n")
    _last_date = (sec, out)
    return out


# ------------------------------------------------------------------------------------ bodies


def _normalise(body: str) -> str:
    """CRLF→LF, lone CR→LF, and a final line break."""
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    return body


#: bytes quoted-printable leaves as they are (space and tab only before a non-blank)
_QP_LITERAL = bytes(range(33, 127)).replace(b"=", b"") + b" \t"
_QP_LITERAL_CRLF = _QP_LITERAL + b"\r\n"


def _base64(data: bytes) -> bytes:
    enc = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join([enc[i : i + 76] for i in range(0, len(enc), 76)]) + b"\r\n"


def _encode_body(body: str) -> tuple[bytes, bytes]:
    """``(content-transfer-encoding, encoded bytes)`` for a normalised (LF) body."""
    data = body.encode("utf-8").replace(b"\n", b"\r\n")
    if data.isascii() and b"\x00" not in data and (
        len(data) <= _HARD_LINE or max(map(len, data.split(b"\r\n"))) <= _HARD_LINE
    ):
        return b"7bit", data
    b64_len = (len(data) + 2) // 3 * 4
    b64_len += (b64_len + 75) // 76 * 2
    # each byte that is not literal costs 3 in quoted-printable, soft line breaks a few per cent:
    # estimate, and encode once (exactly only when the estimate says quoted-printable)
    qp_estimate = len(data) + 2 * len(data.translate(None, _QP_LITERAL_CRLF))
    if qp_estimate + qp_estimate // 25 > b64_len:
        return b"base64", _base64(data)
    # binascii's encoder (C): escapes =, controls, 8-bit bytes, white space before a line break
    # and a lone "."; soft line breaks keep lines within 76; CRLF in, CRLF out
    qp = binascii.b2a_qp(data, istext=True)
    if len(qp) > b64_len:
        return b"base64", _base64(data)
    return b"quoted-printable", qp


def _insert_html_footer(html: str, footer: str) -> str:
    """``footer`` before the last ``</body>`` (any case, blanks before ``>``), else at the end."""
    i = len(html)
    while (i := html.rfind("</", 0, i)) >= 0:
        if _BODY_CLOSE_RE.match(html, i):
            return html[:i] + footer + html[i:]
    return html + footer


def _part(subtype: bytes, body: str) -> tuple[bytes, bytes, bytes]:
    cte, data = _encode_body(body)
    head = b"".join((b"Content-Type: text/", subtype,
                     b"; charset=utf-8\r\nContent-Transfer-Encoding: ", cte, b"\r\n"))
    return head, data, cte


def _multipart(subtype: bytes, parts: Sequence[tuple[bytes, bytes, bytes]],
               root_type: bytes | None = None) -> tuple[bytes, bytes]:
    """``(Content-Type line, body)`` of a ``multipart/<subtype>`` of ``parts`` (head, data,
    transfer encoding). The boundary starts ``=_``, which base64 and quoted-printable never
    hold; the other parts (7bit, nested multiparts) are checked for it."""
    while True:
        boundary = b"=_" + secrets.token_hex(16).encode("ascii")
        if not any(cte not in (b"base64", b"quoted-printable") and boundary in data
                   for _, data, cte in parts):
            break
    delim = b"--" + boundary
    body = b"".join(b"".join((delim, b"\r\n", h, b"\r\n", d, b"\r\n")) for h, d, _ in parts)
    root = b';\r\n type="' + root_type + b'";\r\n' if root_type else b";"
    return (b"Content-Type: multipart/" + subtype + root + b' boundary="' + boundary
            + b'"\r\n', body + delim + b"--\r\n")


def _with_attachments(body: tuple[bytes, bytes, bytes],
                      attachments: Sequence[Attachment]) -> tuple[bytes, bytes]:
    """The message body with its attachments: inline ones (with a ``content_id``) beside it
    in a ``multipart/related`` (RFC 2387, the body its root), the others after that in a
    ``multipart/mixed`` (RFC 2046 5.1.3)."""
    inline = [_attachment_part(a, b"inline") for a in attachments if a.content_id]
    files = [_attachment_part(a, b"attachment") for a in attachments if not a.content_id]
    b_head, b_data, b_cte = body
    if inline:
        root = re.match(rb"Content-Type: ([^;\r]+)", b_head)
        b_head, b_data = _multipart(b"related", [body, *inline], root.group(1) if root else None)
        b_cte = b"multipart"
    if files:
        b_head, b_data = _multipart(b"mixed", [(b_head, b_data, b_cte), *files])
    return b_head, b_data


def _attachment_part(a: Attachment, disposition: bytes) -> tuple[bytes, bytes, bytes]:
    """One file as a base64 MIME part; its name as an RFC 2231 parameter on both
    Content-Type (``name``, for old readers) and Content-Disposition (``filename``)."""
    head = "".join((
        "Content-Type: ", a.content_type, _parameter("name", a.filename), "\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "Content-Disposition: ", disposition.decode("ascii"),
        _parameter("filename", a.filename), "\r\n",
        f"Content-ID: <{a.content_id}>\r\n" if a.content_id else "",
    ))
    return head.encode("ascii"), _base64(a.data()), b"base64"


#: RFC 2231 attribute-char: ASCII but CTLs, space, ``*'%`` and the tspecials
_ATTRIBUTE_CHARS = "!#$&+-.^_`|~"
_PARAM_CHUNK = 60  # characters of one folded parameter line's value


def _parameter(name: str, value: str) -> str:
    """``; name="value"`` (folded onto its own line) for a short printable ASCII value, else
    RFC 2231 ``; name*0*=utf-8''%E5...`` continuations of at most 60 characters each, so no
    line exceeds 78 octets whatever the length or script of the name."""
    # "<" or ">" quoted: Python's parser reads '"<>"' back as '' (RFC 2231 keeps them)
    if _PRINTABLE_ASCII_RE.match(value) and len(value) <= _PARAM_CHUNK \
            and "<" not in value and ">" not in value:
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return f';\r\n {name}="{quoted}"'
    chunks = [""]
    for char in value:  # whole characters per line: no reader has to join split UTF-8
        encoded = urllib.parse.quote(char, safe=_ATTRIBUTE_CHARS)
        if len(chunks[-1]) + len(encoded) > _PARAM_CHUNK:
            chunks.append("")
        chunks[-1] += encoded
    chunks[0] = "utf-8''" + chunks[0]
    return "".join(f";\r\n {name}*{i}*={chunk}" for i, chunk in enumerate(chunks))


# -------------------------------------------------------------------------------------- main


def render_email(
    job: EmailJob,
    *,
    message_id_domain: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    footer_text: str | None = None,
    footer_html: str | None = None,
    envelope_from: str | None = None,
    date: float | None = None,
    max_bytes: int = 10 * 1024 * 1024,
) -> RenderedEmail:
    """Render ``job`` to the bytes of an RFC 5322 message; :class:`MimeError` says why not."""
    try:
        return _render(job, message_id_domain, extra_headers, footer_text, footer_html,
                       envelope_from, date, max_bytes)
    except UnicodeEncodeError as exc:
        raise MimeError(f"text is not valid Unicode (lone surrogate?): {exc.reason}") from None


def check_job(job: EmailJob) -> None:
    """What :func:`render_email` checks of the job's own content, by the same functions,
    without rendering the body: ``From``, ``To``, ``Reply-To`` (one valid address each, a
    list for ``Reply-To``; dot-atom local parts, a valid domain, IDNA for a non-ASCII one),
    ``Subject`` and the job's ``headers`` (allow-list, foldable under 998 octets a line).
    :class:`MimeError` says what is wrong. Job validation (:mod:`sender.validation`) runs it,
    so what the renderer would refuse is refused before a job is published or claimed."""
    try:
        _address_header("From", job.from_, False)
        _address_header("To", job.to, False)
        if job.reply_to:
            _address_header("Reply-To", job.reply_to, True)
        _check_lines(_unstructured("Subject", job.subject), "Subject")
        for name, value in job.headers.items():
            _caller_header(name, value, False)
    except UnicodeEncodeError as exc:
        raise MimeError(f"text is not valid Unicode (lone surrogate?): {exc.reason}") from None


def _render(job: EmailJob, message_id_domain: str, extra_headers: Sequence[tuple[str, str]],
            footer_text: str | None, footer_html: str | None, envelope_from: str | None,
            date: float | None, max_bytes: int) -> RenderedEmail:
    job_id = job.id
    if not ids.is_id(job_id):
        raise MimeError(f"job id {job_id!r} cannot be used in a Message-ID")
    message_id = "<" + job_id + _message_id_suffix(message_id_domain)

    for what, v in (("from", job.from_), ("to", job.to), ("reply_to", job.reply_to or "")):
        if not isinstance(v, str):
            raise MimeError(f"{what} must be a string")
    from_line, from_addrs = _address_header("From", job.from_, False)
    to_line, to_addrs = _address_header("To", job.to, False)
    headers = [from_line, to_line]
    addrs = from_addrs + to_addrs
    if job.reply_to:
        reply_line, reply_addrs = _address_header("Reply-To", job.reply_to, True)
        headers.append(reply_line)
        addrs += reply_addrs
    subject = job.subject
    if not isinstance(subject, str) or _BAD_VALUE_RE.search(subject):
        raise MimeError("subject contains CR, LF or NUL")
    headers.append(_check_lines(_unstructured("Subject", subject), "Subject"))
    if date is None:
        date = time.time()
    try:
        headers.append(_format_date(date))
    except (OverflowError, ValueError, OSError):
        raise MimeError(f"invalid date {date!r}") from None
    headers.append(f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n")

    ours = set()
    for item in extra_headers:
        name, value = item
        headers.append(_caller_header(name, value, True))
        ours.add(name.lower())
    job_headers = job.headers
    if job_headers:
        if not isinstance(job_headers, dict):
            raise MimeError("headers must be a mapping of name to value")
        for name, value in job_headers.items():
            line = _caller_header(name, value, False)
            if name.lower() not in ours:
                headers.append(line)

    if envelope_from is None:
        env_from = from_addrs[0]
    elif envelope_from == "":
        env_from = ""  # the null reverse-path
    else:
        env_from = _check_addr_spec(envelope_from.strip(), "envelope_from")
        addrs += (env_from,)
    smtputf8 = not all(a.isascii() for a in addrs)

    text = job.text or None
    html = job.html or None
    if text is None and html is None:
        raise MimeError("an email needs text or html")
    if (len(text) if text else 0) + (len(html) if html else 0) > max_bytes:
        raise MimeError(f"message is at least {max_bytes + 1} bytes, over the limit of {max_bytes}")
    if text is not None:
        text = _normalise(text)
        if footer_text:
            text += _normalise(footer_text)
    if html is not None:
        if footer_html:
            html = _insert_html_footer(html, footer_html)
        html = _normalise(html)

    head = "".join(headers).encode("utf-8")
    if text is not None and html is not None:
        t_head, t_data, t_cte = _part(b"plain", text)
        h_head, h_data, h_cte = _part(b"html", html)
        b_head, b_data = _multipart(b"alternative", [(t_head, t_data, t_cte),
                                                     (h_head, h_data, h_cte)])
        b_cte = b"multipart"
    else:
        b_head, b_data, b_cte = (_part(b"plain", text) if text is not None
                                 else _part(b"html", html or ""))
    if job.attachments:
        b_head, b_data = _with_attachments((b_head, b_data, b_cte), job.attachments)
    data = b"".join((head, b_head, b"\r\n", b_data))
    if len(data) > max_bytes:
        raise MimeError(f"message is {len(data)} bytes, over the limit of {max_bytes}")
    return RenderedEmail(envelope_from=env_from, recipients=to_addrs, data=data,
                         message_id=message_id, smtputf8=smtputf8, wire=dot_stuff(data))


def dot_stuff(data: bytes) -> bytes:
    """``data`` (CRLF lines) as SMTP DATA carries it: a ``.`` starting a line doubled (RFC 5321
    4.5.2; the server takes it off again). One C-speed pass; ``data`` itself when no line starts
    with ``.``."""
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed[:1] == b"." else stuffed
