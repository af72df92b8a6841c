"""The supervisor of ``outbox worker --processes N`` with stand-in children (small Python
programs): restart with backoff, a refused start stops everything with 2, SIGTERM forwarded and
SIGKILL after the grace; and the parsing of ``OUTBOX_WORKER_PROCESSES`` / ``--processes``.
The real worker under it: tests/integration/test_processes.py."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config import SettingsError, load_settings, parse_processes
from config.settings import MAX_WORKER_PROCESSES, cpu_count
from outbox.supervisor import Backoff, Child, Supervisor, exit_status, watch_parent

QUICK = Backoff(first=0.05, most=0.2, reset_after=60)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --- the setting and the flag -----------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1", 1), ("4", 4), (" 2 ", 2), (3, 3), ("auto", cpu_count()), ("AUTO", cpu_count()),
    (str(MAX_WORKER_PROCESSES), MAX_WORKER_PROCESSES)])
def test_processes_are_a_whole_number_or_auto(value: object, expected: int) -> None:
    assert parse_processes(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", "2.0", "", "+2", "²",
                                   str(MAX_WORKER_PROCESSES + 1), True, 0, -3])
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="whole number from 1 to 256 or auto"):
        parse_processes(value)


def test_the_setting_defaults_to_one_and_names_itself_when_bad(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker_processes == 1
    monkeypatch.setenv("OUTBOX_WORKER_PROCESSES", "auto")
    assert load_settings().worker_processes == cpu_count() >= 1
    monkeypatch.setenv("OUTBOX_WORKER_PROCESSES", "many")
    with pytest.raises(SettingsError, match="^invalid settings: OUTBOX_WORKER_PROCESSES: must"):
        load_settings()


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["worker", "--processes", "0"], {}, "outbox: --processes: must be a whole number"),
    (["worker", "--processes", "many"], {}, "outbox: --processes: must be a whole number"),
    (["worker"], {"OUTBOX_WORKER_PROCESSES": "-1"},
     "outbox: invalid settings: OUTBOX_WORKER_PROCESSES: must be a whole number"),
    (["run"], {"OUTBOX_WORKER_PROCESSES": "many"},
     "outbox: invalid settings: OUTBOX_WORKER_PROCESSES: must be a whole number")])
def test_a_bad_value_is_one_line_and_exit_2(argv: list[str], env: dict[str, str],
                                            named: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    # an unroutable broker: were the value accepted, the command would wait for it
    done = subprocess.run([sys.executable, "-m", "outbox", *argv], capture_output=True,
                          env={**clean, "OUTBOX_AMQP_URL": "amqp://127.0.0.1:1/", **env},
                          timeout=30, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()], "one line"
    assert done.stderr.startswith(named)


# --- the supervisor ------------------------------------------------------------------------


def test_backoff_doubles_to_its_ceiling_and_resets_after_a_long_life() -> None:
    child = Child(0, Backoff(first=1, most=30, reset_after=60))
    child.started = 100.0
    assert [child.next_delay(101.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    child.started = 200.0
    assert child.next_delay(260.0) == 1, "a child that lived 60 s starts the count again"
    child.started = 261.0  # restarted, and died again at once
    assert child.next_delay(262.0) == 2


def test_exit_status_says_code_or_signal() -> None:
    assert exit_status(1) == "exit status 1"
    assert exit_status(-9) == "killed by SIGKILL"


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


#: a stand-in child: notes its pid in the directory argv[1], then does what ``body`` says
_CHILD = """
import os, signal, sys, time
from pathlib import Path
where = Path(sys.argv[1])
(where / f"started-{os.getpid()}").touch()
first = True
try:
    os.close(os.open(where / "first", os.O_CREAT | os.O_EXCL))
except FileExistsError:
    first = False
"""


def _started(where: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in where.glob("started-*"))


def _supervisor(count: int, body: str, where: Path, *, grace: float = 5.0,
                drain_margin: float = 0.0) -> Supervisor:
    return Supervisor(count, [sys.executable, "-c", _CHILD + body, str(where)], grace=grace,
                      drain_margin=drain_margin, backoff=QUICK)


async def test_a_child_that_dies_is_restarted_as_a_new_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "outbox.supervisor")
    supervisor = _supervisor(2, "time.sleep(60)", tmp_path)
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    await _until(lambda: len(_started(tmp_path)) == 2)
    victim, other = _started(tmp_path)
    os.kill(victim, signal.SIGKILL)
    await _until(lambda: len(_started(tmp_path)) == 3)
    (new,) = set(_started(tmp_path)) - {victim, other}
    assert sorted(supervisor.pids) == sorted([other, new])
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert f"worker process {victim} exited unexpectedly (killed by SIGKILL)" in warning.message
    stop.set()
    assert await asyncio.wait_for(run, 10) == 0
    assert not _alive(other) and not _alive(new), "every child stopped"


async def test_a_crash_loop_backs_off_instead_of_spinning(tmp_path: Path) -> None:
    supervisor = _supervisor(1, "sys.exit(1)", tmp_path)
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    assert await asyncio.wait_for(run, 10) == 0
    # 0.05 + 0.1 + 0.2 + 0.2 + ... s between starts, plus each start: a handful, not hundreds
    assert 3 <= len(_started(tmp_path)) <= 8


async def test_a_child_exiting_2_stops_the_others_and_the_supervisor_exits_2(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = "time.sleep(60) if first else (time.sleep(0.2), sys.exit(2))"
    supervisor = _supervisor(2, body, tmp_path)
    assert await asyncio.wait_for(supervisor.run(asyncio.Event()), 10) == 2
    assert len(_started(tmp_path)) == 2, "not restarted"
    assert not any(_alive(pid) for pid in _started(tmp_path)), "the other one stopped too"
    assert any("refused to start" in r.message for r in caplog.records)


async def test_sigterm_is_forwarded_and_a_child_still_running_after_the_grace_is_killed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = """
if first:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: ((where / "drained").touch(), sys.exit(0)))
time.sleep(60)
"""
    supervisor = _supervisor(2, body, tmp_path, grace=0.5)
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    await _until(lambda: len(_started(tmp_path)) == 2 and (tmp_path / "first").exists())
    await asyncio.sleep(0.2)  # both have set their handlers
    stop.set()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(run, 10) == 0
    assert asyncio.get_running_loop().time() - started < 2
    assert (tmp_path / "drained").exists(), "SIGTERM reached the child"
    assert not any(_alive(pid) for pid in _started(tmp_path))
    killed = [r.message for r in caplog.records if "killed" in r.message]
    assert len(killed) == 1 and "still running 0.5 s after SIGTERM" in killed[0]


async def test_a_child_stops_when_its_supervisor_is_gone() -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_parent(os.getppid(), stop, period=0.01))
    await asyncio.sleep(0.1)
    assert not stop.is_set(), "the parent is there"
    watcher.cancel()
    await asyncio.wait_for(watch_parent(os.getppid() + 100000, stop, period=0.01), 1)
    assert stop.is_set()


# --- metrics of several processes ------------------------------------------------------------

_METRICS_CHILD = """
import os, sys
from prometheus_client import CollectorRegistry
from sender.metrics import Metrics
jobs, inflight, depth = map(int, sys.argv[1:])
m = Metrics(CollectorRegistry())
m.jobs.labels("email", "sent").inc(jobs)
m.inflight.labels("email").inc(inflight)
m.queue_depth.labels("outbox.email").set(depth)
print(os.getpid())
"""


def _child_metrics(where: Path, *values: int) -> int:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _METRICS_CHILD, *map(str, values)],
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(where),
                               "PYTHONPATH": str(root)},
                          capture_output=True, text=True, check=True, cwd=root, timeout=30)
    return int(done.stdout)


def test_one_registry_sums_the_children_s_counters_and_in_flight_and_shows_the_latest_depth(
        tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from outbox.supervisor import collect_children, mark_dead

    first = _child_metrics(tmp_path, 30, 3, 500)
    _child_metrics(tmp_path, 12, 2, 480)  # read later: the depth to show
    registry = collect_children(CollectorRegistry(), str(tmp_path))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("outbox_jobs_total", channel="email", status="sent") == 42
    assert value("outbox_inflight", channel="email") == 5
    assert value("outbox_queue_depth", queue="outbox.email") == 480
    mark_dead(first, str(tmp_path))
    assert value("outbox_jobs_total", channel="email", status="sent") == 42, "counters stay"
    assert value("outbox_inflight", channel="email") == 2, "a dead process holds nothing"
