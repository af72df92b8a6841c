"""What reading a message may cost (webhooks/bounce_work.py) and the reader's own bounds
(webhooks/providers/dsn.py: bytes examined, non-reports dropped early)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from webhooks.bounce_work import SourceBudget, WorkLimits, read_message
from webhooks.providers import dsn

DATA = Path(__file__).resolve().parents[1] / "data" / "reports"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_over_its_byte_budget_waits_until_it_has_drained():
    clock = Clock()
    budget = SourceBudget(1000, 1.0, 60, clock=clock)
    budget.charge("10.0.0.1", nbytes=999)
    assert budget.allows("10.0.0.1")
    budget.charge("10.0.0.1", nbytes=1)
    assert not budget.allows("10.0.0.1") and budget.allows("10.0.0.2")  # others unaffected
    clock.now += 0.6  # 1/100 of the window: 10 bytes drained
    assert budget.allows("10.0.0.1")


def test_a_peer_over_its_cpu_budget_is_refused_whatever_its_bytes():
    clock = Clock()
    budget = SourceBudget(10**9, 2.0, 60, clock=clock)
    budget.charge("10.0.0.1", cpu=2.5)
    assert not budget.allows("10.0.0.1")
    clock.now += 15  # a quarter of the window drains 0.5 s
    assert not budget.allows("10.0.0.1")
    clock.now += 1
    assert budget.allows("10.0.0.1")


def test_the_least_recently_seen_peers_are_forgotten():
    budget = SourceBudget(10, 1.0, 60, max_peers=2, clock=Clock())
    for peer in ("a", "b", "c"):
        budget.charge(peer, nbytes=100)
    assert budget.allows("a") and not budget.allows("b") and not budget.allows("c")


def test_the_limits_come_from_the_settings():
    limits = WorkLimits.from_settings(Settings(bounces_scan_bytes=65536, bounces_readers=2,
                                               bounces_connection_timeout=45))
    assert (limits.scan_bytes, limits.readers, limits.connection_timeout) == (65536, 2, 45)
    assert limits.idle_timeout == 30 and limits.source_cpu == 2.0


def test_a_report_is_read_with_its_cost():
    outcome = read_message((DATA / "postfix-dsn.eml").read_bytes(), [], "mail.outbox.example",
                           dsn.SCAN_BYTES)
    assert outcome.events and outcome.events[0].recipient == "bob@example.net"
    assert outcome.problem == "" and 0 < outcome.cpu < 5


def test_a_message_the_reader_chokes_on_is_a_problem_not_an_exception(monkeypatch):
    def choke(*args, **kwargs):
        raise RecursionError("too deep")

    monkeypatch.setattr(dsn, "parse", choke)
    outcome = read_message(b"x", [], "d", 1024)
    assert outcome.events is None and outcome.problem == "unreadable (RecursionError: too deep)"


# --- the reader's bounds --------------------------------------------------------------------


def _plain(size: int, *, subject: str = "hello", tail: bytes = b"") -> bytes:
    head = f"From: a@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    return head + b"Lorem ipsum dolor sit amet\r\n" * (size // 28) + tail


def test_a_large_message_without_report_headers_or_parts_is_dropped_from_its_first_kilobytes():
    raw = _plain(1_000_000, tail=b"\r\nThis is the mail system at host mx.example.\r\n")
    report = dsn.read(raw)
    assert report.format == "none"
    assert f"read its first {dsn.QUICK_BYTES} of {len(raw)} bytes" in report.why
    assert not dsn.looks_like_report(raw)


@pytest.mark.parametrize("marker", [b"Content-Type: message/delivery-status",
                                    b"Content-Type: multipart/report; report-type=x",
                                    b"Subject: Undelivered Mail Returned to Sender",
                                    b"From: MAILER-DAEMON@mx.example",
                                    b"Auto-Submitted: auto-replied"])
def test_report_headers_or_parts_make_the_whole_budget_read(marker):
    raw = marker + b"\r\n" + _plain(100_000)
    assert dsn.looks_like_report(raw)


def test_a_real_report_larger_than_the_quick_read_is_read_whole():
    raw = (DATA / "postfix-dsn.eml").read_bytes()
    big = raw + b"\n" + b"y" * 76 * 1000  # an attachment's worth past its end
    assert len(big) > dsn.QUICK_BYTES and dsn.looks_like_report(big)
    [event] = dsn.parse(big)
    assert (event.recipient, event.type) == ("bob@example.net", "bounced")


def test_only_the_first_scan_bytes_are_examined():
    raw = (DATA / "postfix-dsn.eml").read_bytes()
    assert dsn.parse(raw, scan_bytes=len(raw))
    with pytest.raises(dsn.PayloadError):
        dsn.parse(raw, scan_bytes=200)  # its headers only: no report seen


def test_a_report_naming_thousands_of_recipients_yields_at_most_max_findings():
    lines = "".join(f"<user{i}@example.net>: host mx said: 550 5.1.1 unknown\n"
                    for i in range(500))
    raw = ("From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail Returned to Sender\n\n"
           f"This is the mail system at host mx.example.\n\n{lines}").encode()
    assert len(dsn.read(raw).findings) == dsn.MAX_FINDINGS


# --- linear reading: the must-show's budget, with a wide margin -----------------------------


@pytest.mark.parametrize("shape", ["spaces", "nl", "dashes", "addr", "indent", "angle"])
def test_two_megabytes_of_hostile_text_cost_well_under_two_seconds_of_cpu(shape):
    """Before the scan was linear these took minutes (lines of spaces: 68 s of CPU per MB at
    0.25 MB, and growing with the square); now at most about 0.2 s with a bounce's Subject."""
    import time

    from bounce_scan_cost import UNITS, message  # scripts/ (tests/conftest.py)

    raw = message(UNITS[shape], 2 * 1024 * 1024, "Undelivered Mail Returned to Sender")
    started = time.process_time()
    report = dsn.read(raw, ["x@bounces.example.com"], "outbox.localhost")
    dsn.events(report, seed="s")
    assert time.process_time() - started < 2.0
    assert len(report.findings) <= dsn.MAX_FINDINGS
