"""The test fixtures keep runs apart: each session claims its own Redis db by a lock in db 0,
and each test is marked by the services it uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import LOCK_KEY, LOCK_TTL, PROFILE, DbLock, claim_db

# lock keys of dbs no Redis has: the claims here never take a db from a real run
DBS = range(1000, 1002)


@pytest.fixture
def db0(redis_server: object) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=PROFILE.redis_port, db=0)
    client.delete(*(LOCK_KEY.format(db=db) for db in DBS))
    yield client
    client.delete(*(LOCK_KEY.format(db=db) for db in DBS))
    client.close()


def test_two_runs_get_two_dbs_and_a_third_is_told_why_not(db0):
    assert claim_db(db0, "run-a", DBS) == 1000
    assert claim_db(db0, "run-b", DBS) == 1001
    with pytest.raises(RuntimeError, match="every test Redis db 1000..1001 is claimed"):
        claim_db(db0, "run-c", DBS)
    assert db0.get(LOCK_KEY.format(db=1000)) == b"run-a"
    assert 0 < db0.ttl(LOCK_KEY.format(db=1000)) <= LOCK_TTL, "a killed run's claim expires"


def test_a_released_db_is_free_again_and_a_lost_claim_is_noticed(db0):
    lock = DbLock(redis.Redis(host="127.0.0.1", port=PROFILE.redis_port), "run-a",
                  claim_db(db0, "run-a", DBS))
    lock.refresh()
    assert not lock.lost
    db0.set(lock.key, "run-b")  # the claim expired and another run took the db
    lock.refresh()
    assert lock.lost
    with pytest.raises(pytest.fail.Exception, match="lost the lock on Redis db 1000"):
        lock.check()
    lock.release()
    assert db0.get(lock.key) == b"run-b", "releasing never frees another run's claim"
    db0.delete(lock.key)
    assert claim_db(db0, "run-c", DBS) == 1000


def test_the_session_db_is_claimed_by_this_run(redis_db_lock, redis_url, request):
    client = redis.Redis(host="127.0.0.1", port=PROFILE.redis_port, db=0)
    assert client.get(redis_db_lock.key) == redis_db_lock.token.encode()
    client.close()
    assert redis_url.endswith(f"/{redis_db_lock.db}") and 1 <= redis_db_lock.db <= 15
    assert request.node.get_closest_marker("redis") is not None


def test_a_test_is_marked_by_the_services_its_fixtures_use(make_settings, smtp_server, request):
    marks = {m.name for m in request.node.iter_markers()}
    assert {"redis", "rabbitmq", "smtp"} <= marks  # make_settings needs amqp_url and redis_url


def test_a_test_without_service_fixtures_is_not_marked(request):
    marks = {m.name for m in request.node.iter_markers()}
    assert not marks & {"redis", "rabbitmq", "smtp"}
