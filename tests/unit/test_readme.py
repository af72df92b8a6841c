"""The README stands alone and stays true: every setting is documented, it sends nobody to a
file outside the repository, the examples are valid jobs of the kinds it promises, and the CLI
output helpers do what "Command line" says (ISO 8601 times, tables with a header, one
pretty-printed job taken by ``enqueue``)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from config.reputation import PARAMS
from config.settings import ENV_PREFIX, Settings
from outbox.commands import job_lines
from outbox.runtime import iso_time, iso_times, table
from sender.channels import registry
from sender.models import InvalidJob
from tests.docs import docs_text

ROOT = Path(__file__).resolve().parents[2]
README = docs_text()  # README.md and docs/*.md: together they must state every contract
EXAMPLES = ROOT / "examples"
#: paths the README names that are not in the repository, on purpose
NOT_IN_GIT = {"deploy/.env",  # made by `cp deploy/.env.example`, git-ignored
              "sender/channels/push.py"}  # "Adding a channel": the module you would write


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme(name: str) -> None:
    assert f"{ENV_PREFIX}{name.upper()}" in README


def test_every_reputation_parameter_is_in_the_readme() -> None:
    for param in PARAMS:
        assert f"{ENV_PREFIX}{param.setting.upper()}" in README, param.name


def test_the_readme_names_no_file_outside_the_repository() -> None:
    assert "DESIGN" not in README
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in link:
                continue
            target = (page.parent / link).resolve()  # a link stays inside the repository
            assert target.is_relative_to(ROOT) and target.exists(), (page.name, link)
        assert "../" not in page.read_text().replace("](../README.md)", ""), page.name
    for path in re.findall(r"`((?:examples|deploy|config|sender|suppression|webhooks|outbox|"
                           r"tests|scripts|benchmarks)/[\w./-]+)`", README):
        if "<" in path or "*" in path or path in NOT_IN_GIT:
            continue
        assert (ROOT / path).exists(), path


def test_the_readme_starts_with_make_run_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split()[0:2] for line in first_block.strip().splitlines()]
    assert commands[:2] == [["make", "run"], ["make", "test"]]
    intro = readme.split("## ", 1)[0]  # points to every page of docs/
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in intro, page.name
    for page in sorted((ROOT / "docs").glob("*.md")):  # each page has its contents line
        assert "**Contents**" in page.read_text().split("\n## ", 1)[0], page.name


def test_the_readme_documents_every_status_and_queue() -> None:
    from sender import topology
    from sender.models import STATUSES

    for status in STATUSES:
        assert f"| `{status}` |" in README, status
    _, queues = topology.describe((10, 60))
    for queue in queues:
        name = re.sub(r"\.\d+$", ".<seconds>", queue.name)
        assert f"`{name}`" in README, name
    jobs = README.split("## Jobs (CRM → Outbox)", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in jobs.splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[0])}
    for model in registry.deliveries():
        fields = {f.alias or name for name, f in model.job.model_fields.items()}
        assert fields <= documented, fields - documented


def _examples() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(EXAMPLES.glob("*.json"))}


def test_the_examples_are_valid_jobs_of_each_kind() -> None:
    from sender.validation import validate

    jobs = {name: validate(body) for name, body in _examples().items()}
    kinds = {(j.channel, j.category, j.topic) for j in jobs.values()}
    assert kinds == {("email", "transactional", None), ("email", "marketing", None),
                     ("email", "notification", "meeting"), ("sms", "transactional", None)}
    lines = (EXAMPLES / "jobs.jsonl").read_bytes().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == \
        sorted(j.id for j in jobs.values())
    for line in lines:  # the same jobs, one a line
        job = json.loads(line)
        [name] = [n for n, b in _examples().items() if json.loads(b)["id"] == job["id"]]
        assert job == json.loads(_examples()[name])


def test_an_invalid_example_would_be_caught() -> None:
    from sender.validation import validate

    body = json.loads(_examples()["sms.json"])
    with pytest.raises(InvalidJob, match="v"):
        validate(json.dumps({**body, "v": True}).encode())


# --- the output conventions of "Command line" ---------------------------------------------


def test_times_print_as_iso_8601_utc() -> None:
    assert iso_time(1767225600) == "2026-01-01T00:00:00Z"
    assert iso_time("1767225600") == "2026-01-01T00:00:00Z"  # as Redis returns it
    assert iso_time(1767225600.5) == "2026-01-01T00:00:00.500Z"
    assert [iso_time(v) for v in (None, "", "2026-01-01T00:00:00Z", True)] == \
        [None, "", "2026-01-01T00:00:00Z", True]
    record = {"at": 1767225600, "count": 1767225600, "entries": [{"expires_at": "1767225601"}],
              "metadata": {"at": 5}, "recent_transitions": [{"at": "1767225600",
                                                             "probation_until": ""}]}
    assert iso_times(record) == {
        "at": "2026-01-01T00:00:00Z", "count": 1767225600,  # only time fields
        "entries": [{"expires_at": "2026-01-01T00:00:01Z"}],
        "metadata": {"at": 5},  # the CRM's own data is never rewritten
        "recent_transitions": [{"at": "2026-01-01T00:00:00Z", "probation_until": ""}]}


def test_lists_print_as_tables_with_a_header() -> None:
    text = table([{"account_id": "acct_1", "state": "active"},
                  {"account_id": "a", "state": None}], ("account_id", "state"))
    assert text.splitlines() == ["account_id  state", "acct_1      active", "a           -"]
    assert table([], ("a",)) == "(none)"


def test_enqueue_takes_json_lines_or_one_pretty_job() -> None:
    pretty = (EXAMPLES / "marketing-email.json").read_bytes()
    [(lineno, job)] = list(job_lines(io.BytesIO(pretty)))
    assert lineno == 1 and json.loads(job) == json.loads(pretty)
    lines = (EXAMPLES / "jobs.jsonl").read_bytes()
    assert [n for n, _ in job_lines(io.BytesIO(b"\n" + lines))] == [2, 3, 4, 5]
    # not one object: read line by line, so each bad line is reported with its number
    broken = b'{\n  "v": 1,\nnot json\n' + lines.splitlines()[0] + b"\n"
    assert [n for n, _ in job_lines(io.BytesIO(broken))] == [1, 2, 3, 4]
    assert list(job_lines(io.BytesIO(b"\n\n"))) == []


def test_the_runbook_has_an_entry_for_every_alert() -> None:
    """docs/operations.md, "Runbook": each alert of the rules file is named in a heading of
    its own (two related alerts may share one), dead letters first."""
    rules = (ROOT / "deploy/prometheus/outbox-rules.yml").read_text()
    alerts = re.findall(r"^\s*- alert: (\w+)$", rules, re.M)
    runbook = (ROOT / "docs/operations.md").read_text().split("## Runbook", 1)[1]
    runbook = runbook.split("\n## ", 1)[0]
    headings = [h for h in runbook.splitlines() if h.startswith("### ")]
    named = [name for h in headings for name in re.findall(r"`(Outbox\w+)`", h)]
    assert sorted(named) == sorted(alerts)
    assert named[0] == "OutboxDeadLetters"
