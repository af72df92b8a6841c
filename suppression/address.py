"""The one canonical form of an address, for every key and comparison.

Every place an address becomes a key (the gate and its Lua keys, the suppression, consent and
preference stores, the CLI, the admin API, provider webhooks and events) calls
:func:`suppression.channels.normalise`, which applies the channel's :class:`AddressKind`
(:data:`EMAIL`, :data:`PHONE`); nothing falls back to another form. An address that has no
canonical form raises :class:`BadAddress` (a job is rejected with that reason before anything
is claimed).

E-mail: ``local@domain``, trimmed of surrounding white space, split at the last ``@``.

* The local part is lower-cased, then put in Unicode NFC (the local part is technically case
  sensitive, but no real mailbox provider treats ``Bob`` and ``bob`` as two people, so
  comparing case-insensitively is the safe side for suppression).
* The domain is mapped and checked by IDNA 2008 with UTS 46 (the ``idna`` package,
  ``uts46=True, transitional=False``) and written as its A-label, lower case:
  ``BÜCHER.example``, ``bücher.example`` and ``xn--bcher-kva.example`` are one domain
  (``xn--bcher-kva.example``); full-width letters and ideographic full stops map too.
  The renderer writes the same A-label on the wire (:func:`email_domain`).
* Invisible and control characters anywhere in the address are refused, not stripped (a
  ``us\\u200ber@example.com`` is an attack on the keys, not a typo): Unicode categories Cc
  (C0/C1 controls), Cf (format: zero-width space/joiner/non-joiner, BOM, soft hyphen, bidi
  controls, tags), Cs, Co, Cn (surrogates, private use, unassigned), Zs/Zl/Zp (spaces and line
  separators inside the address), and the other default-ignorable code points that render as
  nothing (:data:`INVISIBLE`: combining grapheme joiner, Hangul fillers, variation selectors...).

Keys written before this form existed used ``address.strip().lower()``: the same for an ASCII
address, but a non-ASCII domain was kept as its lower-cased U-label (``user@bücher.example``)
and a local part was not NFC-normalised. Such entries are no longer read by the gate; see the
README ("Addresses") for how to find and rewrite them.

Phone numbers: E.164 (``+85291234567``); numbers without a ``+`` are read in ``default_region``
(Hong Kong unless told otherwise).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import idna
import phonenumbers


class BadAddress(ValueError):
    """The address cannot be normalised for its channel."""


#: Unicode general categories refused anywhere in an e-mail address.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
#: Default-ignorable (or blank) code points outside those categories: they render as nothing.
INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F,
     0x2800, 0x3164, 0xFFA0, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)
# an ASCII address needs no Unicode look-ups: refuse controls, DEL and spaces directly
_ASCII_BAD = re.compile(r"[\x00-\x20\x7f]")
# what a phone number as people write it looks like (``+852 9123 4567``, ``(202) 555-0123``)
_PHONE_LIKE = re.compile(r"^[+(0-9][0-9 ()\-.]*$")


def email(address: str) -> str:
    """The canonical form of an e-mail address (see the module docstring)."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise BadAddress(f"not an e-mail address: {address!r}")
    if address.isascii():
        bad = _ASCII_BAD.search(address)
        if bad:
            raise BadAddress(_invisible(address, bad.start()))
    else:
        for i, char in enumerate(address):
            if ord(char) in INVISIBLE or unicodedata.category(char) in REFUSED_CATEGORIES:
                raise BadAddress(_invisible(address, i))
    if "@" in local:
        raise BadAddress(f"more than one '@' in {address!r}")
    if not local.isascii():
        local = unicodedata.normalize("NFC", local.lower())
    else:
        local = local.lower()
    return f"{local}@{email_domain(domain)}"


@lru_cache(maxsize=65536)
def email_domain(domain: str) -> str:
    """A mail domain as IDNA 2008 / UTS 46 A-labels, lower case; :class:`BadAddress` if it is
    not one (empty label, trailing dot, disallowed code point, bad punycode...)."""
    try:
        a_label = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (UnicodeError, ValueError) as exc:  # idna.IDNAError is a UnicodeError
        raise BadAddress(f"invalid domain {domain!r}: {exc}") from None
    if a_label.endswith("."):
        raise BadAddress(f"invalid domain {domain!r}: a mail domain has no trailing dot")
    return a_label.lower()


def _invisible(address: str, i: int) -> str:
    char = address[i]
    name = unicodedata.name(char, "control character" if ord(char) < 0xA0 else "unnamed")
    return (f"invisible or control character U+{ord(char):04X} ({name}) at position {i} "
            f"of the address {address!r}")


def e164(number: str, *, default_region: str = "HK") -> str:
    """A phone number in E.164; :class:`BadAddress` if it is not a possible number."""
    try:
        parsed = phonenumbers.parse(number, None if number.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise BadAddress(f"not a phone number: {number!r} ({exc})") from None
    if not phonenumbers.is_possible_number(parsed):
        raise BadAddress(f"not a possible phone number: {number!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class AddressKind:
    """What the addresses of a channel look like: ``normalise(address, default_region)`` gives
    the canonical form (:class:`BadAddress` when there is none); ``looks_like`` is the cheap
    test :func:`suppression.channels.guess` uses when a row names no channel."""

    name: str
    normalise: Callable[[str, str], str]
    looks_like: Callable[[str], bool]


#: an e-mail address (``local@domain``)
EMAIL = AddressKind("e-mail address", lambda address, _region: email(address),
                    lambda address: "@" in address)
#: a phone number, canonical in E.164 (``+85291234567``)
PHONE = AddressKind("phone number",
                    lambda address, region: e164(address.strip(), default_region=region),
                    lambda address: _PHONE_LIKE.match(address.strip()) is not None)
