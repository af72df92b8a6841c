"""Which numbers can take an SMS: parsed by phonenumbers (numbers without ``+`` read in the
region given, ``OUTBOX_SMS_REGION``), valid, and of a kind that receives SMS (mobile, fixed
line or mobile, personal, pager, VoIP; not a landline). Used by job validation
(:mod:`sender.validation`) and again by the Twilio channel before its request; imports
nothing but phonenumbers, so the client stays light.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberType

SMS_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE,
                       PhoneNumberType.PERSONAL_NUMBER, PhoneNumberType.PAGER,
                       PhoneNumberType.VOIP})


class InvalidNumber(ValueError):
    """The recipient cannot take SMS; the message says why."""


def normalise_number(raw: str, region: str = "HK") -> str:
    """E.164 form of ``raw``; InvalidNumber when it is not a number that can take SMS."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumber("not a valid phone number")
    kind = phonenumbers.number_type(number)
    if kind not in SMS_TYPES:
        raise InvalidNumber(f"cannot take SMS ({PhoneNumberType.to_string(kind).lower()})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
