"""OUTBOX_SMTP_URL and OUTBOX_AMQP_URL listing several URLs: parsed in order, a bad one
named by its position (never echoed: it may hold a password), and the masked forms."""

from __future__ import annotations

import pytest

from config import SettingsError, load_settings
from sender.connect import ServiceUnreachable, mask_url


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The :class:`SettingsError` that ``load_settings()`` raises with ``env`` set, as text."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def test_several_relays_are_parsed_in_order_of_preference(monkeypatch):
    monkeypatch.setenv("OUTBOX_SMTP_URL",
                       "smtp://u:p@relay1.test:587?starttls=true , smtps://relay2.test")
    s = load_settings()
    assert [r.name for r in s.smtp_relays] == ["relay1.test:587", "relay2.test:465"]
    assert s.smtp.name == "relay1.test:587" and s.smtp_relays[1].use_tls


@pytest.mark.parametrize(("value", "message"), [
    ("smtp://a.test:25,http://b.test", "relay 2 of 2: scheme must be smtp"),
    ("smtp://a.test:25,smtp://:25", "relay 2 of 2: no host"),
    ("smtp://a.test:25,smtp://a.test", "relay a.test:25 is listed twice"),
    (" , ", "no SMTP URL"),
])
def test_a_bad_relay_in_the_list_is_named_by_position(monkeypatch, value, message):
    text = refusal(monkeypatch, OUTBOX_SMTP_URL=value)
    assert "OUTBOX_SMTP_URL" in text and message in text


def test_several_rabbitmq_nodes_are_kept_in_order(monkeypatch):
    monkeypatch.setenv("OUTBOX_AMQP_URL", "amqp://g:pw@n1:5672/v,amqp://g:pw@n2:5672/v")
    assert load_settings().amqp_urls == ["amqp://g:pw@n1:5672/v", "amqp://g:pw@n2:5672/v"]


@pytest.mark.parametrize(("value", "message"), [
    ("amqp://n1/,redis://n2/", "node 2 of 2: must be an amqp"),
    ("amqp://n1/,amqp:///", "node 2 of 2: no host"),
    ("amqp://n1:99999/", "bad port"),
])
def test_a_bad_rabbitmq_node_is_named_by_position(monkeypatch, value, message):
    text = refusal(monkeypatch, OUTBOX_AMQP_URL=value)
    assert "OUTBOX_AMQP_URL" in text and message in text


def test_a_list_of_urls_is_masked_url_by_url():
    urls = "amqp://g:secret1@n1:5672/,amqp://g:secret2@n2:5672/"
    assert mask_url(urls) == "amqp://g:***@n1:5672/,amqp://g:***@n2:5672/"
    line = str(ServiceUnreachable("amqp", urls, "connection refused", "OUTBOX_AMQP_URL"))
    assert "secret" not in line and "n1:5672" in line and "n2:5672" in line


def test_a_category_routed_to_a_relay_by_its_position(monkeypatch):
    monkeypatch.setenv("OUTBOX_SMTP_URL", "smtp://a.test:25,smtp://b.test:25")
    monkeypatch.setenv("OUTBOX_SMTP_ROUTES", "Marketing=2, transactional=1")
    assert load_settings().smtp_routes == {"marketing": 2, "transactional": 1}


@pytest.mark.parametrize(("value", "message"), [
    ("marketing=3", "marketing=3, but OUTBOX_SMTP_URL names 2 relays"),
    ("marketing=0", "marketing=0, but OUTBOX_SMTP_URL names 2 relays"),
    ("newsletters=1", "OUTBOX_SMTP_ROUTES: unknown category 'newsletters'"),
    ("marketing", "must be category=relay pairs"),
])
def test_a_bad_route_is_refused(monkeypatch, value, message):
    assert message in refusal(monkeypatch, OUTBOX_SMTP_URL="smtp://a.test:25,smtp://b.test:25",
                              OUTBOX_SMTP_ROUTES=value)


def test_the_routes_know_every_job_category():
    from typing import get_args

    from config.settings import JobCategory
    from sender.models import Category

    assert set(get_args(JobCategory)) == set(get_args(Category))


def test_an_account_routed_to_a_relay_by_its_position(monkeypatch):
    monkeypatch.setenv("OUTBOX_SMTP_URL", "smtp://a.test:25,smtp://b.test:25")
    monkeypatch.setenv("OUTBOX_SMTP_ACCOUNT_ROUTES", "acct_bank=2, acct.shop-1=1")
    assert load_settings().smtp_account_routes == {"acct_bank": 2, "acct.shop-1": 1}


@pytest.mark.parametrize(("value", "message"), [
    ("acct_bank=3", "OUTBOX_SMTP_ACCOUNT_ROUTES: acct_bank=3, but OUTBOX_SMTP_URL names 2"),
    ("acct*=1", "'acct*' is not an account id"),
    ("acct:x=1", "'acct:x' is not an account id"),
    ("acct_bank", "must be account=relay pairs"),
])
def test_a_bad_account_route_is_refused(monkeypatch, value, message):
    assert message in refusal(monkeypatch, OUTBOX_SMTP_URL="smtp://a.test:25,smtp://b.test:25",
                              OUTBOX_SMTP_ACCOUNT_ROUTES=value)


@pytest.mark.parametrize("value", ["a", "acct_1", "A.b-c_d", "x" * 128, "x" * 129, "_a", "a b",
                                   "a}", "a*", "a:b", "a\n", "", "é"])
def test_the_settings_account_id_rule_is_suppression_ids(value):
    from config.settings import _ACCOUNT_ID
    from suppression.ids import is_id

    assert (_ACCOUNT_ID.fullmatch(value) is not None) == is_id(value)
