"""Log output of every ``outbox`` command: one JSON object a line (or readable text), secrets
masked, libraries quiet.

A JSON line holds ``ts`` (ISO 8601 UTC, milliseconds, ``Z``), ``level`` (lower case),
``logger``, ``msg``, the record's extra fields, and ``exc`` for a traceback; with several
worker processes (``--processes``) also ``pid``, the process that wrote it. ``text``
(``OUTBOX_LOG_FORMAT=text``) is the same on one readable line, for a terminal.

Level ``OUTBOX_LOG_LEVEL`` (``--log-level`` overrides it) applies to Outbox's own loggers
(``outbox.*``); every other logger (aio-pika, aiormq, twilio, aiosmtplib, aiohttp, asyncio,
redis...) stays at WARNING unless the level is DEBUG, so the Twilio library's request dump
(about 11 INFO lines a message) never shows. aiosmtpd's (``mail.log``, the development sink)
stays at WARNING even then: at DEBUG it logs every DATA line, i.e. the messages; so does
aiormq's ``aiormq.connection`` (every AMQP frame, i.e. every job body and its attachments).

Nothing secret is written, whoever logs it: every line passes :class:`Redactor`, which masks
the configured secret values (passwords in the URLs, the Twilio token and its Basic
credentials, secret keys, admin tokens, webhook keys), any URL's password, Basic and Bearer
credentials, unsubscribe tokens in ``/u/`` paths, and extra fields named like a secret or a
content field (``password``, ``token``, ``body``, ``text``, ``html``, ``subject``...).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, SecretStr

from config import Settings
from suppression.clock import iso_ms

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("json", "text")
MASK = "***"
#: our own loggers: everything else is a library's
OWN = "outbox"
#: loggers kept at WARNING whatever the level: they log message content at DEBUG (aiosmtpd
#: every DATA line; aiormq's connection every frame it sends or receives, i.e. job bodies with
#: their text, html and attachments)
ALWAYS_QUIET = ("mail.log", "aiormq.connection")
#: libraries named explicitly as well (in case one sets its own level)
LIBRARIES = ("aio_pika", "aiormq", "pamqp", "twilio", "aiosmtplib", "aiohttp", "asyncio",
             "redis", "urllib3", "mail.log")

#: extra fields never written as they are: secrets and message content
SECRET_FIELDS = frozenset({"password", "passwd", "token", "auth_token", "secret", "secret_key",
                           "authorization", "api_key", "signature", "body", "text", "html",
                           "subject", "content"})
#: (pattern, replacement, what a line must hold, lower-cased, for the pattern to match)
_PATTERNS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s\"']*:)[^@/?#\s\"']+@"), rf"\g<1>{MASK}@",
     ("://",)),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\g<1> {MASK}",
     ("basic", "bearer")),
    (re.compile(r"/u/[A-Za-z0-9._~-]{16,}"), f"/u/{MASK}", ("/u/",)),
)


class Redactor:
    """Masks secrets in a finished log line (after formatting, so whatever logged them)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for value in secrets:
            if len(value) >= 4:  # shorter ones would mask ordinary words
                forms |= {value, json.dumps(value)[1:-1], quote(value, safe="")}
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for value in self._secrets:
            line = line.replace(value, MASK)
        # each pattern only where its fixed part is (a regex pass cost ~7 µs a line, and a
        # worker writes a line per job)
        lower = line.lower()
        for pattern, replacement, needles in _PATTERNS:
            for needle in needles:
                if needle in lower:
                    line = pattern.sub(replacement, line)
                    break
        return line


def secret_values(cfg: Settings) -> list[str]:
    """Every secret the settings hold, as it could be written: each SecretStr (the keys of a
    comma-separated list each), a URL's password, and Twilio's Basic credentials."""
    values: list[str] = []
    for name in type(cfg).model_fields:
        field = getattr(cfg, name)
        items = field if isinstance(field, tuple) else (field,)
        for item in (s for i in items for s in _held(i)):
            if not isinstance(item, SecretStr):
                continue
            value = item.get_secret_value()
            values += [value, *(k.strip() for k in value.split(",") if "," in value)]
            if "://" in value:
                password = urlsplit(value).password
                values += [password] if password else []
    if cfg.twilio_account_sid and cfg.twilio_auth_token:
        pair = f"{cfg.twilio_account_sid}:{cfg.twilio_auth_token.get_secret_value()}"
        values.append(base64.b64encode(pair.encode()).decode())
    return [v for v in values if v]


def _held(item: Any) -> tuple[Any, ...]:
    """A setting's value, or the values of a model's fields (an admin token's SecretStr)."""
    if isinstance(item, BaseModel):
        return tuple(getattr(item, f) for f in type(item).model_fields)
    return (item,)


def _utc(record: logging.LogRecord) -> str:
    return iso_ms(record.created)


#: the attributes every LogRecord has, in the order LogRecord.__init__ sets them: a record's
#: extra fields come after them (makeRecord adds ``extra``, filters add theirs)
_STANDARD = list(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_RECORD_FIELDS = set(_STANDARD) | {"message", "taskName"}
_FIRST_EXTRA = len(_STANDARD)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    attrs = vars(record)
    names = list(attrs)
    # the standard attributes first, as LogRecord.__init__ set them: only the rest is looked
    # at (a line per job: ~20 names skipped in one comparison instead of one by one)
    tail = names[_FIRST_EXTRA:] if names[:_FIRST_EXTRA] == _STANDARD else names
    return {k: MASK if k.lower() in SECRET_FIELDS else attrs[k]
            for k in tail if k not in _RECORD_FIELDS}


#: what ``json.dumps(entry, default=str, ensure_ascii=False)`` writes: the standard library's
#: C encoder, made once (``dumps`` makes an encoder and ``iterencode`` a C encoder per call:
#: a line per job); without the circular-reference check, so a line whose extras refer to
#: themselves goes to :data:`_CHECKED` instead of failing
_CHECKED = json.JSONEncoder(ensure_ascii=False, default=str)
_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (_MAKE_ENCODER(None, str, json.encoder.encode_basestring, None,
                            _CHECKED.key_separator, _CHECKED.item_separator, False, False, True)
              if _MAKE_ENCODER is not None else None)


def _line(entry: dict[str, Any]) -> str:
    if _C_ENCODER is not None:
        try:
            return "".join(_C_ENCODER(entry, 0))
        except (RecursionError, ValueError):
            pass
    return _CHECKED.encode(entry)


class JsonFormatter(logging.Formatter):
    """One JSON object a line with stable field names, secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": _utc(record), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._redact(_line(entry))


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value ...`` for a terminal, secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        line = f"{_utc(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line += f" {fields}" if fields else ""
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self._redact(line)


#: (logger, text in the message) of library records that are no news: on a broker restart
#: aio-pika tries to reopen every robust channel on the dead connection and logs each failure
#: as an error; the robust connection reopens them itself once it is back (and logs the
#: outage and every reconnect attempt already). aiormq logs every refused connect as an
#: error; at start sender.connect says it in one line. A broker outage later is said by the
#: outage tracker (sender.outages: one WARNING, a reminder a minute, one INFO when it is
#: back), so aio-pika's WARNING every 5 s per attempt and aiormq's traceback of the lost
#: connection are dropped too (a malformed frame's traceback is kept: it is no outage).
_EXPECTED_NOISE = (("aio_pika.tools", "RobustChannel._on_close"),
                   ("aiormq.connection", "error when creating transport"),
                   ("aio_pika.robust_connection", "Connection attempt to"))
#: (logger, message) dropped when its traceback is a lost connection
_LOST_CONNECTION_NOISE = ("aiormq.connection", "Cancelling cause reader exited abnormally")


class NamePid(logging.Filter):
    """Adds the field ``pid`` (the process id) to every record: under a supervisor several
    worker processes write to one stderr (:func:`name_processes`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = record.process
        return True


def name_processes() -> None:
    """From now on every line of this process names it (``pid``)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, NamePid) for f in handler.filters):
            handler.addFilter(NamePid())


#: the loggers those come from: every other record passes at once (a line per job)
_NOISY = frozenset(name for name, _ in _EXPECTED_NOISE) | {_LOST_CONNECTION_NOISE[0]}


class DropExpectedNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _NOISY:
            return True
        if (record.name, record.msg) == _LOST_CONNECTION_NOISE:
            return not _lost_connection(record)
        return not any(record.name == name and text in record.getMessage()
                       for name, text in _EXPECTED_NOISE)


def _lost_connection(record: logging.LogRecord) -> bool:
    from aiormq.exceptions import AMQPConnectionError

    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, AMQPConnectionError | ConnectionError)


def configure_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = (),
                      stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as ``fmt``; ``level`` for Outbox's own
    loggers, WARNING for the libraries' unless ``level`` is DEBUG."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    handler.addFilter(DropExpectedNoise())
    numeric = logging.getLevelName(level.upper())
    libraries = numeric if numeric == logging.DEBUG else max(logging.WARNING, numeric)
    logging.basicConfig(level=libraries, handlers=[handler], force=True)
    # no line says where in the source it was logged from, or which thread: not looked up
    # for every record (the logging HOWTO's "Optimization")
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.getLogger(OWN).setLevel(numeric)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
    for name in ALWAYS_QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric))
