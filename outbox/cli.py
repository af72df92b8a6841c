"""The ``outbox`` command: argument parsing, logging, and the exit status.

Every subcommand has ``--help`` and exits non-zero on failure: 2 for bad input or settings
(with a message naming what is wrong, a login RabbitMQ or Redis refuses included), 1 for a
failure while running (RabbitMQ or Redis unreachable: one line naming the setting and the URL,
password masked, and what to do; never a traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from aiormq.exceptions import AMQPConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import SettingsError
from outbox import commands
from outbox.runtime import EXIT_BAD_INPUT, CliError
from sender.connect import ServiceRefused, ServiceUnreachable, amqp_error, redis_error
from sender.topology import TopologyMismatch

log = logging.getLogger("outbox.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``outbox`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, CliError, TopologyMismatch, ServiceRefused) as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServiceUnreachable as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OUTAGES as exc:  # a connection lost mid-command, or made where none is mapped
        print(f"outbox: {outage_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


EXIT_FAILED = 1
#: Connection errors of RabbitMQ and Redis not already made one line by sender.connect.
OUTAGES: tuple[type[BaseException], ...] = (AMQPConnectionError, RedisConnectionError,
                                            RedisTimeoutError)


def outage_line(exc: BaseException) -> str:
    """The one line for a lost connection: which service, its setting and masked URL."""
    from outbox.runtime import settings

    amqp = isinstance(exc, AMQPConnectionError)
    try:
        cfg = settings()
        url = (cfg.amqp_url if amqp else cfg.redis_url).get_secret_value()
    except SettingsError:
        url = "(the configured URL)"
    return str(amqp_error(url, exc) if amqp else redis_error(url, exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outbox", description="Outbound email and SMS "
                                     "delivery worker: consent, suppression, reputation.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    return parser


class _JsonFormatter(logging.Formatter):
    """Structured log lines with stable field names."""

    _SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


#: (logger, text in the message) of library records that are no news: on a broker restart
#: aio-pika tries to reopen every robust channel on the dead connection and logs each failure
#: as an error; the robust connection reopens them itself once it is back (and logs the
#: outage and every reconnect attempt already). aiormq logs every refused connect as an
#: error; at start sender.connect says it in one line, later the robust connection warns.
_EXPECTED_NOISE = (("aio_pika.tools", "RobustChannel._on_close"),
                   ("aiormq.connection", "error when creating transport"))


class _DropExpectedNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and text in record.getMessage()
                       for name, text in _EXPECTED_NOISE)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    handler.addFilter(_DropExpectedNoise())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("aiormq", "aio_pika", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
