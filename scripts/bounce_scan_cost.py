"""CPU cost of reading a message that is not a bounce, per MB, by shape of hostile text
(issue 25: a 1 MB message cost about 3.6 s of CPU in the DSN reader).

    python scripts/bounce_scan_cost.py [MB]          # whole reads: dsn.parse, CPU s/MB
    python scripts/bounce_scan_cost.py --patterns [N]  # each pattern alone, N and 2N chars

``--patterns`` prints every pattern whose time grows more than 3x when its input doubles
(super-linear) or takes over 50 ms; nothing printed = every pattern linear on these shapes.
"""

from __future__ import annotations

import re
import sys
import time

from webhooks.providers import dsn

#: Hostile text: repeated units (white space, dashes, address fragments, markup), each also
#: with an unfinished tail (an address cut short, no final newline).
UNITS = {"lines": "The quick brown fox jumps over the lazy dog 0123456789 abc@def.com\n",
         "a": "a", "spaces": " " * 1000 + "\n", "dashes": "-", "nl": "\n", "sp_nl": " \n",
         "nl_sp": "\n ", "tab": "\t", "lt": "<", "lt_a": "<a", "digits": "5", "d5": "5.5.",
         "a_dot": "a.", "a_quote": "a'", "addr": "  a@b.c\n", "angle": "<a@b>:\n",
         "rcpt": "RCPT To:<a@b>\n", "indent": "    x\n", "script": "<script", "nlnl": "\n\n",
         "dash_line": "-" * 1000 + "\n", "received": "Received: from x\n"}
TAILS = ("", "  a@b", "a@", "<a@b.c", "  a")
SUBJECTS = ("hello", "Undelivered Mail Returned to Sender")


def patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Every compiled pattern of the reader, named."""
    found: list[tuple[str, re.Pattern[str]]] = []
    for name in dir(dsn):
        value = getattr(dsn, name)
        items = value if isinstance(value, tuple) else (value,)
        found += [(f"{name}[{i}]", p) for i, p in enumerate(items) if isinstance(p, re.Pattern)]
    for family, detect, recipients, begin, delayed in dsn._FAMILIES:
        for kind, group in (("detect", detect), ("rcpt", recipients), ("delayed", delayed),
                            ("begin", (begin,) if begin else ())):
            found += [(f"{family.name}.{kind}[{i}]", p) for i, p in enumerate(group)]
    return found


def _time(pattern: re.Pattern[str], text: str) -> float:
    """The best of three runs (the machine is shared: noise only ever adds)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in pattern.finditer(text):
            pass
        best = min(best, time.perf_counter() - started)
    return best


def check_patterns(size: int) -> int:
    """Print the patterns that grow super-linearly; how many."""
    bad = 0
    for unit_name, unit in UNITS.items():
        for tail in TAILS:
            small = unit * (size // len(unit)) + tail
            large = unit * (2 * size // len(unit)) + tail
            for name, pattern in patterns():
                first = _time(pattern, small)
                if first < 0.002:
                    continue
                second = _time(pattern, large)
                if second / first > 3 or second > 0.05:
                    bad += 1
                    print(f"{name:28} {unit_name:9} {tail!r:9} {first * 1000:7.1f} ms -> "
                          f"{second * 1000:7.1f} ms", flush=True)
    return bad


def message(unit: str, size: int, subject: str) -> bytes:
    """A message of about ``size`` bytes whose body repeats ``unit``."""
    head = (f"From: someone@example.org\r\nTo: x@bounces.example.com\r\nSubject: {subject}\r\n"
            "Message-ID: <a@b.example>\r\n\r\n")
    body = (unit * (size // len(unit))).replace("\n", "\r\n")
    return (head + body).encode()


def whole_reads(megabytes: float) -> None:
    """CPU seconds per MB of :func:`dsn.parse` for each shape and subject."""
    size = int(megabytes * 1024 * 1024)
    worst = 0.0
    for subject in SUBJECTS:
        for unit_name, unit in UNITS.items():
            raw = message(unit, size, subject)
            started = time.process_time()
            try:
                dsn.parse(raw, ["x@bounces.example.com"], "outbox.localhost")
            except Exception:  # not a report: the usual outcome here
                pass
            spent = time.process_time() - started
            per_mb = spent / (len(raw) / 1048576)
            worst = max(worst, per_mb)
            print(f"{subject[:12]:12} {unit_name:10} {len(raw) / 1048576:5.2f} MB "
                  f"{spent * 1000:8.1f} ms CPU  {per_mb:7.3f} s/MB", flush=True)
    print(f"worst: {worst:.3f} s of CPU per MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--patterns"]:
        sys.exit(1 if check_patterns(int(sys.argv[2]) if sys.argv[2:] else 20_000) else 0)
    whole_reads(float(sys.argv[1]) if sys.argv[1:] else 1.0)
