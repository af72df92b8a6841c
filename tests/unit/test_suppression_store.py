"""Suppression scopes, consent, preferences and the imports, through the stores and the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from outbox import cli
from suppression.store import BadEntry, ConsentStore, PrefsStore, SuppressionStore

pytestmark = pytest.mark.backends  # the store tests below run on a single Redis and a cluster
N: Any = None  # this test's names (the autouse fixture below): the cluster is shared


@pytest.fixture(autouse=True)
def _own_names(names, monkeypatch):
    monkeypatch.setitem(globals(), "N", names)


def mail(address: str) -> str:
    return N.email(address)


def acct(base: str) -> str:
    return N.account(base)


@pytest.fixture
def store(redis):
    return SuppressionStore(redis)


async def test_facts_are_global_choices_per_account(store):
    a1, bob, carol = acct("acct_1"), mail("bob@example.com"), mail("carol@example.com")
    hb = await store.add(mail("Bob@Example.com"), channel="email", reason="hard_bounce",
                         account_id=a1)  # a fact: global whatever account is named
    assert (hb["scope"], hb["account_id"], hb["address"]) == ("global", None, bob)
    un = await store.add(carol, channel="email", reason="unsubscribe", account_id=a1)
    assert (un["scope"], un["account_id"]) == ("account", a1)
    with pytest.raises(BadEntry, match="--account"):
        await store.add(carol, channel="email", reason="unsubscribe")
    with pytest.raises(BadEntry, match="reason"):
        await store.add(carol, channel="email", reason="dunno")

    assert [e["reason"] for e in await store.check(mail("BOB@example.com"))] == ["hard_bounce"]
    assert [e["reason"] for e in await store.check(carol, account_id=a1)] == ["unsubscribe"]
    assert await store.check(carol, account_id=acct("acct_2")) == []
    assert await store.check(carol) == []
    with pytest.raises(BadEntry, match="phone"):
        await store.check(bob, channel="sms")


async def test_remove_is_scoped_and_audited(store):
    a1, dan = acct("acct_1"), mail("dan@example.com")
    await store.add(dan, channel="email", reason="manual", account_id=a1)
    await store.add(dan, channel="email", reason="manual")
    removed = await store.remove(dan, channel="email", account_id=a1,
                                 actor="alice", reason="asked by customer")
    assert [e["scope"] for e in removed] == ["account"]
    assert [e["scope"] for e in await store.check(dan, account_id=a1)] == ["global"]
    with pytest.raises(BadEntry):
        await store.remove(dan, channel="email", actor="", reason="x")
    [record] = [r for r in await store.audit.read(a1) if r["action"] == "suppression.remove"]
    assert (record["actor"], record["reason"]) == ("alice", "asked by customer")


async def test_an_entry_can_expire(store):
    eve = mail("eve@example.com")
    await store.add(eve, channel="email", reason="manual", expires=1)
    [entry] = await store.check(eve)
    assert entry["expires_at"] - entry["at"] == 1
    ttl = await store._redis.ttl(f"outbox:supp:email:{eve}")
    assert 0 < ttl <= 1


async def test_list_by_scope_and_reason(store, redis_backend):
    """Listed by SCAN over every primary of a cluster (on the shared cluster, only this test's
    entries are looked at)."""
    a1, a, b, phone = acct("acct_1"), mail("a@example.com"), mail("b@example.com"), N.phone()
    await store.add(a, channel="email", reason="complaint")
    await store.add(b, channel="email", reason="invalid")
    await store.add(phone, channel="sms", reason="sms_stop", account_id=a1)

    def mine(found: list[str]) -> list[str]:
        return sorted(x for x in found if redis_backend == "single" or N.suffix in x)

    assert mine([e["address"] async for e in store.entries()]) == sorted([a, b])
    assert mine([e["address"] async for e in store.entries(reason="invalid")]) == [b]
    assert [e["address"] async for e in store.entries(account_id=a1)] == [phone]


async def test_consent_keeps_the_grant_beside_the_revoke(redis):
    consent, a1, f = ConsentStore(redis), acct("acct_1"), mail("f@example.com")
    assert (await consent.get(a1, f, channel="email"))["status"] == "none"
    await consent.grant(a1, mail("F@example.com"), channel="email", source="form",
                        evidence="ip 192.0.2.1")
    record = await consent.revoke(a1, f, channel="email", source="reply")
    assert record["status"] == "revoked"
    assert (record["grant_source"], record["grant_evidence"], record["revoke_source"]) == \
        ("form", "ip 192.0.2.1", "reply")
    assert await redis.ttl(f"outbox:{{acct:{a1}}}:consent:email:{f}") == -1


async def test_preferences(redis):
    prefs, a1, number = PrefsStore(redis), acct("acct_1"), N.phone()
    await prefs.set(a1, f"{number[:4]} {number[4:8]} {number[8:]}", topic="meeting",
                    channel="sms", on=False)
    await prefs.set(a1, number, topic="task", channel="sms", on=True)
    shown = await prefs.get(a1, number)
    assert shown["topics"] == {"meeting": {"sms": False}, "task": {"sms": True}}


# --- through the CLI (sync tests: the CLI runs its own loop) ----------------------------


@pytest.fixture
def outbox(monkeypatch, redis_url, capsys):
    import os

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OUTBOX_REDIS_URL", redis_url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--log-level", "WARNING", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_dnc_import_reports_bad_lines_and_exits_1(outbox, tmp_path):
    register = tmp_path / "dnc.txt"
    register.write_text("91234567\n+852 6123 4567\n12\n\n51234567\nnot-a-number\n")
    code, out, err = outbox("suppression", "import", str(register), "--dnc", "--json")
    assert code == 1
    assert json.loads(out) == {"file": str(register), "imported": 3, "bad": 2}
    assert f"{register}:3:" in err and f"{register}:6:" in err
    code, out, _ = outbox("suppression", "check", "91234567", "--json")
    found = json.loads(out)
    assert found["suppressed"] is True
    assert [(e["address"], e["reason"], e["scope"]) for e in found["entries"]] == \
        [("+85291234567", "dnc_register", "dnc")]


def test_csv_import_and_export(outbox, tmp_path):
    data = tmp_path / "list.csv"
    data.write_text("address,channel,reason\nA@x.example,email,unsubscribe\n"
                    "b@x.example,email,hard_bounce\nnope,email,manual\n"
                    "+85291234567,sms,sms_stop\nc@x.example,fax,manual\n")
    assert outbox("accounts", "configure", "acct_1", "--rate", "50")[0] == 0  # a known account
    code, out, err = outbox("suppression", "import", str(data), "--account", "acct_1")
    assert code == 1 and "imported 3, bad lines 2" in out
    assert f"{data}:4:" in err and f"{data}:6:" in err
    code, out, _ = outbox("suppression", "export", "--account", "acct_1")
    rows = out.strip().splitlines()
    assert rows[0].startswith("address,channel,scope")
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["+85291234567", "a@x.example"]
    code, out, _ = outbox("suppression", "check", "b@x.example", "--json")
    assert json.loads(out)["entries"][0]["scope"] == "global"  # a fact, whatever the account


def test_support_actions_need_a_known_account(outbox):
    code, _, err = outbox("accounts", "unblock", "acct_none", "--reason", "r", "--actor", "a")
    assert code == 1 and "unknown account" in err  # the admin API's 404
    code, _, err = outbox("audit", "acct_none")
    assert code == 1
    with pytest.raises(SystemExit) as exc:  # reason and actor are required
        outbox("accounts", "suspend", "acct_none", "--actor", "a")
    assert exc.value.code == 2


def test_configure_then_show(outbox):
    code, _, _ = outbox("accounts", "configure", "acct_9", "--business-name", "Acme Ltd",
                        "--address", "1 Queen's Road, Hong Kong", "--contact-email",
                        "hello@acme.example", "--rate", "20", "--block-bounce", "0.08",
                        "--consent-mode", "opt_out")
    assert code == 0
    code, out, _ = outbox("accounts", "show", "acct_9", "--json")
    shown = json.loads(out)
    assert shown["state"] == "active"
    assert shown["sender"]["business_name"] == "Acme Ltd"
    assert shown["limits"]["rate"] == 20.0 and shown["limits"]["consent_mode"] == "opt_out"
    assert shown["limits"]["thresholds"]["block_bounce"] == 0.08
    assert set(shown["rates"]["email"]) >= {"sends", "hard_bounces", "complaints", "bounce_rate",
                                            "bounce_wilson_lower", "window"}
    code, out, _ = outbox("accounts", "list", "--json")
    assert json.loads(out) == [{"account_id": "acct_9", "state": "active"}]


async def test_a_rate_line_above_one_is_refused(redis_url):
    from suppression.reputation import Policy
    from suppression.store import AccountStore, BadEntry

    client = Redis.from_url(redis_url)
    accounts = AccountStore(client, Policy())
    with pytest.raises(BadEntry, match="fraction"):
        await accounts.configure("acct_r", block_bounce=5)
    assert (await accounts.configure("acct_r", block_bounce=0.2))["block_bounce"] == "0.2"
    await client.aclose()


async def test_one_accounts_entries_are_found_by_its_escaped_pattern_alone(store):
    """``entries(account_id=A)`` scans ``outbox:\\{acct:A\\}:supp:*`` (keys.glob_escape): on a
    single Redis and across the cluster's nodes, A's entries and none of A_other's, A2's,
    A.x's (ids that extend A), nor a pattern from a caller's ``*``."""
    base = acct("acct")
    owners = [base, f"{base}_other", f"{base}2", f"{base}.x"]
    for i, owner in enumerate(owners):
        await store.add(mail(f"only{i}@example.com"), channel="email", reason="unsubscribe",
                        account_id=owner)
    listed = [(e["address"], e["account_id"]) async for e in store.entries(account_id=base)]
    assert listed == [(mail("only0@example.com"), base)]
    with pytest.raises(ValueError, match="account id must be"):
        [e async for e in store.entries(account_id=base + "*")]
