"""Log output: JSON lines with UTC millisecond times, libraries quiet unless DEBUG, secrets and
message content masked, OUTBOX_LOG_LEVEL with --log-level over it."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import SettingsError, load_settings
from outbox import cli
from outbox.logs import (
    MASK,
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure_logging,
    secret_values,
)

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in ("outbox", "twilio", "aiormq", "mail.log",
                                                     "aio_pika", "redis", "asyncio")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in named.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("outbox.pipeline", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_utc_millisecond_time_level_logger_msg_and_fields() -> None:
    record = _record("job %s %s", "j1", "sent", job_id="j1", ms=12)
    record.created = 1767322245.678  # 2026-01-02T03:30:45.678Z
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry == {"ts": "2026-01-02T02:50:45.678Z", "level": "info",
                     "logger": "outbox.pipeline", "msg": "job j1 sent", "job_id": "j1", "ms": 12}
    assert TS.match(entry["ts"]) and "\n" not in line


def test_a_traceback_stays_inside_the_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("outbox.x", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


def test_the_text_format_is_one_readable_line() -> None:
    line = TextFormatter().format(_record("job %s sent", "j1", job_id="j1"))
    assert re.match(r"^\S+Z INFO    outbox.pipeline: job j1 sent job_id=j1$", line), line


@pytest.mark.parametrize(("text", "hidden"), [
    ("relay smtp://user:hunter2-pw@mail:25 refused", "hunter2-pw"),
    ("amqp://guest:p%40ss@rabbit:5672/ down", "p%40ss"),
    ("redis://:only-a-pw@127.0.0.1:6379/0", "only-a-pw"),
    ("Authorization: Basic QUMxMjM6dG9rZW4=", "QUMxMjM6dG9rZW4="),
    ("Authorization: Bearer abcdef123456", "abcdef123456"),
    ("GET /u/eyJhIjoiYWNjdCJ9.c2lnbmF0dXJlLXNpZ24 200", "eyJhIjoiYWNjdCJ9.c2lnbmF0dXJlLXNpZ24"),
    ("the token is configured-token-1 and quoted configured-token-1", "configured-token-1"),
    ('a quote"d-secret, JSON-escaped in the line', 'quote\\"d-secret'),
])
def test_secrets_are_masked_wherever_they_appear(text: str, hidden: str) -> None:
    redact = Redactor(["configured-token-1", 'quote"d-secret'])
    line = JsonFormatter(redact).format(_record("%s", text))
    assert hidden not in line and MASK in line
    assert json.loads(line)["msg"]  # still valid JSON


def test_fields_named_like_secrets_or_content_are_masked() -> None:
    entry = json.loads(JsonFormatter().format(_record(
        "x", password="pw-1", token="tk-1", body="Hello secret body", subject="Subj",
        html="<p>x</p>", text="plain", job_id="j1")))
    assert {k: entry[k] for k in ("password", "token", "body", "subject", "html", "text")} == \
        dict.fromkeys(("password", "token", "body", "subject", "html", "text"), MASK)
    assert entry["job_id"] == "j1"


def test_secret_values_lists_every_secret_setting(clean_env: pytest.MonkeyPatch) -> None:
    cfg = load_settings(
        smtp_url="smtp://u:smtp-pw-1@relay:25", amqp_url="amqp://g:amqp-pw-1@r/",
        redis_url="redis://:redis-pw-1@h/0", twilio_account_sid="AC" + "1" * 32,
        twilio_auth_token="twilio-token-1", twilio_from="+15005550006",
        secret_key="first-key-0123456789,second-key-0123456789", admin_tokens="adm-1,adm-2",
        mailgun_signing_key="mg-key-1", postmark_webhook_password="pm-pw-1")
    values = set(secret_values(cfg))
    assert {"smtp-pw-1", "amqp-pw-1", "redis-pw-1", "twilio-token-1", "first-key-0123456789",
            "second-key-0123456789", "adm-1", "adm-2", "mg-key-1", "pm-pw-1"} <= values
    import base64

    assert base64.b64encode(f"AC{'1' * 32}:twilio-token-1".encode()).decode() in values


def _emit_all(stream: io.StringIO) -> list[dict[str, object]]:
    for name in ("twilio.http_client", "aiormq.connection", "aio_pika.robust", "aiosmtplib",
                 "aiohttp.access", "asyncio", "redis.client", "somelib"):
        logging.getLogger(name).info("library info")
        logging.getLogger(name).debug("library debug")
        logging.getLogger(name).warning("library warning")
    logging.getLogger("mail.log").debug("DATA readline: the message")
    logging.getLogger("outbox.pipeline").info("own info")
    logging.getLogger("outbox.pipeline").debug("own debug")
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_at_info_libraries_log_only_warnings() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    lines = _emit_all(stream)
    assert [x["msg"] for x in lines if not str(x["logger"]).startswith("outbox")] == \
        ["library warning"] * 8
    assert [x["msg"] for x in lines if str(x["logger"]).startswith("outbox")] == ["own info"]


def test_at_debug_libraries_log_everything_but_the_smtp_sink_s_content() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    lines = _emit_all(stream)
    # aiormq.connection logs every AMQP frame (job bodies, attachments): kept at WARNING
    assert sum(x["msg"] == "library debug" for x in lines) == 7
    assert "own debug" in [x["msg"] for x in lines]
    assert not any(x["logger"] == "mail.log" for x in lines)
    assert [x["msg"] for x in lines if x["logger"] == "aiormq.connection"] == \
        ["library warning"]


def test_outbox_log_level_and_format_are_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OUTBOX_LOG_LEVEL", "warning")
    clean_env.setenv("OUTBOX_LOG_FORMAT", "TEXT")
    cfg = load_settings()
    assert (cfg.log_level, cfg.log_format) == ("WARNING", "text")
    clean_env.setenv("OUTBOX_LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError, match="OUTBOX_LOG_LEVEL"):
        load_settings()


def test_the_cli_option_overrides_the_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OUTBOX_LOG_LEVEL", "WARNING")
    cli.configure_from_settings(None)
    assert logging.getLogger("outbox").level == logging.WARNING
    cli.configure_from_settings("DEBUG")
    assert logging.getLogger("outbox").level == logging.DEBUG
    assert cli.build_parser().parse_args(["--log-level", "error", "classify", "x"]).log_level \
        == "ERROR"


def test_the_cli_masks_the_configured_secrets(clean_env: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OUTBOX_TWILIO_ACCOUNT_SID", "AC" + "2" * 32)
    clean_env.setenv("OUTBOX_TWILIO_AUTH_TOKEN", "tw-token-in-a-log")
    clean_env.setenv("OUTBOX_TWILIO_FROM", "+15005550006")
    cli.configure_from_settings("INFO")
    logging.getLogger("outbox.x").warning("token tw-token-in-a-log leaked")
    err = capsys.readouterr().err
    assert "tw-token-in-a-log" not in err and f"token {MASK} leaked" in err


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "smtp://u:pw-1@relay:25", "SMTP://U:PW-2@RELAY", "Basic QUMxMjM6dG9rZW4=",
    "BEARER abcdef123456", "bearer\tzzzzzzzz", "/u/eyJhIjoiYWNjdCJ9.c2lnbmF0dXJl",
    "/U/eyJhIjoiYWNjdCJ9.c2lnbmF0dXJl", "job j1 sent", " ", ":", "//", "@", "basic",
    "é", "\"", "https://example.com/x"]), max_size=8), st.text(max_size=20))
def test_redaction_is_the_same_with_or_without_the_quick_checks(parts: list[str],
                                                               noise: str) -> None:
    """The patterns are only run where their fixed part is: the same line as running them
    all on every line."""
    from outbox.logs import _PATTERNS

    line = noise.join(parts)
    full = line
    for pattern, replacement, _ in _PATTERNS:
        full = pattern.sub(replacement, full)
    assert Redactor()(line) == full


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300)
@given(st.dictionaries(st.text(), _JSONISH | st.binary() | st.sets(st.integers()), max_size=6))
def test_a_line_is_what_json_dumps_writes(entry: dict[str, object]) -> None:
    """The encoder made once writes what ``json.dumps(default=str, ensure_ascii=False)`` did
    (NaN and the infinities as Python writes them, other types through ``str``)."""
    from outbox.logs import _line

    assert _line(entry) == json.dumps(entry, default=str, ensure_ascii=False)


def test_a_line_whose_extras_refer_to_themselves_fails_as_before() -> None:
    from outbox.logs import _line

    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        _line({"x": loop})


@settings(max_examples=200)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers(),
                       max_size=6))
def test_extra_fields_are_every_field_but_the_record_s_own(extra: dict[str, int]) -> None:
    """Only the fields after the standard ones are looked at: the same fields, in the same
    order, as a look at every attribute; secrets masked."""
    from outbox.logs import _RECORD_FIELDS, SECRET_FIELDS, _extra

    own = {k: v for k, v in extra.items() if k not in _RECORD_FIELDS}
    record = logging.getLogger("outbox.test").makeRecord(
        "outbox.test", logging.INFO, "f", 1, "m", (), None, extra=own)
    record.pid = 7
    every = {k: MASK if k.lower() in SECRET_FIELDS else v for k, v in vars(record).items()
             if k not in _RECORD_FIELDS}
    assert _extra(record) == every
    assert list(_extra(record)) == list(every)
    odd = logging.makeLogRecord({"name": "x", "msg": "m", **own})  # attributes set late
    assert _extra(odd) == {k: MASK if k.lower() in SECRET_FIELDS else v
                           for k, v in vars(odd).items() if k not in _RECORD_FIELDS}


@pytest.mark.parametrize(("name", "message", "dropped"), [
    ("aio_pika.tools", "RobustChannel._on_close failed", True),
    ("aiormq.connection", "error when creating transport: refused", True),
    ("aio_pika.robust_connection", "Connection attempt to amqp://x failed", True),
    ("aio_pika.robust_connection", "something else", False),
    ("outbox.pipeline", "Connection attempt to amqp://x failed", False),
    ("outbox.pipeline", "job j1 sent", False),
])
def test_expected_noise_is_dropped_and_nothing_else(name: str, message: str,
                                                    dropped: bool) -> None:
    from outbox.logs import DropExpectedNoise

    record = logging.getLogger(name).makeRecord(name, logging.ERROR, "f", 1, message, (), None)
    assert DropExpectedNoise().filter(record) is not dropped
