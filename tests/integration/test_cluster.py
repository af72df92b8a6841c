"""Outbox on a real Redis Cluster (three masters on loopback, ``scripts/services.py``), and the
same tests on a single Redis (``backends``): a worker sends every job exactly once and blocks
a dirty account; the support CLI works; a round trip's keys land on several primaries, and a
stale slot table (MOVED) or a slot being migrated (ASK) costs nothing but a resend.

The cluster is shared and never flushed: every account, address and job id here is this
test's own (``names``), and only those keys are looked at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster

from sender.client import Outbox
from sender.connect import redis_client
from suppression import keys
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.roundtrip import ClusterBusy, execute
from suppression.store import AccountStore
from tests.conftest import Names
from tests.integration.helpers import (
    collect,
    email_job,
    events,
    running_app,
    running_worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.backends]
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"
FINAL = {"sent", "bounced", "held"}  # held: the dirty account's jobs once it is blocked


async def test_jobs_are_sent_exactly_once_and_a_dirty_account_is_blocked(
        make_settings, smtp_server, amqp_url, backend_redis_url, names: Names,
        redis_backend: str) -> None:
    smtp_url, recorder = smtp_server
    clean_id, dirty_id = names.account("acct_clean"), names.account("acct_dirty")
    clean = [email_job(account_id=clean_id, to=names.email(f"c{i}@example.com"))
             for i in range(30)]
    dirty = [email_job(account_id=dirty_id, to=names.email(f"d{i}@example.com"))
             for i in range(60)]
    for job in dirty[1::2]:  # half of the dirty account's recipients are unknown users
        recorder.replies[job["to"]] = UNKNOWN.format(job["to"])
    settings = make_settings(smtp_url=smtp_url, account_rate=100000, account_burst=100000,
                             early_bounce_volume=10, min_bounce_volume=20)
    assert settings.redis_cluster is (redis_backend == "cluster")
    ids = {j["id"] for j in clean + dirty}
    async with Outbox(amqp_url) as outbox:
        for job in [*clean, *dirty, clean[0], clean[1]]:  # two ids published twice
            await outbox.enqueue(job)
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: {
            e["id"] for e in events(m) if e["status"] in FINAL} >= ids, timeout=60)
    final = {e["id"]: e["status"] for e in events(got)
             if e["status"] in FINAL and e["id"] in ids}  # (not the account's own event)
    assert set(final) == ids
    # exactly once: every clean job reached the relay once, the duplicates never
    assert all(final[j["id"]] == "sent" for j in clean)
    assert [len(recorder.by_rcpt(j["to"])) for j in clean] == [1] * len(clean)
    # blocked during its blast: its remaining jobs never reached the relay
    blocked = [j for j in dirty if final[j["id"]] == "held"]
    assert blocked, "the dirty account was never blocked"
    assert all(not recorder.by_rcpt(j["to"]) for j in blocked)
    assert all(len(recorder.by_rcpt(j["to"])) <= 1 for j in dirty)
    url, cluster = backend_redis_url
    redis = redis_client(url, cluster=cluster)
    try:
        store = AccountStore(redis, Policy())
        assert (await store.show(dirty_id))["state"] == "blocked"
        assert (await store.show(clean_id))["state"] == "active"
    finally:
        await redis.aclose()


async def test_the_support_cli_works_on_it(cli, capsys, names: Names, backend_redis_url
                                           ) -> None:
    """``outbox suppression add/check/list`` and ``outbox accounts show/unblock``."""
    gone, account = names.email("gone@example.com"), names.account("acct_cli")
    assert await cli("suppression", "add", gone, "--channel", "email", "--reason",
                     "complaint", "--actor", "alice") == 0
    capsys.readouterr()
    assert await cli("suppression", "check", gone.upper(), "--json") == 0
    [entry] = json.loads(capsys.readouterr().out)["entries"]
    assert (entry["address"], entry["scope"], entry["reason"]) == (gone, "global", "complaint")
    assert await cli("suppression", "list", "--reason", "complaint", "--json") == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    rows = [r for batch in listed for r in (batch if isinstance(batch, list) else [batch])]
    assert gone in {r["address"] for r in rows}  # found by SCAN on every primary

    url, cluster = backend_redis_url
    redis = redis_client(url, cluster=cluster)
    try:  # an account the worker blocked (as post_send.lua leaves it)
        await redis.hset(keys.state(account), mapping={"state": "blocked", "reason": "test"})
        await redis.sadd(keys.ACCOUNTS, account)
    finally:
        await redis.aclose()
    assert await cli("accounts", "show", account, "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "blocked"
    assert await cli("accounts", "unblock", account, "--reason", "list cleaned", "--actor",
                     "alice", "--json") == 0
    change = json.loads(capsys.readouterr().out)
    assert (change["from"], change["to"]) == ("blocked", "active")
    assert await cli("accounts", "show", account, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "active"
    assert shown["recent_transitions"][0]["actor"] == "alice"


async def test_the_admin_api_works_on_it(make_settings, names: Names,
                                        unused_tcp_port_factory: Any) -> None:
    """An account blocked by the real post-send script: shown, its evidence found by SCAN on
    every primary, unblocked; a suppression added, checked, removed."""
    import aiohttp

    from sender.service import make_redis
    from suppression.gate import Counts

    token = "admin-token-for-cluster-tests"
    settings = make_settings(admin_tokens=f"alice:admin:{token}")
    account, policy = names.account("acct_admin"), Policy(early_bounce_volume=5,
                                                          min_bounce_volume=10)
    redis = make_redis(settings)
    try:
        gate = Gate(redis, idempotency_ttl=3600, policy=policy)
        for i in range(6):  # every one a hard bounce: blocked at the early volume
            await gate.post_send(account, f"j{i}", status="bounced", attempt=1,
                                 counts=Counts(sends=1, hard=1), reason="userunknown",
                                 address=names.email(f"gone{i}@example.com"))
    finally:
        await redis.aclose()
    headers = {"Authorization": f"Bearer {token}"}
    async with running_app(settings, unused_tcp_port_factory()) as base, \
            aiohttp.ClientSession(headers=headers) as http:
        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body) as answer:
                return answer.status, await answer.json()

        status, shown = await call("GET", f"/admin/accounts/{account}")
        assert (status, shown["state"]) == (200, "blocked")
        status, evidence = await call("GET", f"/admin/accounts/{account}/suppressions")
        assert status == 200
        assert {e["address"] for e in evidence} == {
            names.email(f"gone{i}@example.com") for i in range(6)}
        status, change = await call("POST", f"/admin/accounts/{account}/unblock",
                                    {"actor": "alice", "reason": "list cleaned"})
        assert (status, change["state"]) == (200, "active")
        left = names.email("left@example.com")
        status, _ = await call("POST", "/admin/suppression", {
            "address": left, "channel": "email", "reason": "unsubscribe", "account": account,
            "actor": "alice"})
        assert status in (200, 201)
        status, found = await call("GET", f"/admin/suppression/{left}?account={account}")
        assert [e["reason"] for e in found["entries"]] == ["unsubscribe"]


# --- the cluster alone -----------------------------------------------------------------


@pytest.fixture
async def cluster(redis_backend: str, redis_cluster_url: str) -> Any:
    """A client of the test cluster (its tests are parametrized on the cluster alone)."""
    assert redis_backend == "cluster"
    client = redis_client(redis_cluster_url, cluster=True)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


async def _owners(cluster: RedisCluster) -> dict[int, int]:
    """slot -> port of the primary serving it, as the cluster itself says (CLUSTER SLOTS on
    a plain connection: not the client's table)."""
    node = Redis(host="127.0.0.1", port=cluster.get_primaries()[0].port)
    try:
        ranges = await node.execute_command("CLUSTER SLOTS")
        slots = {}
        for start, end, primary, *_ in (ranges.values() if isinstance(ranges, dict)
                                        else ranges):
            for slot in range(int(start), int(end) + 1):
                slots[slot] = int(primary[1])
        return slots
    finally:
        await node.aclose()


async def _keyslot(port: int, key: str) -> int:
    node = Redis(host="127.0.0.1", port=port)
    try:
        return int(await node.execute_command("CLUSTER KEYSLOT", key))
    finally:
        await node.aclose()


async def _on_node(port: int, key: str, *, asking: bool = False) -> dict[bytes, bytes]:
    """``HGETALL key`` on that node alone (a plain client: a MOVED would be an error);
    ``asking``: of a slot it is importing (``ASKING`` first, on the same connection)."""
    node = Redis(host="127.0.0.1", port=port, single_connection_client=True)
    try:
        if asking:
            await node.execute_command("ASKING")
        return await node.hgetall(key)
    finally:
        await node.aclose()


async def test_one_round_trip_spans_primaries_each_key_where_its_slot_lives(
        cluster: RedisCluster, names: Names) -> None:
    gate = Gate(cluster, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
    owners = await _owners(cluster)
    port = cluster.get_primaries()[0].port
    landed: dict[str, int] = {}
    for i in range(12):
        account, address = names.account(f"acct_r{i}"), names.email(f"r{i}@example.com")
        d = await gate.pre_send(account, "j1", owner="w", redelivered=False, expired=False,
                                attempt=1, address=address)
        assert d.verdict == "send"
        job, everyone = keys.job(account, "j1"), keys.global_history("email", address)
        landed[job] = owners[await _keyslot(port, job)]
        landed[everyone] = owners[await _keyslot(port, everyone)]
        assert (await _on_node(landed[job], job))[b"st"] == b"S"  # the claim, on its node
        # every key of the account on the job's node (one hash tag, one slot)
        assert landed[job] == owners[await _keyslot(port, keys.state(account))]
    assert len(set(landed.values())) >= 2, "every key on one primary: nothing was routed"
    for key in landed:  # the global history written beside the script, on its own node
        if key.startswith("outbox:hist:"):
            assert await cluster.zcard(key) == 1


async def test_a_stale_slot_table_is_corrected_by_moved_and_only_those_are_resent(
        cluster: RedisCluster, names: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(cluster, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
    account, address = names.account("acct_moved"), names.email("m@example.com")
    manager = cluster.nodes_manager
    stale = []
    for key in (keys.job(account, "j1"), keys.global_history("email", address)):
        slot = cluster.keyslot(key)
        right = manager.get_node_from_slot(slot)
        manager.slots_cache[slot] = [next(n for n in cluster.get_primaries() if n != right)]
        stale.append((slot, right))
    moved: list[int] = []
    real = NodesManager.move_slot

    async def counted(self: NodesManager, error: Any) -> None:
        moved.append(error.slot_id)
        await real(self, error)

    monkeypatch.setattr(NodesManager, "move_slot", counted)
    d = await gate.pre_send(account, "j1", owner="w", redelivered=False, expired=False,
                            attempt=1, address=address)
    assert d.verdict == "send"
    assert sorted(set(moved)) == sorted({slot for slot, _ in stale})
    assert all(manager.get_node_from_slot(slot) == right for slot, right in stale)
    # resent once, not run twice: one claim, one entry in the global history
    assert (await gate.job_state(account, "j1"))["st"] == "S"
    assert await cluster.zcard(keys.global_history("email", address)) == 1
    again = await gate.pre_send(account, "j1", owner="w#2", redelivered=False, expired=False,
                                attempt=1, address=address)
    assert again.verdict == "duplicate"


async def test_a_slot_migrated_under_a_client_ask_then_moved(
        cluster: RedisCluster, names: Names) -> None:
    """A real resharding of the test account's slot, with a client made before it. While the
    slot migrates, a new key of it is created on the importing node (ASK → ASKING, in the
    same write), and the multi-key script waits (Redis answers TRYAGAIN): ClusterBusy, which
    callers hold and retry like an outage, having claimed nothing. After it, the old table
    gets MOVED; nothing is lost or run twice."""
    gate = Gate(cluster, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
    account, address = names.account("acct_ask"), names.email("a@example.com")
    job = keys.job(account, "j1")
    slot = cluster.keyslot(job)
    source = cluster.nodes_manager.get_node_from_slot(slot)
    target = next(n for n in cluster.get_primaries() if n != source)
    src, dst = (Redis(host="127.0.0.1", port=source.port),
                Redis(host="127.0.0.1", port=target.port))
    try:
        src_id, dst_id = (await src.execute_command("CLUSTER MYID"),
                          await dst.execute_command("CLUSTER MYID"))
        await dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        await src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        try:
            marker = keys.config(account)  # not on the source yet: ASK
            everyone = keys.global_history("email", address)
            replies = await execute(cluster, [("HSET", marker, "business_name", "Ask Ltd"),
                                              ("ZCARD", everyone)])
            assert replies == [1, 0]
            assert (await _on_node(target.port, marker, asking=True)) == {
                b"business_name": b"Ask Ltd"}
            assert cluster.nodes_manager.get_node_from_slot(slot) == source  # ASK: no move
            with pytest.raises(ClusterBusy, match="migrated"):
                await gate.pre_send(account, "j1", owner="w", redelivered=False,
                                    expired=False, attempt=1, address=address)
            assert not await _on_node(target.port, job, asking=True)  # nothing claimed
        finally:
            await _finish_migration(cluster, src, slot, target, dst_id)
        # the client's table still names the source: MOVED, then the target
        d = await gate.pre_send(account, "j1", owner="w", redelivered=False, expired=False,
                                attempt=1, address=address)
        assert d.verdict == "send"
        assert cluster.nodes_manager.get_node_from_slot(slot) == target
        assert (await _on_node(target.port, job))[b"st"] == b"S"
        assert (await cluster.hgetall(marker)) == {b"business_name": b"Ask Ltd"}
        again = await gate.pre_send(account, "j1", owner="w#2", redelivered=False,
                                    expired=False, attempt=1, address=address)
        assert again.verdict == "duplicate"
    finally:
        await src.aclose()
        await dst.aclose()


async def _finish_migration(cluster: RedisCluster, src: Redis, slot: int, target: ClusterNode,
                            target_id: Any) -> None:
    """Move what is left in the slot (other runs' keys too) and give it to the target on
    every primary: the cluster stays whole whatever the test did."""
    while found := await src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        await src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                  "KEYS", *found)
    for node in cluster.get_primaries():
        plain = Redis(host="127.0.0.1", port=node.port)
        try:
            await plain.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        finally:
            await plain.aclose()


# --- start-up: the setting and the node must agree ------------------------------------------


def _outbox(argv: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return subprocess.run([sys.executable, "-m", "outbox", *argv],
                          env={**env, "OUTBOX_METRICS_PORT": "0", **settings},
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv", [["accounts", "list"], ["worker"]], ids=" ".join)
def test_a_cluster_node_without_the_setting_is_one_line_and_exit_2(
        argv: list[str], redis_cluster_url: str, amqp_url: str) -> None:
    """Without OUTBOX_REDIS_CLUSTER a single-node client would get MOVED for most keys: the
    command and the worker refuse to start, saying what to set."""
    done = _outbox(argv, OUTBOX_REDIS_URL=redis_cluster_url, OUTBOX_AMQP_URL=amqp_url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"outbox: Redis at {redis_cluster_url} (OUTBOX_REDIS_URL) is a Redis Cluster node; "
        "set OUTBOX_REDIS_CLUSTER=true (a single-node client gets MOVED for every key "
        "another node holds)")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["accounts", "list"], ["worker"]], ids=" ".join)
def test_the_setting_with_a_plain_redis_is_one_line_and_exit_2(
        argv: list[str], redis_server: Any, amqp_url: str) -> None:
    from tests.conftest import PROFILE

    done = _outbox(argv, OUTBOX_REDIS_URL=PROFILE.redis_url, OUTBOX_REDIS_CLUSTER="true",
                   OUTBOX_AMQP_URL=amqp_url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"outbox: Redis at {PROFILE.redis_url} (OUTBOX_REDIS_URL) is not a Redis Cluster "
        "node (cluster mode is not enabled there); unset OUTBOX_REDIS_CLUSTER or set "
        "OUTBOX_REDIS_URL to a node of the cluster")


def test_no_cluster_node_reachable_is_the_usual_unreachable_line_and_exit_1() -> None:
    done = _outbox(["accounts", "list"], OUTBOX_REDIS_URL="redis://127.0.0.1:1/0",
                   OUTBOX_REDIS_CLUSTER="true")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "outbox: cannot reach Redis at redis://127.0.0.1:1/0 (OUTBOX_REDIS_URL): connection "
        "refused; is Redis running? start it with `make services` or set OUTBOX_REDIS_URL"]


def test_a_list_of_nodes_starts_from_the_first_that_answers(
        redis_cluster_url: str, amqp_url: str, capsys: Any) -> None:
    """OUTBOX_REDIS_URL may list several nodes of the cluster: a node down at start-up (the
    first, here: nothing listens on port 1) does not stop a command; the cluster's map comes
    from the next."""
    nodes = f"redis://127.0.0.1:1/0,{redis_cluster_url}"
    done = _outbox(["accounts", "list", "--json"], OUTBOX_REDIS_URL=nodes,
                   OUTBOX_REDIS_CLUSTER="true", OUTBOX_AMQP_URL=amqp_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.lstrip().startswith("[")
    plain = _outbox(["accounts", "list"], OUTBOX_REDIS_URL=nodes, OUTBOX_AMQP_URL=amqp_url)
    assert plain.returncode == 2
    assert "OUTBOX_REDIS_URL lists several nodes: that is a Redis Cluster's" in plain.stderr
