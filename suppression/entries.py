"""Suppression entries: the one writer, so every entry has one shape, one scope rule and one
address form, whoever writes it.

Writers: the gate (a hard bounce, complaint, invalid number or opt-out found by a send or a
provider event: :func:`queue` adds the commands to the gate's single post-send round trip),
and the support store (CLI, admin API, CSV and DNC imports, the unsubscribe handler).
:func:`entry` builds an entry (checks, canonical address, scope, key, fields) without I/O;
:func:`queue` adds its commands to a pipeline (a redis-py pipeline or the gate's batch);
:func:`write` sends them alone.

Scope (README, "Support operations")::

    reason         what it is                        key
    hard_bounce    a fact about the address          outbox:supp:<channel>:<addr>, whatever
    complaint                                        account is named (kept as evidence)
    invalid
    dnc_register   the Do-not-call register          outbox:dnc:<e164> (marketing SMS only)
    unsubscribe    a person's choice for one         outbox:{acct:A}:supp:<channel>:<addr>;
    sms_stop       account                           the account is required
    reported       the recipient's own report (a
                   bounce or complaint quoting our
                   Message-ID, no signed VERP)
    manual         support's decision                the account's when one is named, else global

The address is put in its canonical form (:func:`suppression.channels.normalise`): the form
every read uses; one that has none is refused (:class:`BadEntry`), never written under another.

Shape: a hash of :data:`FIELDS`, every field written every time, so a replaced entry keeps
nothing of the one before:

* ``reason``; ``source``: what taught it (``job:<id>``, ``<provider>:<event id>``,
  ``cli:<actor>``, ``admin:<actor>``, ``import:<file>``);
* ``at`` (epoch seconds); ``account``: the account named (for a global entry: evidence of
  whose message taught it; ``""`` when none);
* ``detail``: the evidence in words (the provider's diagnostic, ``one-click``...);
* ``actor``: who decided (``system`` for facts, ``recipient`` for choices, unless the caller
  names someone: the support person, ``import``);
* ``expires_at``: epoch seconds, or ``""``; the key expires then (EXPIRE), else never (PERSIST).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from suppression import channels, keys
from suppression.address import BadAddress
from suppression.roundtrip import Client

FACTS = ("hard_bounce", "complaint", "invalid", "dnc_register")
#: a hard bounce or complaint the recipient's own mailbox reported by quoting our
#: Message-ID, without a signed VERP address (``sender.provider_event_applier``): anyone who
#: received the message can write one, so it is that recipient's word for that account only
REPORTED = "reported"
CHOICES = ("unsubscribe", "sms_stop", REPORTED)
MANUAL = "manual"
REASONS = (*FACTS, *CHOICES, MANUAL)
FIELDS = ("reason", "source", "at", "account", "detail", "actor", "expires_at")


class StoreError(Exception):
    """A support request that cannot be carried out."""


class BadEntry(StoreError):
    """A bad address, channel, reason or scope."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry ready to write: its key, its fields, and what they were made from."""

    key: str
    channel: str
    address: str  # canonical
    account_id: str | None  # the owner of an account entry; None for a global one
    fields: dict[str, str | int]
    expires: int | None


def scope(reason: str, account_id: str | None) -> str | None:
    """The account an entry of ``reason`` belongs to, or None for a global entry."""
    if reason not in REASONS:
        raise BadEntry(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
    if reason in FACTS:
        return None
    if reason in CHOICES and not account_id:
        raise BadEntry(f"{reason} is a person's choice for one account: give --account")
    return account_id or None


def canonical(channel: str, address: str, *, region: str = "HK") -> str:
    """The canonical form of ``address``; :class:`BadEntry` for a bad channel, or an address
    that has none (nothing is written or read under another form)."""
    if channel not in channels.names():
        raise BadEntry(f"channel must be {channels.choices()}, not {channel!r}")
    try:
        return channels.normalise(channel, address, default_region=region)
    except BadAddress as exc:
        raise BadEntry(str(exc)) from None


def entry(channel: str, address: str, reason: str, *, account_id: str | None = None,
          source: str = "", detail: str | None = None, actor: str | None = None,
          expires: int | None = None, region: str = "HK", now: int | None = None) -> Entry:
    """Build one entry (no I/O); :class:`BadEntry` says why it cannot be written."""
    addr = canonical(channel, address, region=region)
    owner = scope(reason, account_id)
    if reason == "dnc_register" and channel != channels.DNC:
        raise BadEntry(f"the DNC register holds phone numbers (channel {channels.DNC})")
    if expires is not None and expires <= 0:
        raise BadEntry("--expires must be a positive number of seconds")
    at = now if now is not None else int(time.time())
    fields: dict[str, str | int] = {
        "reason": reason, "source": source, "at": at, "account": account_id or "",
        "detail": detail or "", "actor": actor or ("recipient" if reason in CHOICES else "system"),
        "expires_at": at + expires if expires else ""}
    where = keys.dnc(addr) if reason == "dnc_register" else key(channel, addr, owner)
    return Entry(where, channel, addr, owner, fields, expires)


def key(channel: str, address: str, account_id: str | None) -> str:
    """The key of a canonical ``address``'s entry: the account's, or the global one."""
    if account_id:
        return keys.account_suppression(account_id, channel, address)
    return keys.global_suppression(channel, address)


def queue(pipe: Any, e: Entry) -> None:
    """Add the entry's commands to ``pipe`` (a redis-py pipeline or the gate's batch)."""
    pipe.hset(e.key, mapping=e.fields)
    if e.expires:
        pipe.expire(e.key, e.expires)
    else:
        pipe.persist(e.key)
    if e.account_id:
        pipe.sadd(keys.ACCOUNTS, e.account_id)


async def write(redis: Client, e: Entry) -> None:
    """Write one entry (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    queue(pipe, e)
    await pipe.execute()


def describe(key: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stored entry as printed (CLI ``--json``, admin API): address, channel, scope, owning
    account and the stored fields."""
    if key.startswith(keys.PREFIX + "dnc:"):
        scope_, account, channel, addr = "dnc", None, channels.DNC, key.split(":", 2)[2]
    elif key.startswith(keys.PREFIX + "supp:"):
        _, _, channel, addr = key.split(":", 3)
        scope_, account = "global", None
    else:
        account = keys.account_from_key(key)
        channel, addr = key.split("}:supp:", 1)[1].split(":", 1)
        scope_ = "account"
    return {"address": addr, "channel": channel, "scope": scope_, "account_id": account,
            "reason": fields.get("reason"), "source": fields.get("source") or None,
            "at": int(fields["at"]) if fields.get("at") else None,
            "expires_at": int(fields["expires_at"]) if fields.get("expires_at") else None,
            "actor": fields.get("actor") or None, "detail": fields.get("detail") or None}
