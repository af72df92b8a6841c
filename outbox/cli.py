"""The ``outbox`` command: argument parsing, logging, and the exit status.

Every subcommand has ``--help`` and exits non-zero on failure: 2 for bad input or settings
(with a message naming what is wrong, a login RabbitMQ or Redis refuses included; a malformed
account or job id is argparse's usage error), 1 for a failure while running (RabbitMQ or Redis
unreachable: one line naming the setting and the URL, password masked, and what to do; never
a traceback) and for an unknown account (:class:`outbox.runtime.NotFound`, the admin API's
404).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiormq.exceptions import AMQPConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import SettingsError
from outbox import commands
from outbox.logs import LEVELS
from outbox.runtime import EXIT_BAD_INPUT, CliError, NotFound
from sender.connect import ServiceRefused, ServiceUnreachable, amqp_error, redis_error
from sender.topology import TopologyMismatch

log = logging.getLogger("outbox.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``outbox`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_from_settings(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, CliError, TopologyMismatch, ServiceRefused) as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ServiceUnreachable, NotFound) as exc:
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
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS,
                        help="overrides OUTBOX_LOG_LEVEL (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    return parser


def configure_from_settings(level: str | None) -> None:
    """Logging as ``OUTBOX_LOG_LEVEL``/``OUTBOX_LOG_FORMAT`` say (``level``: ``--log-level``,
    which wins), every configured secret masked. Bad settings leave the defaults: the
    command itself then says what is wrong."""
    from outbox.logs import configure_logging, secret_values
    from outbox.runtime import settings

    try:
        cfg = settings()
    except SettingsError:
        configure_logging(level or "INFO")
        return
    configure_logging(level or cfg.log_level, cfg.log_format, secret_values(cfg))
