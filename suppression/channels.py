"""The channels Outbox delivers on, each declared once; everything that lists channels reads
them here (keys, suppression entries, the gate, the Lua scripts' channel list, provider events,
the CLI's ``--channel`` choices, the admin API).

A channel is a name (a Redis key part and the routing key of its jobs, ``<name>`` for the
priority lane and ``<name>.bulk`` for the bulk lane: lower case, no ``:`` and no ``.``),
the kind of address it takes (:class:`suppression.address.AddressKind`: its canonical form and
what it looks like) and the suppression reason a recipient's opt-out leaves. What only the
worker needs (job model, queue, the provider behind it) is declared on top of this in
:mod:`sender.channels.registry`, whose ``declare`` also declares the channel here.

Adding a channel: one module in ``sender/channels/`` (job model, sender, factory) and one
``declare`` line in :mod:`sender.channels.registry` (docs/reference.md, "Adding a channel").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from suppression.address import EMAIL as EMAIL_ADDRESS
from suppression.address import PHONE, AddressKind, BadAddress

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


@dataclass(frozen=True, slots=True)
class Channel:
    """One delivery channel as the suppression layer sees it."""

    name: str
    address: AddressKind
    #: the suppression reason of a recipient's opt-out (a STOP reply, an unsubscribe click)
    opt_out: str = "unsubscribe"


_DECLARED: dict[str, Channel] = {}


def declare(channel: Channel) -> Channel:
    """Add a channel (once: a second declaration of the same name must be the same one)."""
    if not _NAME.match(channel.name):
        raise ValueError(f"a channel name is lower case letters, digits and _ "
                         f"(a key part and a routing key), not {channel.name!r}")
    held = _DECLARED.get(channel.name)
    if held is not None and held != channel:
        raise ValueError(f"channel {channel.name!r} is declared already")
    _DECLARED[channel.name] = channel
    return channel


def withdraw(name: str) -> None:
    """Forget a channel (a test's or a dry run's throwaway one)."""
    _DECLARED.pop(name, None)


def names() -> tuple[str, ...]:
    """Every declared channel, in declaration order."""
    return tuple(_DECLARED)


def get(name: str) -> Channel:
    """The channel called ``name``; :class:`BadAddress` when there is none (an address on an
    unknown channel has no canonical form)."""
    try:
        return _DECLARED[name]
    except (KeyError, TypeError):
        raise BadAddress(f"unknown channel {name!r}") from None


def choices(*, quote: bool = False) -> str:
    """The channels for a message: ``email or sms``, ``'email', 'sms' or 'push'``."""
    *head, last = (repr(n) if quote else n for n in names())
    return f"{', '.join(head)} or {last}" if head else last


def normalise(channel: str, address: str, *, default_region: str = "HK") -> str:
    """The canonical form of ``address`` on ``channel`` (:mod:`suppression.address`);
    :class:`BadAddress` says why there is none."""
    if not isinstance(address, str):
        raise BadAddress(f"an address is text, not {type(address).__name__}")
    return get(channel).address.normalise(address, default_region)


def candidates(address: str) -> tuple[str, ...]:
    """The channels whose addresses look like ``address`` (``email`` when it has an ``@``, a
    third channel's by its own test); ``sms`` when none does: a bare string is read as a phone
    number, whose normalisation then says why it is not one."""
    found = tuple(c.name for c in _DECLARED.values() if c.address.looks_like(address))
    return found or (SMS.name,)


def guess(address: str) -> str:
    """The channel a row that names none is read on: the first of :func:`candidates`."""
    return candidates(address)[0]


EMAIL = declare(Channel("email", EMAIL_ADDRESS))
SMS = declare(Channel("sms", PHONE, opt_out="sms_stop"))
#: the channel the Do-not-call register applies to (marketing SMS only; UEMO)
DNC = SMS.name
