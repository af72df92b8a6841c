"""The one id rule (suppression/ids.py) and the places that reuse it: pydantic's job types,
the CLI's argparse types, Redis keys and patterns, unsubscribe tokens."""

from __future__ import annotations

import argparse

import pytest

from outbox.runtime import account_arg, job_arg
from sender.models import AccountId, JobId, TypeAdapter
from suppression import ids, keys
from suppression.tokens import BadToken, Unsubscribe, make_token, read_token

GOOD = ["a", "0", "acct_1042", "order-7f3c2a9e-1b4d-4c8e-9a61-2f0b7d5e3c11", "a.b_c-d",
        "A" * ids.MAX_LENGTH]
BAD = ["", "*", "acct*", "a?", "a[b]", "a}:x", "{acct}", "a\\b", "acct\n", "acct\nx",
       "\nacct", " acct", "acct ", "a:b", "a/b", "_acct", ".acct", "-acct", "acct\x00",
       "ácct", "a" * (ids.MAX_LENGTH + 1)]


@pytest.mark.parametrize("value", GOOD)
def test_ids_that_follow_the_rule_are_taken_everywhere(value):
    assert ids.parse_account_id(value) == ids.parse_job_id(value) == value
    assert TypeAdapter(AccountId).validate_python(value) == value
    assert TypeAdapter(JobId).validate_python(value) == value
    assert account_arg(value) == job_arg(value) == value
    assert keys.account_tag(value) == f"outbox:{{acct:{value}}}"


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_ids_that_break_the_rule_are_refused_everywhere_with_the_rule(value):
    with pytest.raises(ids.InvalidId, match=r"^account id must be 1-128 characters of "
                                            r"A-Z a-z 0-9 \. _ -, starting with a letter"):
        ids.parse_account_id(value)
    with pytest.raises(ids.InvalidId, match="^job id must be"):
        ids.parse_job_id(value)
    with pytest.raises(ValueError, match="account id must be"):
        TypeAdapter(AccountId).validate_python(value)
    with pytest.raises(argparse.ArgumentTypeError, match="account id must be"):
        account_arg(value)
    with pytest.raises(ids.InvalidId):
        keys.account_tag(value)
    with pytest.raises(ids.InvalidId):
        keys.account_suppressions_pattern(value)


def test_the_error_quotes_the_value_safely_and_briefly():
    assert str(ids.InvalidId("account", "a\nb")).endswith("got 'a\\nb'")
    long = str(ids.InvalidId("account", "x" * 500))
    assert long.endswith("... (500 characters)") and len(long) < 200
    assert str(ids.InvalidId("account", 7)).endswith("got a int")


def test_glob_escape_leaves_no_metacharacter_unescaped():
    assert keys.glob_escape("a*b?c[d]e{f}g\\h^") == "a\\*b\\?c\\[d\\]e\\{f\\}g\\\\h\\^"
    assert keys.glob_escape("acct_1042") == "acct_1042"


def test_a_signed_token_naming_a_malformed_id_is_refused():
    good = make_token("k" * 16, Unsubscribe("acct_1", "email", "a@example.com", "job-1"))
    assert read_token(["k" * 16], good).account_id == "acct_1"
    bad = make_token("k" * 16, Unsubscribe("a}:x", "email", "a@example.com", "job-1"))
    with pytest.raises(BadToken, match="malformed account or job id"):
        read_token(["k" * 16], bad)
