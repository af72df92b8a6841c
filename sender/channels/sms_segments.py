"""How many SMS segments a body takes, and in which encoding (3GPP TS 23.038 / 23.040).

A body made only of characters of the GSM 03.38 default alphabet and its extension table is sent
as GSM-7: 160 septets in one segment, or 153 per segment once it is split (the user data header
takes 7). Characters of the extension table (``^ { } \\ [ ~ ] | €`` and form feed) take two
septets (escape + char), and a pair is never split across two segments. Anything else forces
UCS-2 for the whole message: 70 UTF-16 code units in one segment, 67 per segment once split, a
surrogate pair (emoji) never split.

This is what Twilio reports as ``num_segments`` for a message sent from a number (without
``SmartEncoding``, which would first replace look-alike characters such as curly quotes).
"""

from __future__ import annotations

import re

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


def _split(costs: list[int], single: int, multi: int) -> int:
    total = sum(costs)
    if total == 0:
        return 0
    if total <= single:
        return 1
    count, used = 1, 0
    for cost in costs:
        if used + cost > multi:  # an escape pair or a surrogate pair stays whole
            count += 1
            used = 0
        used += cost
    return count


def is_gsm7(body: str) -> bool:
    """Whether every character of ``body`` is in the GSM-7 default alphabet or its extension."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)


def segments(body: str) -> tuple[str, int]:
    """``(encoding, count)``: ``("GSM-7", n)`` or ``("UCS-2", n)``; an empty body is 0 segments."""
    if is_gsm7(body):
        return "GSM-7", _split([2 if ch in GSM7_EXTENSION else 1 for ch in body],
                               GSM7_SINGLE, GSM7_MULTI)
    return "UCS-2", _split([2 if ord(ch) > 0xFFFF else 1 for ch in body], UCS2_SINGLE, UCS2_MULTI)


_DESCRIBED = re.compile(r"\b(\d+) (GSM-7|UCS-2) segments?\b")


def describe(encoding: str, count: int) -> str:
    """``"2 UCS-2 segments"``: how an SMS's cost is written in its ``sent`` detail (and read
    back by :func:`described`)."""
    return f"{count} {encoding} segment{'' if count == 1 else 's'}"


def described(text: str | None) -> tuple[str, int] | None:
    """``(encoding, count)`` written by :func:`describe` in ``text``, or None."""
    found = _DESCRIBED.search(text or "")
    return (found.group(2), int(found.group(1))) if found else None
