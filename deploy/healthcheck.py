#!/usr/bin/env python3
"""Health check of an Outbox container (the image's HEALTHCHECK and docker-compose's).

``outbox-healthcheck [TARGET ...]``: every target must answer within 3 seconds, or the check
prints one line naming the target that did not and why, and exits 1. A target is
``http://host:port/path`` (answered with a 2xx status) or ``tcp://host:port`` (a connection
accepted: the bounce listener's SMTP port). Without targets it checks what the container's
main process (``outbox COMMAND``, PID 1) serves: ``/healthz`` on ``OUTBOX_HTTP_PORT`` for
``webhooks`` and ``run``; ``/metrics`` on ``OUTBOX_METRICS_PORT`` for ``worker``, and for
``bounces`` that and its SMTP port (``OUTBOX_BOUNCES_PORT``).

Standard library only, and no Outbox import: it starts in milliseconds every 30 seconds, and
never reads a setting it could print. Proxies in the environment are ignored (the process
checked is on this host).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

TIMEOUT = 3.0
_ANY = ("", "0.0.0.0", "::")  # listen-on-every-address values: check through loopback
COMMANDS = ("worker", "webhooks", "run", "bounces", "dev-sinks")  # the long-running ones


def default_targets(env: Mapping[str, str], command: str | None) -> list[str]:
    """What ``outbox COMMAND`` configured by ``env`` serves, seen from inside its container."""
    host = env.get("OUTBOX_HTTP_HOST", "127.0.0.1").strip()
    host = "127.0.0.1" if host in _ANY else (f"[{host}]" if ":" in host else host)
    http = f"http://{host}:{env.get('OUTBOX_HTTP_PORT', '').strip() or '8080'}/healthz"
    metrics_port = env.get("OUTBOX_METRICS_PORT", "").strip()
    metrics = ([f"http://{host}:{metrics_port}/metrics"]
               if metrics_port and metrics_port != "0" else [])
    if command == "bounces":
        return [*metrics, f"tcp://{host}:{env.get('OUTBOX_BOUNCES_PORT', '').strip() or '2626'}"]
    if command == "worker":
        return metrics
    return [http] if command in ("webhooks", "run") or not metrics else metrics


def main_command(cmdline: bytes) -> str | None:
    """The Outbox subcommand in a process's ``/proc/PID/cmdline`` (NUL-separated argv)."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    for i, arg in enumerate(args):
        if arg.rsplit("/", 1)[-1] == "outbox":
            return next((a for a in args[i + 1:] if a in COMMANDS), None)
    return None


def check(target: str, timeout: float = TIMEOUT) -> str | None:
    """None when ``target`` answers, else why it did not (one line)."""
    parts = urlsplit(target)
    try:
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
                return None
        if parts.scheme == "http" and parts.hostname:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(target, timeout=timeout) as response:
                status = int(response.status)
            return None if 200 <= status < 300 else f"HTTP {status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return "not a target: use http://host:port/path or tcp://host:port"


def main(argv: Sequence[str], env: Mapping[str, str], command: str | None) -> int:
    """Check every target (or the default ones); 0 when all answer."""
    targets = list(argv) or default_targets(env, command)
    if not targets:
        print(f"unhealthy: `outbox {command}` serves nothing to check: set OUTBOX_METRICS_PORT",
              file=sys.stderr)
        return 1
    for target in targets:
        problem = check(target)
        if problem is not None:
            print(f"unhealthy: {target}: {problem}", file=sys.stderr)
            return 1
    return 0


def _pid1_command() -> str | None:
    try:
        with open("/proc/1/cmdline", "rb") as fh:
            return main_command(fh.read())
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ, _pid1_command()))
