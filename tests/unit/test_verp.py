"""Signed VERP addresses: only the secret key makes one; any key of the list verifies."""

from __future__ import annotations

import re

import pytest

from suppression.verp import SIG_LENGTH, parse_verp, verify_verp, verp_address, verp_signature

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
