"""The benchmark seed (benchmarks/workloads.py) on a real Redis: every account's sending domain
is verified with a real RSA-2048 key the worker can open with the secret it runs with, so the
``dkim`` workload really signs, and the ``dkim``/``nodkim`` systems set OUTBOX_DKIM."""

from __future__ import annotations

import redis as redis_sync
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.systems import outbox
from benchmarks.workloads import WORKLOADS, email_mix
from config.settings import DEV_SECRET_KEY
from sender.connect import redis_client
from sender.dkim import DkimKey, DkimSigner
from sender.signing_keys import SigningKeys
from suppression import keys
from suppression.domains import DomainStore, Publishing
from suppression.sealed import Sealer


async def test_each_account_s_domain_is_verified_with_a_real_rsa_key(redis_url: str) -> None:
    stream = email_mix(40)
    stream.accounts = stream.accounts[:3]
    await stream.seed(redis_url)
    redis = redis_client(redis_url)
    try:
        store = DomainStore(redis, Sealer([DEV_SECRET_KEY]), Publishing("bench.example"))
        lookup = SigningKeys(store, DkimKey.from_pem)
        for n in ("0000", "0001", "0002"):
            account, domain = f"acct_{n}", f"shop{n}.example.com"
            shown = await store.show(account, domain)
            assert shown["verified"] is True and shown["dmarc"] is True
            assert await redis.hget(keys.senders(account), domain) == b"1"
            [key] = await lookup(account, domain)
            signature = DkimSigner().signature_headers(
                b"From: a@" + domain.encode() + b"\r\nSubject: x\r\n\r\nhi\r\n", [key])
            assert b"a=rsa-sha256" in signature and f"d={domain}".encode() in signature
            assert isinstance(key.private_key, rsa.RSAPrivateKey)
            assert key.private_key.key_size == 2048
    finally:
        await redis.aclose()
    sync = redis_sync.Redis.from_url(redis_url)
    assert sync.hlen(keys.domains("acct_0003")) == 0  # only the seeded accounts
    sync.close()


def test_the_dkim_workloads_name_and_configure_their_systems() -> None:
    on, off = (outbox(1, dkim=WORKLOADS[w].dkim) for w in ("dkim", "nodkim"))
    assert (on.name, off.name) == ("outbox x1 dkim on", "outbox x1 dkim off")
    env_on = on.env("amqp://x", "redis://x", "smtp://x")
    env_off = off.env("amqp://x", "redis://x", "smtp://x")
    assert (env_on["OUTBOX_DKIM"], env_off["OUTBOX_DKIM"]) == ("true", "false")
    assert "OUTBOX_DKIM" not in outbox(1).env("amqp://x", "redis://x", "smtp://x")
