"""Workloads: a job stream, what to seed in Redis before it, and what each job should end as.

A workload is registered in ``WORKLOADS`` by name. ``a``, ``b``, ``c`` and ``cluster`` share one
job stream (``email_mix``) and differ in the number of ``outbox worker`` processes (1, 2, 4) or
in the Redis (``cluster``: the bench profile's three-master Redis Cluster); an SMS or webhook
workload adds a stream (and, if needed, a sink) of its own beside them.

``email_mix`` (deterministic, seeded): 1,000 accounts with a mild skew (weight 1/(rank+20):
the busiest account gets ~1.3 % of the jobs, far under the default 100 msg/s account rate);
1 % invalid jobs (half not JSON, half missing ``to``/``subject``); of the valid ones 25 %
marketing, 75 % transactional; 2 % of all jobs go to globally suppressed recipients (hard
bounces seeded with ``SuppressionStore.add``); 8 % of marketing jobs go to recipients without
consent; every other marketing recipient is granted consent first with ``ConsentStore.grant``
(the Python API behind ``outbox consent grant``), and, when the code has it, every account is
given its sender information (UEMO s.8) with ``AccountStore.configure`` (``outbox accounts
configure``), as marketing needs it, and its sending domain ``shop<n>.example.com`` (the
domain of its jobs' ``from``) is added and recorded verified through the product's domain store
(``outbox domains``) with a real RSA-2048 key, so the worker DKIM-signs every message it sends
(``OUTBOX_DKIM`` on, the default; ``dkim`` and ``nodkim`` measure it on and off).
Transactional messages: receipt-like, ~0.4 KB text + ~1 KB html. Marketing: ~1 KB text +
~2.5 KB html with a Chinese subject and display name (as ``benchmarks/mime_bench.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

T0 = b'"__T0__"'  # replaced by the enqueue time (epoch seconds, float) at publish

DOMAINS = ["gmail.com", "yahoo.com.hk", "outlook.com", "hotmail.com", "netvigator.com",
           "icloud.com", "hku.hk", "cuhk.edu.hk", "pacific.net.hk", "biznetvigator.com"]

MKT_SUBJECT = "【春季優惠】全場八折，只限本週！Spring sale: 20% off everything this week"
MKT_FROM = "Acme 亞克美 <sales@{dom}>"
MKT_TEXT = ("Spring sale: 20% off everything\n\nDear customer, our spring collection has "
            "arrived and for one week only everything in store and online is 20% off. Use the "
            "code SPRING20 at checkout.\n\n親愛的顧客：春季新品已經到店，本週內全場貨品八折優惠，"
            "結帳時輸入優惠碼 SPRING20 即可。\n\nShop now: https://shop.acme.example/spring?"
            "utm_source=email&utm_medium=newsletter&utm_campaign=spring\n\nOffer valid until 31 "
            "March. Cannot be combined with other offers. Free delivery on orders over HK$500 to "
            "addresses in Hong Kong.\n") * 2
MKT_HTML = ('<!doctype html><html><head><meta charset="utf-8"><title>Spring sale</title></head>'
            '<body style="margin:0;padding:0;font-family:Helvetica,Arial,sans-serif">'
            '<table role="presentation" width="100%"><tr><td align="center">'
            '<table role="presentation" width="600" style="background:#ffffff"><tr>'
            '<td style="padding:24px"><h1 style="font-size:24px;color:#222">Spring sale: 20% off '
            'everything</h1>' + ''.join(
                f'<p style="font-size:16px;line-height:24px;color:#444">{para}</p>'
                for para in MKT_TEXT.split("\n\n")) +
            '<p><a href="https://shop.acme.example/spring?utm_source=email" style="display:'
            'inline-block;padding:12px 24px;background:#d33;color:#fff">Shop now 立即選購</a></p>'
            '</td></tr></table></td></tr></table></body></html>')
TX_TEXT = ("Thank you for your order {n}.\n\nItems: 2 x Widget (HK$120.00), 1 x Gadget "
           "(HK$380.00)\nDelivery: standard, 2-3 working days\nTotal: HK$620.00\n\n"
           "Questions? Reply to this email or call 2123 4567.\n")
TX_HTML = ('<html><body><h2>Receipt {n}</h2><p>Thank you for your order.</p><table>'
           '<tr><td>2 x Widget</td><td>HK$120.00</td></tr><tr><td>1 x Gadget</td>'
           '<td>HK$380.00</td></tr><tr><td><b>Total</b></td><td><b>HK$620.00</b></td></tr>'
           '</table><p>Delivery: standard, 2-3 working days.</p><p style="color:#888">Questions? '
           'Reply to this email or call 2123 4567.</p></body></html>')


@dataclass(frozen=True, slots=True)
class Job:
    """One job as published. ``body`` may hold the T0 placeholder. ``expect``: what Outbox
    should do with it (``sent``, ``suppressed``, ``no_consent``, ``invalid``); the baselines
    send every job that parses (``valid``)."""

    body: bytes
    expect: str

    @property
    def valid(self) -> bool:
        return self.expect != "invalid"

    def stamped(self, t0: float) -> bytes:
        return self.body.replace(T0, repr(t0).encode(), 1) if self.valid else self.body


@dataclass
class Stream:
    """A generated job stream and the Redis state it needs."""

    jobs: list[Job]
    consent: list[tuple[str, str]] = field(default_factory=list)   # (account, recipient)
    suppressed: list[str] = field(default_factory=list)            # global hard bounces
    accounts: list[str] = field(default_factory=list)              # configured (sender info)
    routing_key: str = "email"

    def expected(self, n: int, system_checks: bool) -> int:
        """Messages the sink should accept for the first ``n`` jobs."""
        part = self.jobs[:n]
        if system_checks:
            return sum(1 for j in part if j.expect == "sent")
        return sum(1 for j in part if j.valid)

    async def seed(self, redis_url: str, cluster: bool = False) -> None:
        """Grant consents and add suppression entries through Outbox's own store API, with the
        product's own client (``sender.connect.redis_client``: a Redis Cluster client with
        ``cluster``, which finds the other nodes from the one named)."""
        from sender.connect import redis_client
        from suppression import keys, store

        redis = redis_client(redis_url, cluster=cluster)
        consent, supp = store.ConsentStore(redis), store.SuppressionStore(redis)
        accounts = None
        if hasattr(store, "SENDER_FIELDS"):  # marketing needs sender information (UEMO s.8)
            from suppression.reputation import Policy

            accounts = store.AccountStore(redis, Policy())
        domains = domain_store(redis)
        sem = asyncio.Semaphore(64)

        async def grant(acct: str, rcpt: str) -> None:
            async with sem:
                await consent.grant(acct, rcpt, channel="email", source="bench signup form",
                                    actor="bench")

        async def suppress(addr: str) -> None:
            async with sem:
                await supp.add(addr, channel="email", reason="hard_bounce",
                               source="bench", actor="bench")

        async def configure(acct: str) -> None:
            async with sem:
                assert accounts is not None
                n = acct.removeprefix("acct_")
                await accounts.configure(
                    acct, actor="bench", business_name=f"Shop {n} Ltd",
                    address=f"{n} Queen's Road Central, Hong Kong",
                    contact_email=f"support@shop{n}.example.com", contact_phone="+85221234567")
                if domains is not None:  # its sending domain verified, with a real DKIM key
                    await verify_domain(domains, acct, f"shop{n}.example.com")
                elif hasattr(keys, "senders"):  # its sending domain verified, with DMARC
                    await redis.hset(keys.senders(acct), f"shop{n}.example.com", "1")

        await asyncio.gather(*(configure(a) for a in (self.accounts if accounts else [])))
        await asyncio.gather(*(grant(a, r) for a, r in self.consent),
                             *(suppress(a) for a in self.suppressed))
        await redis.aclose()


#: real RSA-2048 keys the accounts' sending domains are given (made once per process and
#: shared round-robin: making 1,000 would take a minute; signing costs the same with any)
KEY_POOL = 8
_keys: list[bytes] = []


def _pooled_key(algorithm: str) -> bytes:
    """The next key of the pool (RSA 2048, ``suppression.dkim_keys.generate``)."""
    from suppression import dkim_keys

    if len(_keys) < KEY_POOL:
        _keys.append(dkim_keys.generate(algorithm))
        return _keys[-1]
    _keys.append(_keys.pop(0))
    return _keys[-1]


def domain_store(redis: Any) -> Any:
    """The product's sending-domain store (``outbox domains``), sealing keys with the secret
    the benchmarked worker runs with (the development default: the systems get no
    ``OUTBOX_SECRET_KEY``); None for a source tree without one (``--outbox-src``)."""
    try:
        from config.settings import DEV_SECRET_KEY
        from suppression.domains import DomainStore, Publishing
        from suppression.sealed import Sealer
    except ImportError:
        return None
    return DomainStore(redis, Sealer([DEV_SECRET_KEY]), Publishing("bench.example"),
                       make_key=_pooled_key)


async def verify_domain(domains: Any, account: str, domain: str) -> None:
    """``domain`` added to ``account`` (an RSA-2048 key sealed in its record) and recorded
    verified as `outbox domains verify` records a domain whose key, SPF and DMARC were found:
    the worker signs its mail with that key (``OUTBOX_DKIM`` on) and the pre-send script lets
    it send as the domain."""
    await domains.add(account, domain, actor="bench")
    record = await domains.get(account, domain)
    shown = await domains.record_verification(account, domain, {
        "at": int(time.time()),
        "dkim": [{"selector": k["selector"], "found": "match"} for k in record["keys"]],
        "spf": {"found": "ok"}, "return_path": {"found": "not_configured"},
        "dmarc": {"name": f"_dmarc.{domain}", "policy": "none", "found": "ok"}},
        actor="bench")
    if not shown["verified"]:
        raise RuntimeError(f"bench seed: {domain} of {account} not verified: "
                           f"{shown['verification']['missing']}")


def email_mix(n: int, seed: int = 20260401) -> Stream:
    rng = random.Random(seed)
    accounts = [f"acct_{i:04d}" for i in range(1000)]
    weights = [1 / (i + 20) for i in range(1000)]
    picks = rng.choices(accounts, weights=weights, k=n)
    jobs: list[Job] = []
    consent: list[tuple[str, str]] = []
    suppressed: list[str] = []
    for i in range(n):
        acct = picks[i]
        rcpt = f"user{rng.randrange(10_000_000)}@{rng.choice(DOMAINS)}"
        r = rng.random()
        if r < 0.01:  # invalid
            if r < 0.005:
                body = b'{"v": 1, "id": "bad-' + str(i).encode() + b'", "channel": "email", '
                jobs.append(Job(body, "invalid"))
            else:
                jobs.append(Job(json.dumps({
                    "v": 1, "id": f"j{i:07d}", "account_id": acct, "channel": "email",
                    "category": "transactional", "from": "Shop <no-reply@shop.example.com>",
                    "text": "missing to and subject"}).encode(), "invalid"))
            continue
        marketing = rng.random() < 0.25
        expect = "sent"
        if rng.random() < 0.0202:
            expect = "suppressed"
            suppressed.append(rcpt)
        elif marketing:
            if rng.random() < 0.08:
                expect = "no_consent"
            else:
                consent.append((acct, rcpt))
        dom = f"shop{acct[5:]}.example.com"  # the account's sending domain
        job: dict[str, Any] = {
            "v": 1, "id": f"j{i:07d}", "account_id": acct, "channel": "email",
            "category": "marketing" if marketing else "transactional", "topic": None,
            "to": rcpt, "reply_to": None, "not_after": None,
            "metadata": {"crm_message_id": i, "t0": "__T0__"},
        }
        if marketing:
            job.update({"from": MKT_FROM.format(dom=dom), "subject": MKT_SUBJECT,
                        "text": MKT_TEXT, "html": MKT_HTML,
                        "headers": {"X-Campaign": "spring-2026"}})
        else:
            job.update({"from": f"Shop <no-reply@{dom}>",
                        "subject": f"Your receipt #{i}", "text": TX_TEXT.format(n=i),
                        "html": TX_HTML.format(n=i), "headers": {}})
        jobs.append(Job(json.dumps(job, ensure_ascii=False).encode(), expect))
    return Stream(jobs, consent, suppressed, accounts)


@dataclass(frozen=True)
class Workload:
    """A named workload: a job stream, the Outbox processes that consume it, and whether the
    baselines run on the same stream."""

    name: str
    description: str
    stream: Callable[[int], Stream]
    outbox_processes: int
    baselines: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    kind: str = "throughput"  # "blast": its own session (benchmarks/blast.py)
    cluster: bool = False  # Outbox on the bench profile's Redis Cluster (OUTBOX_REDIS_CLUSTER)
    max_jobs: int | None = None  # fewer jobs per throughput run than --jobs (session time)
    #: OUTBOX_DKIM for this workload's Outbox (its system named "... dkim on|off"); None: default
    dkim: bool | None = None
    #: added to its Outbox system's name (workloads that differ by ``extra_env`` alone)
    variant: str = ""


WORKLOADS: dict[str, Workload] = {}


def register(w: Workload) -> Workload:
    WORKLOADS[w.name] = w
    return w


register(Workload("a", "email mix, full pipeline, 1 outbox worker process", email_mix, 1,
                  baselines=True))
register(Workload("b", "email mix, full pipeline, 2 outbox worker processes "
                  "(`outbox worker --processes 2`: one supervisor)", email_mix, 2))
register(Workload("c", "email mix, full pipeline, 4 outbox worker processes "
                  "(`outbox worker --processes 4`: one supervisor)", email_mix, 4))
register(Workload("cluster", "email mix, full pipeline, 1 outbox worker process on a "
                  "three-master Redis Cluster (OUTBOX_REDIS_CLUSTER=true)", email_mix, 1,
                  cluster=True, max_jobs=10_000))

register(Workload("dkim", "email mix, full pipeline, 1 outbox worker process, every message "
                  "DKIM-signed (OUTBOX_DKIM=true, RSA-2048)", email_mix, 1, dkim=True))
register(Workload("nodkim", "email mix, full pipeline, 1 outbox worker process, signing off "
                  "(OUTBOX_DKIM=false)", email_mix, 1, dkim=False))
#: issue 21's limits on, none ever reached, so every job runs and counts every check: frequency
#: caps on marketing and notification e-mail, a daily quota, quiet hours in wait mode (an
#: empty window: checked, never inside). Signing off, to be read against "nodkim".
LIMITS_ON = {"OUTBOX_FREQUENCY_CAP_MARKETING_EMAIL": "1000000",
             "OUTBOX_FREQUENCY_CAP_NOTIFICATION_EMAIL": "1000000",
             "OUTBOX_DAILY_QUOTA": "1000000000", "OUTBOX_QUIET_MARKETING_EMAIL": "wait",
             "OUTBOX_QUIET_NOTIFICATION_EMAIL": "wait", "OUTBOX_QUIET_START": "0",
             "OUTBOX_QUIET_END": "0"}
register(Workload("limits", "email mix, full pipeline, 1 outbox worker process, signing off, "
                  "caps, quota and quiet hours on and never reached", email_mix, 1,
                  dkim=False, extra_env=LIMITS_ON, variant="limits on"))


def _blast(n: int) -> Stream:
    from benchmarks.blast import blast_stream  # it imports this module

    return blast_stream(n)


register(Workload("blast", "transactional latency during an 8,000-job marketing blast, "
                  "priority lanes vs one FIFO, 1 outbox worker process", _blast, 1,
                  kind="blast"))
