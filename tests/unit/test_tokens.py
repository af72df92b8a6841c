from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suppression import ids
from suppression.tokens import BadToken, Unsubscribe, make_token, read_token

SECRET = "k" * 32
text = st.text(st.characters(blacklist_characters="\x1f", blacklist_categories=("Cs",)),
               min_size=1, max_size=60)


id_text = st.from_regex(ids.PATTERN, fullmatch=True)  # tokens name ids (suppression/ids.py)


@given(id_text, st.sampled_from(["email", "sms"]), text, id_text)
def test_round_trip(account, channel, recipient, job):
    u = Unsubscribe(account, channel, recipient, job)
    token = make_token(SECRET, u)
    assert read_token([SECRET], token) == u
    assert all(c.isalnum() or c in "-_." for c in token)  # safe in a URL path


def test_a_forged_or_damaged_token_is_refused():
    token = make_token(SECRET, Unsubscribe("acct_1", "email", "a@example.com", "j1"))
    body, sig = token.split(".")
    other = make_token(SECRET, Unsubscribe("acct_2", "email", "a@example.com", "j1"))
    for bad in (f"{other.split('.')[0]}.{sig}", token[:-2], "nodot", "", f"{body}.AAAA"):
        with pytest.raises(BadToken):
            read_token([SECRET], bad)
    with pytest.raises(BadToken):
        read_token(["another-secret"], token)
    with pytest.raises(BadToken):
        read_token([], token)


def test_rotation_any_listed_key_verifies_only_listed_keys():
    new, old, gone = "n" * 32, "o" * 32, "g" * 32
    u = Unsubscribe("acct_1", "email", "a@example.com", "j1")
    for signer in (new, old):
        assert read_token((new, old), make_token(signer, u)) == u
    with pytest.raises(BadToken):
        read_token((new, old), make_token(gone, u))


def test_one_string_is_not_a_list_of_keys():
    token = make_token(SECRET, Unsubscribe("acct_1", "email", "a@example.com", "j1"))
    with pytest.raises(TypeError):
        read_token(SECRET, token)
