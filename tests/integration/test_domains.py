"""``outbox domains``: keys, the records to publish, and verification against a real DNS server
on loopback (tests/integration/dns_server.py, UDP and TCP) through OUTBOX_DNS_NAMESERVERS.
Nothing here asks any other DNS server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from suppression import keys
from tests.integration.dns_server import Zone, dns_server

pytestmark = pytest.mark.integration

A, B = "acct_a", "acct_b"
DOMAIN = "shop.example"
BOUNCES = "bounces.outbox.example"
SECRET = "first-secret-key-0123456789"


@pytest.fixture
def zone() -> Zone:
    return Zone()


@pytest.fixture
async def domains_cli(cli: Any, monkeypatch: pytest.MonkeyPatch, zone: Zone, capsys: Any) -> Any:
    """``await run(*argv) -> (exit status, stdout)`` with OUTBOX_DNS_NAMESERVERS on the test
    DNS server, a bounce domain and a secret key; accounts A and B known."""
    async with dns_server(zone) as nameserver:
        monkeypatch.setenv("OUTBOX_DNS_NAMESERVERS", nameserver)
        monkeypatch.setenv("OUTBOX_BOUNCE_DOMAIN", BOUNCES)
        monkeypatch.setenv("OUTBOX_SECRET_KEY", SECRET)
        for account in (A, B):
            assert await cli("accounts", "configure", account, "--business-name", "Shop") == 0

        errors: list[str] = []

        async def run(*argv: str) -> tuple[int, str]:
            capsys.readouterr()
            code = await cli("domains", *argv)
            out, err = capsys.readouterr()
            errors.append(err)
            return code, out

        run.errors = errors  # type: ignore[attr-defined]
        yield run


async def _add(run: Any, account: str = A, *extra: str) -> dict[str, Any]:
    code, out = await run("add", account, DOMAIN, "--json", *extra)
    assert code == 0, out
    added: dict[str, Any] = json.loads(out)
    return added


def _publish(zone: Zone, records: list[dict[str, str]], *, skip: tuple[str, ...] = ()) -> None:
    for r in records:
        if not any(r["name"].startswith(s) for s in skip):
            zone.set(r["name"], r["type"], r["value"])


async def _verify(run: Any, account: str = A) -> tuple[int, dict[str, Any]]:
    code, out = await run("verify", account, DOMAIN, "--json")
    return code, json.loads(out)


async def test_add_prints_every_record_to_publish_and_keeps_the_key_sealed(domains_cli,
                                                                           redis_url):
    added = await _add(domains_cli, A, "--ed25519")
    assert set(added) == {"account", "domain", "selector", "records"}
    assert (added["account"], added["domain"]) == (A, DOMAIN)
    by_name = {(r["name"], r["type"]): r["value"] for r in added["records"]}
    assert all(set(r) == {"name", "type", "value"} for r in added["records"])
    rsa = by_name[(f"{added['selector']}._domainkey.{DOMAIN}", "TXT")]
    assert rsa.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # SubjectPublicKeyInfo of RSA 2048
    ed = by_name[(f"{added['selector']}-ed._domainkey.{DOMAIN}", "TXT")]
    assert ed.startswith("v=DKIM1; k=ed25519; p=") and len(ed.split("p=")[1]) == 44
    assert by_name[(DOMAIN, "TXT")] == f"v=spf1 include:{BOUNCES} ~all"
    assert by_name[(f"_dmarc.{DOMAIN}", "TXT")].startswith("v=DMARC1; p=")
    assert by_name[(f"bounces.{DOMAIN}", "CNAME")] == BOUNCES
    assert len(added["records"]) == 5
    client = aioredis.Redis.from_url(redis_url)
    stored = (await client.hget(keys.domains(A), DOMAIN)).decode()
    await client.aclose()
    assert "PRIVATE KEY" not in stored and '"sealed":"v1.' in stored
    code, shown = await domains_cli("show", A, DOMAIN, "--json")
    assert code == 0 and "sealed" not in shown and "PRIVATE" not in shown
    assert json.loads(shown)["verified"] is False


async def test_verify_good_records_is_exit_0_and_lets_the_account_send(domains_cli, zone,
                                                                       redis_url):
    added = await _add(domains_cli)
    _publish(zone, added["records"])
    zone.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=quarantine; rua=mailto:d@shop.example")
    zone.truncate_udp = True  # the answers come over TCP
    code, found = await _verify(domains_cli)
    assert code == 0, found
    assert found["verified"] is True and found["missing"] == []
    assert [d["found"] for d in found["dkim"]] == ["match"]
    assert found["spf"]["found"] == "ok" and found["spf"]["includes"] is True
    assert found["dmarc"]["policy"] == "quarantine"
    assert found["return_path"]["found"] == "ok", found["return_path"]
    assert found["bulk_sender"] == {"met": True, "dkim_aligned": True, "spf_aligned": True,
                                    "dmarc": True, "one_click_unsubscribe": True,
                                    "missing": []}
    assert zone.served["tcp"] >= 4
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) == b"1"
    assert await client.hget(keys.domain_owner(DOMAIN), "owner") == A.encode()
    await client.aclose()
    code, listed = await domains_cli("list", A, "--json")
    row = json.loads(listed)[0]
    assert row["verified"] is True and row["verified_at"].endswith("Z")
    assert row["return_path"] == f"bounces.{DOMAIN}"


async def test_verify_with_nothing_published_is_exit_1_saying_what_is_missing(domains_cli,
                                                                              redis_url):
    added = await _add(domains_cli)
    code, found = await _verify(domains_cli)
    assert code == 1
    assert found["verified"] is False
    assert found["dkim"][0]["found"] == "missing"
    assert f"{added['selector']}._domainkey.{DOMAIN}" in found["missing"][0]
    assert {found["spf"]["found"], found["dmarc"]["found"],
            found["return_path"]["found"]} == {"missing"}
    assert found["bulk_sender"]["met"] is False
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) is None
    await client.aclose()
    code, text = await domains_cli("verify", A, DOMAIN)
    assert code == 1 and "NOT verified" in text and "missing: DKIM TXT" in text


async def test_a_wrong_key_is_not_verified(domains_cli, zone):
    added = await _add(domains_cli)
    _publish(zone, added["records"])
    other = await domains_cli("add", B, "other.example", "--json")
    wrong = next(r["value"] for r in json.loads(other[1])["records"] if "_domainkey" in r["name"])
    zone.set(f"{added['selector']}._domainkey.{DOMAIN}", "TXT", wrong)
    code, found = await _verify(domains_cli)
    assert code == 1 and found["dkim"][0]["found"] == "wrong_key"
    assert "different key" in found["missing"][0]


async def test_without_dmarc_the_domain_verifies_but_fails_the_bulk_rules(domains_cli, zone,
                                                                         redis_url):
    added = await _add(domains_cli)
    _publish(zone, added["records"], skip=("_dmarc.",))
    code, found = await _verify(domains_cli)
    assert code == 0 and found["verified"] is True
    assert found["dmarc"]["found"] == "missing"
    assert found["bulk_sender"]["met"] is False
    assert found["bulk_sender"]["missing"] == ["a DMARC record"]
    assert any(a.startswith("DMARC: publish TXT _dmarc.") for a in found["advice"])
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) == b"0"  # marketing refused
    await client.aclose()
    _, text = await domains_cli("verify", A, DOMAIN)
    assert "bulk-sender requirements: NOT met: missing a DMARC record" in text


async def test_a_failed_lookup_leaves_a_verified_domain_verified(domains_cli, zone,
                                                                 redis_url):
    added = await _add(domains_cli)
    _publish(zone, added["records"])
    assert (await _verify(domains_cli))[0] == 0
    zone.failing.add(f"{added['selector']}._domainkey.{DOMAIN}")
    code, found = await _verify(domains_cli)
    assert code == 1 and found["inconclusive"] is True
    assert found["dkim"][0]["found"] == "error" and "lookup failed" in found["missing"][0]
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) == b"1"  # still allowed to send
    await client.aclose()
    zone.failing.clear()
    zone.delete(f"{added['selector']}._domainkey.{DOMAIN}", "TXT")
    assert (await _verify(domains_cli))[0] == 1  # a definite answer: no longer verified
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) is None
    await client.aclose()


async def test_rotation_keeps_the_old_key_until_the_new_is_published_then_retire(domains_cli,
                                                                                 zone, redis_url):
    added = await _add(domains_cli)
    _publish(zone, added["records"])
    old = added["selector"]
    assert (await _verify(domains_cli))[0] == 0
    code, out = await domains_cli("rotate", A, DOMAIN, "--json")
    rotated = json.loads(out)
    new = next(k["selector"] for k in rotated["keys"] if k["state"] == "pending")
    assert code == 0 and new != old and rotated["selector"] == old
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) == b"1"  # still sending meanwhile
    await client.aclose()
    code, found = await _verify(domains_cli)  # the new key is not published yet
    assert code == 0 and any(new in a for a in found["advice"])
    assert found["selector"] == old
    _publish(zone, [r for r in rotated["records"] if r["name"].startswith(new)])
    code, found = await _verify(domains_cli)
    assert code == 0 and found["selector"] == new
    _, shown = await domains_cli("show", A, DOMAIN, "--json")
    states = {k["selector"]: k["state"] for k in json.loads(shown)["keys"]}
    assert states == {old: "retiring", new: "active"}
    code, _ = await domains_cli("retire", A, DOMAIN, "--selector", new)
    assert code == 2  # the active key is never retired
    code, out = await domains_cli("retire", A, DOMAIN, "--json")
    assert code == 0 and [k["selector"] for k in json.loads(out)["keys"]] == [new]
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) == b"1"
    await client.aclose()


async def test_a_domain_verified_for_one_account_is_refused_to_another_unless_shared(
        domains_cli, zone, redis_url):
    _publish(zone, (await _add(domains_cli, A))["records"])
    assert (await _verify(domains_cli, A))[0] == 0
    code, _ = await domains_cli("add", B, DOMAIN)
    assert code == 2 and "verified for another account" in domains_cli.errors[-1]
    code, out = await domains_cli("share", B, DOMAIN, "--actor", "ops", "--reason",
                                  "same company", "--json")
    assert code == 0 and json.loads(out)["shared_with"] == [B]
    added_b = await _add(domains_cli, B)
    _publish(zone, [r for r in added_b["records"] if "_domainkey" in r["name"]])
    code, found = await _verify(domains_cli, B)
    assert code == 0 and found["verified"] is True
    client = aioredis.Redis.from_url(redis_url)
    audit = await client.xrevrange(keys.GLOBAL_AUDIT, count=1)
    assert audit[0][1][b"action"] == b"domain.share" and audit[0][1][b"actor"] == b"ops"
    await client.aclose()
    code, _ = await domains_cli("unshare", B, DOMAIN, "--actor", "ops", "--reason", "sold")
    assert code == 0
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(B), DOMAIN) is None  # B may no longer send as it
    await client.aclose()


async def test_remove_releases_the_domain(domains_cli, zone, redis_url):
    _publish(zone, (await _add(domains_cli))["records"])
    assert (await _verify(domains_cli))[0] == 0
    code, out = await domains_cli("remove", A, DOMAIN, "--json")
    assert code == 0 and json.loads(out)["removed"] is True
    client = aioredis.Redis.from_url(redis_url)
    assert await client.hget(keys.senders(A), DOMAIN) is None
    assert await client.hget(keys.domain_owner(DOMAIN), "owner") is None
    await client.aclose()
    assert (await domains_cli("show", A, DOMAIN))[0] == 2


async def test_a_bad_nameserver_setting_is_refused_naming_it(cli, monkeypatch, capsys):
    monkeypatch.setenv("OUTBOX_DNS_NAMESERVERS", "dns.example.com:53")
    assert await cli("domains", "list", A) == 2
    err = capsys.readouterr().err
    assert "OUTBOX_DNS_NAMESERVERS" in err and "IP address" in err


@pytest.mark.backends
async def test_add_verify_and_share_on_either_redis(cli, monkeypatch, zone, names, capsys,
                                                    redis_backend):
    """The store's keys (the account's records and senders under its hash tag, the global
    owner apart) work on a single Redis and on the Redis Cluster."""
    a, b, domain = names.account("acct_a"), names.account("acct_b"), f"d{names.suffix}.example"
    async with dns_server(zone) as nameserver:
        monkeypatch.setenv("OUTBOX_DNS_NAMESERVERS", nameserver)
        for account in (a, b):
            assert await cli("accounts", "configure", account, "--business-name", "S") == 0
        capsys.readouterr()
        assert await cli("domains", "add", a, domain, "--json") == 0
        for r in json.loads(capsys.readouterr().out)["records"]:
            zone.set(r["name"], r["type"], r["value"])
        assert await cli("domains", "verify", a, domain) == 0
        assert await cli("domains", "add", b, domain) == 2
        assert await cli("domains", "share", b, domain, "--actor", "ops", "--reason", "r") == 0
        assert await cli("domains", "add", b, domain) == 0
        capsys.readouterr()
        assert await cli("domains", "list", b, "--json") == 0
        assert [d["domain"] for d in json.loads(capsys.readouterr().out)] == [domain]
