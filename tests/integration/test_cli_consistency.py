"""The support commands behave alike: an unknown account is exit 1 (the admin API's 404, and
nothing is written), removing nothing is exit 1 (the admin API's 404 too), times are ISO 8601
UTC in readable and ``--json`` output, and lists are tables with a header line."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.helpers import redis_state

pytestmark = pytest.mark.integration

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
EPOCH = re.compile(r"\b1\d{9}\b")  # a Unix time in seconds (2001..2286)
GHOST = "acct_ghost"

#: Every command that names an account, given one Outbox has never seen.
NAMES_AN_ACCOUNT = [
    ("consent", "grant", GHOST, "ana@example.com", "--channel", "email"),
    ("consent", "revoke", GHOST, "ana@example.com", "--channel", "email"),
    ("consent", "show", GHOST, "ana@example.com", "--channel", "email"),
    ("prefs", "set", GHOST, "ana@example.com", "--topic", "meeting", "--channel", "email",
     "--off"),
    ("prefs", "show", GHOST, "ana@example.com"),
    ("accounts", "show", GHOST),
    ("accounts", "unblock", GHOST, "--reason", "r", "--actor", "a"),
    ("accounts", "suspend", GHOST, "--reason", "r", "--actor", "a"),
    ("accounts", "unsuspend", GHOST, "--reason", "r", "--actor", "a"),
    ("audit", GHOST),
    ("suppression", "add", "ana@example.com", "--channel", "email", "--reason", "unsubscribe",
     "--account", GHOST, "--actor", "a"),
    ("suppression", "add", "ana@example.com", "--channel", "email", "--reason", "manual",
     "--account", GHOST, "--actor", "a"),
    ("suppression", "remove", "ana@example.com", "--channel", "email", "--account", GHOST,
     "--reason", "r", "--actor", "a"),
    ("suppression", "check", "ana@example.com", "--account", GHOST),
    ("suppression", "list", "--account", GHOST),
    ("suppression", "export", "--account", GHOST),
    ("suppression", "import", "LIST", "--account", GHOST),
    ("domains", "add", GHOST, "shop.example"),
    ("domains", "verify", GHOST, "shop.example"),
    ("domains", "list", GHOST),
    ("domains", "share", GHOST, "shop.example", "--reason", "r", "--actor", "a"),
]



@pytest.mark.parametrize("argv", NAMES_AN_ACCOUNT, ids=[" ".join(a[:2]) for a in NAMES_AN_ACCOUNT])
async def test_an_unknown_account_is_exit_1_and_changes_nothing(argv, cli, redis_url, capsys,
                                                                tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("address,channel,reason\nana@example.com,email,unsubscribe\n")
    argv = tuple(str(listing) if a == "LIST" else a for a in argv)
    assert await cli("accounts", "configure", "acct_real", "--rate", "5") == 0
    before = await redis_state(redis_url)
    capsys.readouterr()

    assert await cli(*argv) == 1
    out, err = capsys.readouterr()
    assert f"unknown account '{GHOST}'" in err and "accounts configure" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""
    assert await redis_state(redis_url) == before  # no consent, entry, audit, account


async def test_configure_makes_an_account_known_then_consent_is_taken(cli, capsys):
    capsys.readouterr()
    assert await cli("consent", "grant", "acct_new", "ana@example.com", "--channel",
                     "email") == 1
    assert await cli("accounts", "configure", "acct_new", "--business-name", "New Ltd") == 0
    assert await cli("consent", "grant", "acct_new", "ana@example.com", "--channel", "email",
                     "--json") == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["status"] == "granted"
    assert await cli("accounts", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [{"account_id": "acct_new",
                                                    "state": "active"}]


async def test_removing_nothing_is_exit_1(cli, redis_url, capsys):
    assert await cli("accounts", "configure", "acct_1", "--rate", "5") == 0
    before = await redis_state(redis_url)
    capsys.readouterr()
    assert await cli("suppression", "remove", "nobody@example.com", "--channel", "email",
                     "--reason", "asked", "--actor", "alice", "--json") == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"address": "nobody@example.com", "removed": []}
    assert "no email entry for nobody@example.com in the global list" in err
    assert await cli("suppression", "remove", "nobody@example.com", "--channel", "email",
                     "--account", "acct_1", "--reason", "asked", "--actor", "alice") == 1
    assert "in account acct_1: nothing removed" in capsys.readouterr().err
    assert await redis_state(redis_url) == before  # not even an audit record

    assert await cli("suppression", "add", "bob@example.com", "--channel", "email",
                     "--reason", "manual", "--account", "acct_1", "--actor", "alice") == 0
    capsys.readouterr()
    assert await cli("suppression", "remove", "bob@example.com", "--channel", "email",
                     "--account", "acct_1", "--reason", "asked", "--actor", "alice",
                     "--json") == 0
    [gone] = json.loads(capsys.readouterr().out)["removed"]
    assert (gone["address"], gone["scope"]) == ("bob@example.com", "account")


def _times(record, found=None):
    """Every value of a time field anywhere in ``record``."""
    found = [] if found is None else found
    if isinstance(record, dict):
        for key, value in record.items():
            if key in ("at", "since", "probation_until", "expires_at", "granted_at",
                       "revoked_at") and value not in (None, ""):
                found.append(value)
            else:
                _times(value, found)
    elif isinstance(record, list):
        for value in record:
            _times(value, found)
    return found


async def test_times_are_iso_8601_utc_in_json_and_text(cli, capsys):
    steps = [
        ("accounts", "configure", "acct_t", "--business-name", "Time Ltd"),
        ("suppression", "add", "t@example.com", "--channel", "email", "--reason", "manual",
         "--account", "acct_t", "--expires", "3600", "--actor", "alice"),
        ("consent", "grant", "acct_t", "c@example.com", "--channel", "email"),
        ("consent", "revoke", "acct_t", "c@example.com", "--channel", "email"),
        ("accounts", "suspend", "acct_t", "--reason", "check", "--actor", "bob"),
        ("accounts", "unsuspend", "acct_t", "--reason", "fine", "--actor", "bob"),
    ]
    for argv in steps:
        assert await cli(*argv) == 0
    reads = [
        ("suppression", "check", "t@example.com", "--account", "acct_t"),
        ("suppression", "list", "--account", "acct_t"),
        ("consent", "show", "acct_t", "c@example.com", "--channel", "email"),
        ("accounts", "show", "acct_t"),
        ("audit", "acct_t"),
    ]
    seen = 0
    for argv in reads:
        capsys.readouterr()
        assert await cli(*argv, "--json") == 0
        document = json.loads(capsys.readouterr().out)
        times = _times(document)
        assert times and all(isinstance(t, str) and ISO.match(t) for t in times), (argv, times)
        seen += len(times)
        assert await cli(*argv) == 0
        text = capsys.readouterr().out
        assert not EPOCH.search(text), (argv, text)
        assert any(t in text for t in times), (argv, text)
    assert seen >= 10
    # accounts show --json keeps its contract keys, with probation_until now a time
    capsys.readouterr()
    assert await cli("accounts", "show", "acct_t", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert {"account_id", "state", "rates", "limits"} <= set(shown)
    assert ISO.match(shown["probation_until"]) and ISO.match(shown["since"])
    # the CSV export too
    assert await cli("suppression", "export", "--account", "acct_t") == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    fields = dict(zip(header.split(","), row.split(","), strict=True))
    assert ISO.match(fields["at"]) and ISO.match(fields["expires_at"])


async def test_lists_are_tables_with_a_header(cli, capsys):
    assert await cli("accounts", "configure", "acct_a", "--rate", "5") == 0
    assert await cli("accounts", "configure", "acct_b", "--rate", "5") == 0
    assert await cli("suppression", "add", "x@example.com", "--channel", "email", "--reason",
                     "manual", "--account", "acct_a", "--actor", "alice") == 0
    assert await cli("prefs", "set", "acct_a", "x@example.com", "--topic", "meeting",
                     "--channel", "email", "--off") == 0
    expected = {
        ("accounts", "list"): ["account_id", "state"],
        ("suppression", "list", "--account", "acct_a"): ["address", "channel", "scope"],
        ("suppression", "check", "x@example.com", "--account", "acct_a"):
            ["address", "channel", "scope"],
        ("audit", "acct_a"): ["id", "at", "actor", "action"],
        ("prefs", "show", "acct_a", "x@example.com"): ["topic", "channel", "setting"],
    }
    for argv, header in expected.items():
        capsys.readouterr()
        assert await cli(*argv) == 0
        lines = capsys.readouterr().out.splitlines()
        [head_at] = [i for i, line in enumerate(lines) if line.split()[:len(header)] == header]
        rows = lines[head_at + 1:]
        assert rows and all(len(r.split()) >= len(header) for r in rows), (argv, lines)
    capsys.readouterr()
    assert await cli("accounts", "list") == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["acct_a      active",
                                                         "acct_b      active"]
