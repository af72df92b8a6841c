"""Address normalisation for keys and comparisons.

E-mail: trimmed and lower-cased as a whole (the domain is case-insensitive by definition; the
local part technically is not, but no real mailbox provider treats ``Bob`` and ``bob`` as two
people, so comparing case-insensitively is the safe side for suppression).
Phone numbers: E.164 (``+85291234567``); numbers without a ``+`` are read in ``default_region``
(Hong Kong unless told otherwise).
"""

from __future__ import annotations

import phonenumbers


class BadAddress(ValueError):
    """The address cannot be normalised for its channel."""


def normalise(channel: str, address: str, *, default_region: str = "HK") -> str:
    """The canonical form of ``address`` on ``channel`` (``email`` or ``sms``)."""
    address = address.strip()
    if channel == "email":
        if address.count("@") < 1 or address.startswith("@") or address.endswith("@"):
            raise BadAddress(f"not an e-mail address: {address!r}")
        return address.lower()
    if channel == "sms":
        return e164(address, default_region=default_region)
    raise BadAddress(f"unknown channel {channel!r}")


def e164(number: str, *, default_region: str = "HK") -> str:
    """A phone number in E.164; :class:`BadAddress` if it is not a possible number."""
    try:
        parsed = phonenumbers.parse(number, None if number.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise BadAddress(f"not a phone number: {number!r} ({exc})") from None
    if not phonenumbers.is_possible_number(parsed):
        raise BadAddress(f"not a possible phone number: {number!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def guess_channel(address: str) -> str:
    """``email`` when the address has an ``@``, else ``sms``."""
    return "email" if "@" in address else "sms"
