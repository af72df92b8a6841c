"""The HTTP server's and the SMTP client's timeouts as settings: defaults, bounds, names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config import Settings, load_settings
from webhooks.app import LINGER


def test_a_slow_http_client_is_cut_within_a_minute_by_default():
    s = Settings()
    assert s.http_idle_timeout + s.http_body_timeout + LINGER <= 60


def test_the_end_of_data_reply_is_waited_for_ten_minutes_by_default():
    s = Settings()
    assert s.smtp_data_timeout == 600 and s.smtp_timeout < s.smtp_data_timeout


@pytest.mark.parametrize("name", ["http_idle_timeout", "http_body_timeout",
                                  "smtp_data_timeout"])
def test_a_timeout_must_be_positive(name):
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: 0})


def test_the_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OUTBOX_HTTP_IDLE_TIMEOUT", "7.5")
    monkeypatch.setenv("OUTBOX_HTTP_BODY_TIMEOUT", "3")
    monkeypatch.setenv("OUTBOX_SMTP_DATA_TIMEOUT", "120")
    s = load_settings()
    assert (s.http_idle_timeout, s.http_body_timeout, s.smtp_data_timeout) == (7.5, 3, 120)
