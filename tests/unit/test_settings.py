"""Settings: env over TOML over defaults; a bad value names the setting."""

from __future__ import annotations

import pytest

from config import SettingsError, load_settings, parse_smtp_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)


def test_defaults_suit_a_development_machine():
    s = load_settings()
    assert s.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert s.bounces_port == 2626 and s.metrics_port == 0


def test_env_beats_toml_beats_default(monkeypatch, tmp_path):
    cfg = tmp_path / "outbox.toml"
    cfg.write_text('prefetch = 7\nconcurrency = 9\nmessage_id_domain = "mail.acme.example"\n')
    monkeypatch.setenv("OUTBOX_CONFIG", str(cfg))
    monkeypatch.setenv("OUTBOX_PREFETCH", "11")
    s = load_settings()
    assert (s.prefetch, s.concurrency, s.message_id_domain) == (11, 9, "mail.acme.example")


def test_settings_are_frozen():
    s = load_settings()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        s.prefetch = 3  # type: ignore[misc]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("OUTBOX_PREFETCH", "lots", "OUTBOX_PREFETCH"),
    ("OUTBOX_PREFETCH", "0", "OUTBOX_PREFETCH"),
    ("OUTBOX_SMTP_URL", "http://relay", "OUTBOX_SMTP_URL"),
    ("OUTBOX_SMTP_URL", "smtp://relay?starttls=maybe", "OUTBOX_SMTP_URL"),
    ("OUTBOX_AMQP_URL", "redis://x", "OUTBOX_AMQP_URL"),
    ("OUTBOX_EMAIL_CHECK_MX", "perhaps", "OUTBOX_EMAIL_CHECK_MX"),
    ("OUTBOX_RETRY_TIERS", "60,10", "OUTBOX_RETRY_TIERS"),
    ("OUTBOX_PUBLIC_URL", "ftp://x", "OUTBOX_PUBLIC_URL"),
    ("OUTBOX_SMTP_POOL_SIZE", "-1", "OUTBOX_SMTP_POOL_SIZE"),
    ("OUTBOX_NO_SUCH_THING", "1", "OUTBOX_NO_SUCH_THING"),
])
def test_a_bad_value_stops_start_up_naming_the_setting(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_a_bad_toml_file_is_named(monkeypatch, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prefetch = [\n")
    monkeypatch.setenv("OUTBOX_CONFIG", str(cfg))
    with pytest.raises(SettingsError, match="bad.toml"):
        load_settings()


def test_smtp_url_forms():
    t = parse_smtp_url("smtps://me%40x:p%3Ass@relay.example")
    assert (t.host, t.port, t.use_tls, t.username) == ("relay.example", 465, True, "me@x")
    assert t.password is not None and t.password.get_secret_value() == "p:ss"
    t = parse_smtp_url("smtp://relay:587?starttls=true")
    assert (t.port, t.start_tls, t.use_tls) == (587, True, False)
    assert parse_smtp_url("smtp://relay").start_tls is None


def test_twilio_settings_must_be_complete(monkeypatch):
    monkeypatch.setenv("OUTBOX_TWILIO_ACCOUNT_SID", "AC123")
    with pytest.raises(SettingsError, match="OUTBOX_TWILIO_AUTH_TOKEN"):
        load_settings()
    monkeypatch.setenv("OUTBOX_TWILIO_AUTH_TOKEN", "t")
    with pytest.raises(SettingsError, match="OUTBOX_TWILIO_FROM"):
        load_settings()
    monkeypatch.setenv("OUTBOX_TWILIO_FROM", "+15005550006")
    assert load_settings().twilio_configured


def test_a_twilio_fallback_is_complete_or_refused(monkeypatch):
    monkeypatch.setenv("OUTBOX_TWILIO_FALLBACK_MESSAGING_SERVICE_SID", "MG1")
    with pytest.raises(SettingsError, match="a fallback needs the first path"):
        load_settings()
    for name, value in (("ACCOUNT_SID", "AC123"), ("AUTH_TOKEN", "t"),
                        ("FROM", "+15005550006")):
        monkeypatch.setenv(f"OUTBOX_TWILIO_{name}", value)
    same = load_settings()  # the first account's other Messaging Service
    assert same.twilio_fallback_configured and same.twilio_auth_tokens() == {"AC123": "t"}
    monkeypatch.setenv("OUTBOX_TWILIO_FALLBACK_ACCOUNT_SID", "AC456")
    with pytest.raises(SettingsError, match="needs OUTBOX_TWILIO_FALLBACK_AUTH_TOKEN"):
        load_settings()
    monkeypatch.setenv("OUTBOX_TWILIO_FALLBACK_AUTH_TOKEN", "u")
    assert load_settings().twilio_auth_tokens() == {"AC123": "t", "AC456": "u"}
    monkeypatch.delenv("OUTBOX_TWILIO_FALLBACK_MESSAGING_SERVICE_SID")
    with pytest.raises(SettingsError, match="OUTBOX_TWILIO_FALLBACK_FROM or"):
        load_settings()
    monkeypatch.setenv("OUTBOX_TWILIO_FALLBACK_FROM", "+15005550007")
    monkeypatch.setenv("OUTBOX_TWILIO_FALLBACK_API_BASE", "ftp://x")
    with pytest.raises(SettingsError, match="twilio_fallback_api_base|TWILIO_FALLBACK_API_BASE"):
        load_settings()


def test_secret_key_is_a_list_the_first_signs() -> None:
    s = load_settings(secret_key="new-key-0123456789abcdef, old-key-0123456789abcdef")
    assert s.secret_keys == ("new-key-0123456789abcdef", "old-key-0123456789abcdef")
    assert s.signing_key == "new-key-0123456789abcdef"
    assert not s.uses_dev_secret
    assert load_settings().uses_dev_secret


@pytest.mark.parametrize("value", ["short", "good-key-0123456789,", ""])
def test_secret_key_bad_values_name_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match="OUTBOX_SECRET_KEY"):
        load_settings(secret_key=value)


def test_the_shutdown_grace_must_cover_the_smtp_timeout(monkeypatch):
    monkeypatch.setenv("OUTBOX_SHUTDOWN_GRACE", "20")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        "invalid settings: OUTBOX_SHUTDOWN_GRACE (20 s) must be at least OUTBOX_SMTP_TIMEOUT "
        "(30 s): a send in flight at shutdown may wait that long for the relay's reply")
    monkeypatch.setenv("OUTBOX_SMTP_TIMEOUT", "15")
    assert load_settings().shutdown_grace == 20


def test_defaults_bound_the_status_queue_and_cover_a_send():
    s = load_settings()
    assert s.shutdown_grace > s.smtp_timeout
    assert s.status_queue_max_length == 100_000
