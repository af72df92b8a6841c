"""The job statuses are declared once (suppression/statuses.py), and every list of them agrees:
the status type of the events, the post-send script's ranking, the gate's sets, the provider
events' statuses. (The real script's ordering is run for every pair in
tests/integration/test_script_args.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from suppression import statuses

LUA = Path(__file__).resolve().parents[2] / "suppression/lua"


def _lua_table(source: str, name: str) -> dict[str, int]:
    body = re.search(rf"local {name} = \{{(.*?)\}}", source, re.S)
    assert body, f"no {name} table"
    return {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", body.group(1))}


def test_the_post_send_script_ranks_exactly_the_declared_statuses() -> None:
    from suppression.gate import POST_SEND

    assert _lua_table(POST_SEND.source, "RANK") == statuses.RANK
    assert set(statuses.RANK) == {*statuses.STATUSES, *statuses.WORKING}


def test_no_script_writes_a_ranking_of_its_own() -> None:
    for script in LUA.glob("*.lua"):
        assert "local RANK =" not in script.read_text(), script.name
    assert "-- GENERATED rank" in (LUA / "post_send.lua").read_text()


def test_the_event_status_type_is_the_declared_list() -> None:
    from sender.models import STATUSES, Status, StatusEvent

    assert get_args(Status) == STATUSES == statuses.STATUSES
    assert StatusEvent.model_fields["status"].annotation is not None


def test_the_gate_reads_the_declared_sets() -> None:
    from sender import pipeline
    from suppression import gate, handover

    assert gate.HANDED_OVER is statuses.HANDED_OVER is handover.HANDED_OVER
    assert gate.REFUSALS is statuses.REFUSALS is pipeline.REFUSALS
    assert statuses.HANDED_OVER - {statuses.CLAIMED} <= set(statuses.STATUSES)
    # a job handed over can only be reported on: every status reached after a hand-over
    # ranks above 'sent' (or is it), so a late 'sent' never overwrites a report
    for name in statuses.HANDED_OVER - {statuses.CLAIMED, "sent"}:
        assert statuses.RANK[name] > statuses.RANK["sent"], name
    # a refusal is final: nothing a send writes ('sent', 'deferred') overwrites it
    for name in statuses.REFUSALS:
        assert statuses.RANK[name] > statuses.RANK["sent"], name


def test_the_statuses_provider_events_write_are_declared() -> None:
    from sender import provider_event_applier as applier

    assert set(applier._STATUS.values()) <= set(statuses.STATUSES)


def test_the_table_in_the_docstring_is_the_declaration() -> None:
    lines = (statuses.__doc__ or "").splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("====")]
    starts = [m.start() for m in re.finditer(r"=+", lines[rules[0]])]
    rows = []
    for line in lines[rules[1] + 1:rules[2]]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append((cells[0], int(cells[1]), cells[2] == "yes", cells[3] == "yes"))
    assert rows == [(s.name, s.rank, s.handed_over, s.refusal) for s in statuses.JOB_STATUSES]


def test_the_reference_states_the_declared_order() -> None:
    from tests.docs import section

    text = " ".join(section("## Status events (Outbox → CRM)").split())
    order = text.split("is this order, lowest first: ", 1)[1].split(" (", 1)[0]
    stated = [re.findall(r"`(\w+)`", group) for group in order.split(";")]
    ranks = sorted({statuses.RANK[s] for s in statuses.STATUSES})
    assert stated == [[s for s in statuses.STATUSES if statuses.RANK[s] == r] for r in ranks]
