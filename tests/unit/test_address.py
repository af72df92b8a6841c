"""One canonical address for every key: the pure function, and the real gate on a real Redis
finding a suppression, a preference and a consent record by any variant of the address."""

from __future__ import annotations

import asyncio
import itertools
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from suppression.address import BadAddress
from suppression.channels import normalise
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.store import BadEntry, ConsentStore, PrefsStore, SuppressionStore

#: (U-label, A-label) domains; the A-label is the canonical form
DOMAINS = [("bücher.example", "xn--bcher-kva.example"), ("例子.广告", "xn--fsqu00a.xn--4rr70v"),
           ("faß.de", "xn--fa-hia.de"), ("example.com", "example.com"),
           ("ÉCOLE.fr", "xn--cole-9oa.fr"),
           ("παράδειγμα.δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp")]
LOCALS = ["user", "José", "ünïcödé", "用户", "Ærøskøbing", "o'brien+tag", "δοκιμή", "ñ.ç"]


def _swap_case(text: str, flips: list[bool]) -> str:
    """Upper-case some characters, where that is undone by lower-casing (not ß → SS)."""
    out = []
    for c, flip in zip(text, itertools.cycle(flips or [False]), strict=False):
        up = c.upper()
        out.append(up if flip and len(up) == 1 and up.lower() == c.lower() else c)
    return "".join(out)


@st.composite
def variants(draw, local: str, domains: tuple[str, str]):
    """Another way to write ``local@domain``: case, U-label or A-label, NFC or NFD, spaces."""
    u_label, a_label = domains
    domain = draw(st.sampled_from([u_label, a_label]))
    form = draw(st.sampled_from(["NFC", "NFD"]))
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=6))
    text = unicodedata.normalize(form, _swap_case(f"{local}@{domain}", flips))
    pad = st.text(" \t", max_size=3)
    return draw(pad) + text + draw(pad)


@st.composite
def address_and_two_variants(draw):
    local = draw(st.sampled_from(LOCALS) | st.from_regex(r"[a-zA-Z0-9._+-]{1,12}", fullmatch=True)
                 .filter(lambda s: not s.startswith(".") and not s.endswith(".")
                         and ".." not in s))
    domains = draw(st.sampled_from(DOMAINS))
    return (f"{local}@{domains[1]}", draw(variants(local, domains)),
            draw(variants(local, domains)))


# ---------------------------------------------------------------------------- pure function


@settings(max_examples=400, deadline=None)
@given(address_and_two_variants())
def test_every_variant_has_one_canonical_form(generated):
    reference, a, b = generated
    canonical = normalise("email", a)
    assert canonical == normalise("email", b) == normalise("email", reference)
    assert normalise("email", canonical) == canonical  # idempotent
    local, _, domain = canonical.rpartition("@")
    assert domain.isascii() and domain == domain.lower()  # the A-label
    assert unicodedata.is_normalized("NFC", local) and local == local.lower()


def test_the_attackers_variants():
    assert normalise("email", "user@bücher.example") == "user@xn--bcher-kva.example"
    assert normalise("email", "User@XN--BCHER-KVA.example") == "user@xn--bcher-kva.example"
    assert normalise("email", "user@ｅｘａｍｐｌｅ。com") == "user@example.com"  # UTS 46 mapping
    assert normalise("email", "Jose\u0301@x.example") == normalise("email", "José@x.example")


@pytest.mark.parametrize("char", [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u2066", "\u061c",
    "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9f", "\u00a0", "\u3000", "\u2028", "\u034f",
    "\u115f", "\u3164", "\ufe0f", "\U000e0041", "\ue000",
])
@pytest.mark.parametrize("where", ["local", "domain"])
def test_invisible_and_control_characters_are_refused_not_stripped(char, where):
    address = f"us{char}er@example.com" if where == "local" else f"user@exa{char}mple.com"
    with pytest.raises(BadAddress, match=f"U\\+{ord(char):04X}"):
        normalise("email", address)


@pytest.mark.parametrize("address", [
    "no-at-sign", "@example.com", "user@", "a@b@example.com", "user@example.com.",
    "user@exa_mple.com", "user@-bad.example", "user@xn--zz.example", "user@a..b",
])
def test_addresses_without_a_canonical_form(address):
    with pytest.raises(BadAddress):
        normalise("email", address)


def test_phone_numbers_stay_e164():
    assert normalise("sms", " 9123 4567 ") == "+85291234567"
    assert normalise("sms", "+1 (202) 555-0123") == "+12025550123"
    assert normalise("sms", "2025550123", default_region="US") == "+12025550123"


async def test_the_stores_refuse_what_has_no_canonical_form(redis_url):
    redis = Redis.from_url(redis_url)
    try:
        with pytest.raises(BadEntry, match="U\\+200B"):
            await SuppressionStore(redis).add("us\u200ber@example.com", channel="email",
                                              reason="manual")
        with pytest.raises(BadEntry):
            await ConsentStore(redis).grant("acct_a", "user@exa_mple.com", channel="email")
        assert await redis.dbsize() == 0  # nothing written under any other form
    finally:
        await redis.aclose()


# ----------------------------------------------------------- the real gate, on a real Redis

_ids = itertools.count()


async def _variant_case(redis_url: str, kind: str, reference: str, stored: str,
                        sent: str) -> None:
    redis = Redis.from_url(redis_url)
    account = f"acct_v{next(_ids)}"
    try:
        gate = Gate(redis, idempotency_ttl=60, policy=Policy(rate=1000, burst=1000))
        category, topic = "transactional", None
        if kind == "global":
            await SuppressionStore(redis).add(stored, channel="email", reason="hard_bounce")
        elif kind == "account":
            await SuppressionStore(redis).add(stored, channel="email", reason="unsubscribe",
                                              account_id=account)
        elif kind == "prefs":
            await PrefsStore(redis).set(account, stored, topic="meeting", channel="email",
                                        on=False)
            category, topic = "notification", "meeting"
        else:  # consent: granted under one form, a marketing job to another form may go
            await ConsentStore(redis).grant(account, stored, channel="email", source="form")
            category = "marketing"
        d = await gate.pre_send(account, f"j{next(_ids)}", owner="w", redelivered=False,
                                expired=False, attempt=1, channel="email",
                                category=category, topic=topic, address=sent)
        expected = {"global": ("suppressed", "hard_bounce"),
                    "account": ("suppressed", "unsubscribe"),
                    "prefs": ("suppressed", "preference"), "consent": ("send", None)}[kind]
        assert (d.verdict, d.reason) == expected, (kind, reference, stored, sent)
        if kind == "global":
            await SuppressionStore(redis).remove(reference, channel="email", actor="t",
                                                 reason="test")
    finally:
        await redis.aclose()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["global", "account", "prefs", "consent"]), address_and_two_variants())
def test_a_record_under_one_variant_is_found_by_every_other(redis_url, kind, generated):
    """Suppressed (or consented) as one variant, sent to another: the gate finds it."""
    reference, stored, sent = generated
    asyncio.run(_variant_case(redis_url, kind, reference, stored, sent))


async def test_keys_of_the_older_form_are_found_and_moved(redis_url):
    """Before the canonical form, keys had the lower-cased U-label domain: the gate no longer
    reads them; ``canonicalise_keys`` (``outbox suppression canonicalise``) moves them."""
    from suppression.store import canonicalise_keys

    redis = Redis.from_url(redis_url)
    old = "user@bücher.example"
    try:
        await redis.hset(f"outbox:supp:email:{old}", mapping={"reason": "hard_bounce"})
        await redis.hset(f"outbox:{{acct:a1}}:supp:email:{old}",
                         mapping={"reason": "unsubscribe"})
        await redis.expire(f"outbox:{{acct:a1}}:supp:email:{old}", 3600)
        await redis.hset(f"outbox:{{acct:a1}}:consent:email:{old}", "status", "granted")
        await redis.hset(f"outbox:{{acct:a1}}:prefs:{old}", "meeting:email", "0")
        await redis.hset("outbox:{acct:a1}:prefs:+85291234567", "meeting:sms", "0")
        await redis.hset("outbox:supp:email:us\u200ber@example.com", "reason", "manual")
        gate = Gate(redis, idempotency_ttl=60, policy=Policy(rate=1000, burst=1000))

        async def verdict(job_id: str) -> str:
            return (await gate.pre_send("a2", job_id, owner="w", redelivered=False,
                                        expired=False, attempt=1, channel="email",
                                        address="user@xn--bcher-kva.example")).verdict

        assert await verdict("before") == "send"  # the old key is not read: documented
        dry = await canonicalise_keys(redis)
        assert sorted(f["action"] for f in dry) == ["no canonical form"] + ["would move"] * 4
        assert await redis.exists(f"outbox:supp:email:{old}")  # a dry run changes nothing
        moved = await canonicalise_keys(redis, apply=True)
        assert sorted(f["action"] for f in moved) == ["moved"] * 4 + ["no canonical form"]
        new = "user@xn--bcher-kva.example"
        assert await redis.hget(f"outbox:supp:email:{new}", "reason") == b"hard_bounce"
        assert 0 < await redis.ttl(f"outbox:{{acct:a1}}:supp:email:{new}") <= 3600
        assert not await redis.exists(f"outbox:supp:email:{old}")
        assert await verdict("after") == "suppressed"
        assert [f["action"] for f in await canonicalise_keys(redis)] == ["no canonical form"]
    finally:
        await redis.aclose()
