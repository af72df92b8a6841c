"""Signed VERP addresses: only the secret key makes one; any key of the list verifies; every
valid pair of ids gets an address whose local part fits RFC 5321's 64 octets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suppression.gate import Gate
from suppression.ids import SAFE_ID
from suppression.reputation import Policy
from suppression.verp import (
    LOCAL_MAX,
    REF_LENGTH,
    SIG_LENGTH,
    is_verp,
    parse_ref,
    parse_verp,
    ref_record,
    ref_ttl,
    resolve_ref,
    verify_ref,
    verify_verp,
    verp_address,
    verp_ref,
    verp_signature,
)

KEY = "key-one-0123456789abcdef"
OLD = "key-old-0123456789abcdef"


def test_the_address_carries_account_job_and_a_short_lowercase_base32_signature():
    address = verp_address("acct_1", "job.9-x", "b.example", KEY)
    assert re.fullmatch(rf"bounce\+acct_1\+job\.9-x\+[a-z2-7]{{{SIG_LENGTH}}}@b\.example",
                        address)
    assert verify_verp(address, [KEY]) == ("acct_1", "job.9-x")
    assert verify_verp(f"<{address}>", [KEY], "B.Example") == ("acct_1", "job.9-x")
    assert verify_verp(address.upper().replace("ACCT_1", "acct_1").replace("JOB.9-X", "job.9-x")
                       .replace("B.EXAMPLE", "b.example"), [KEY]) == ("acct_1", "job.9-x")


@pytest.mark.parametrize("forge", [
    lambda a: a.replace("+acct_1+", "+acct_2+"),            # another account, same signature
    lambda a: a.replace("+job.9-x+", "+job.9-y+"),          # another job
    lambda a: re.sub(r"\+[a-z2-7]+@", "@", a),              # unsigned (the old form)
    lambda a: re.sub(r"\+[a-z2-7]+@", "+@", a),             # empty signature
    lambda a: re.sub(r"\+([a-z2-7]+)@", lambda m: f"+{m.group(1)[:-1]}@", a),  # cut short
    lambda a: re.sub(r"\+[a-z2-7]+@", "+" + "a" * SIG_LENGTH + "@", a),  # guessed
    lambda a: a.replace("@b.example", "@elsewhere.example"),  # domain checked when given
])
def test_a_forged_or_altered_address_is_not_verified(forge):
    address = forge(verp_address("acct_1", "job.9-x", "b.example", KEY))
    assert verify_verp(address, [KEY], "b.example") is None


def test_another_key_does_not_verify_and_a_rotated_out_key_still_does():
    old = verp_address("acct_1", "j1", "b.example", OLD)
    assert verify_verp(old, [KEY]) is None
    assert verify_verp(old, [KEY, OLD]) == ("acct_1", "j1")
    assert verify_verp(old, []) is None


def test_the_signed_fields_are_separated_unambiguously():
    assert verp_signature("ab", "c", KEY) != verp_signature("a", "bc", KEY)
    assert verp_signature("a", "b", KEY) != verp_signature("a", "b", OLD)


def test_parse_reports_what_an_address_claims_signed_or_not():
    signed = verp_address("acct_1", "j1", "b.example", KEY)
    assert parse_verp(signed) == ("acct_1", "j1")
    assert parse_verp("bounce+acct_1+j1@b.example") == ("acct_1", "j1")
    assert parse_verp("someone@b.example") is None


# --- both forms fit 64 octets; the referenced one round-trips through its Redis record ----

LONGEST = "a" * 128  # SAFE_ID allows 128 characters: the longest account and job ids
UUID_JOB = "order-7f3c2a9e-1b4d-4c8e-9a61-2f0b7d5e3c11"
# any valid id, and long ones on purpose (most pairs then need the referenced form)
ids = st.from_regex(SAFE_ID, fullmatch=True) | st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9._\-]{40,127}", fullmatch=True)


def local_part(address: str) -> str:
    return address.rpartition("@")[0]


def test_the_issue_example_and_the_longest_ids_get_the_referenced_form_within_64_octets():
    for account, job in (("acct_1042", UUID_JOB), (LONGEST, LONGEST),
                         ("Z" * 128, "0" + "._-" * 42 + "9")):
        address = verp_address(account, job, "b.example", KEY)
        assert len(local_part(address).encode()) <= LOCAL_MAX, address
        assert re.fullmatch(rf"bounce\+r=[a-z2-7]{{{REF_LENGTH}}}@b\.example", address)
        assert parse_ref(address, "b.example") == verp_ref(account, job, KEY)
        assert parse_verp(address) is None and verify_verp(address, [KEY]) is None
        assert is_verp(address)
        key, value = ref_record(account, job, KEY)
        assert (key, value) == (f"outbox:verp:{verp_ref(account, job, KEY)}", f"{account}/{job}")
        assert verify_ref(parse_ref(address), value, [KEY]) == (account, job)


def test_the_readable_form_is_kept_while_it_fits_and_stores_nothing():
    job = "j" * (LOCAL_MAX - 25 - len("acct_1"))  # exactly 64 octets
    address = verp_address("acct_1", job, "b.example", KEY)
    assert len(local_part(address)) == LOCAL_MAX and parse_verp(address) == ("acct_1", job)
    assert ref_record("acct_1", job, KEY) is None
    assert verp_address("acct_1", job + "j", "b.example", KEY).startswith("bounce+r=")


@settings(max_examples=300, deadline=None)
@given(account=ids, job=ids)
def test_every_valid_pair_of_ids_fits_round_trips_and_verifies_only_with_a_listed_key(
        account, job):
    address = verp_address(account, job, "b.example", OLD)
    assert len(local_part(address).encode()) <= LOCAL_MAX
    record = ref_record(account, job, OLD)
    if record is None:  # readable: the address itself carries both ids
        assert verify_verp(address, [KEY, OLD], "b.example") == (account, job)
        assert verify_verp(address, [KEY], "b.example") is None
        return
    ref = parse_ref(address, "b.example")
    assert ref is not None and record[0].endswith(f":{ref}")
    assert verify_ref(ref, record[1], [KEY, OLD]) == (account, job)  # rotated out: still ok
    assert verify_ref(ref, record[1], [KEY]) is None
    assert verify_ref(ref.upper(), record[1], [OLD]) == (account, job)  # base32: any case


def test_a_ref_is_not_accepted_for_another_job_a_guess_or_a_broken_record():
    ref = verp_ref("acct_1042", UUID_JOB, KEY)
    assert verify_ref(ref, f"acct_1042/{UUID_JOB}x", [KEY]) is None  # record of another job
    assert verify_ref(ref, f"acct_1043/{UUID_JOB}", [KEY]) is None
    assert verify_ref("a" * REF_LENGTH, f"acct_1042/{UUID_JOB}", [KEY]) is None
    assert verify_ref(ref, "no-separator", [KEY]) is None
    assert verify_ref(ref, f"acct_1042/{UUID_JOB}", []) is None
    # refs of neighbouring jobs share nothing visible (HMAC): no prefix, no common position
    other = verp_ref("acct_1042", UUID_JOB[:-1] + "2", KEY)
    assert other != ref and sum(a == b for a, b in zip(ref, other, strict=True)) < REF_LENGTH // 2


@pytest.mark.parametrize("address", [
    "bounce+r=@b.example", "bounce+r=abc@b.example",  # empty, short
    "bounce+r=" + "a" * (REF_LENGTH + 1) + "@b.example",  # long
    "bounce+r=" + "1" * REF_LENGTH + "@b.example",  # not base32
])
def test_malformed_refs_are_not_parsed(address):
    assert parse_ref(address) is None


def test_a_ref_at_another_domain_is_not_parsed_when_the_domain_is_given():
    address = verp_address(LONGEST, LONGEST, "b.example", KEY)
    assert parse_ref(address, "B.EXAMPLE") and parse_ref(address, "c.example") is None


@pytest.mark.backends
async def test_the_gate_writes_the_ref_record_in_the_pre_send_round_trip_and_it_resolves(
        redis, names):
    """Single Redis and Redis Cluster: the record is a global key beside the account's
    script (another slot), written before the send; resolving refreshes its expiry."""
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000),
                verp_key=KEY)
    account = names.account("a" * 100)  # with the suffix: 111 characters
    job = names.job(UUID_JOB)
    decision = await gate.pre_send(account, job, owner="o", redelivered=False, expired=False,
                                   attempt=1, address=names.email("bob@example.com"))
    assert decision.verdict == "send"
    ref = parse_ref(verp_address(account, job, "b.example", KEY))
    key = f"outbox:verp:{ref}"
    assert await redis.get(key) == f"{account}/{job}".encode()
    assert 3600 < await redis.ttl(key) <= ref_ttl(3600)
    await redis.expire(key, 100)
    assert await resolve_ref(redis, ref, [OLD, KEY], ref_ttl(3600)) == (account, job)
    assert await redis.ttl(key) > 3600  # refreshed
    assert await resolve_ref(redis, ref, [OLD], ref_ttl(3600)) is None  # not our key
    assert await resolve_ref(redis, verp_ref(account, job + "x", KEY), [KEY], 60) is None


@pytest.mark.backends
async def test_short_ids_and_gates_without_a_bounce_domain_store_no_ref(redis, names):
    account, long_job = names.account("acct"), names.job(UUID_JOB)
    short = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000),
                 verp_key=KEY)
    plain = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
    await short.pre_send(account, "j1", owner="o", redelivered=False, expired=False,
                         attempt=1, address=names.email("a@example.com"))
    await plain.pre_send(account, long_job, owner="o", redelivered=False, expired=False,
                         attempt=1, address=names.email("b@example.com"))
    for job in ("j1", long_job):
        assert await redis.exists(f"outbox:verp:{verp_ref(account, job, KEY)}") == 0
