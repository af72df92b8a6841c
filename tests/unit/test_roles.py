"""OUTBOX_ADMIN_TOKENS: NAME:ROLE:TOKEN entries and bare tokens (admin, named by position); a
bad entry stops the program at start with a message naming the setting, never the token."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config import SettingsError, load_settings
from config.roles import ROLES, allows
from outbox.logs import Redactor, secret_values


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)


def entries(value: str) -> list[tuple[str, str, str]]:
    return [(t.name, t.role, t.token.get_secret_value())
            for t in load_settings(admin_tokens=value).admin_tokens]


def test_named_entries_carry_a_name_and_a_role() -> None:
    assert entries("vera:viewer:tok-v, sam:support:tok-s,ops@acme.example:admin:a:b:c") == [
        ("vera", "viewer", "tok-v"), ("sam", "support", "tok-s"),
        ("ops@acme.example", "admin", "a:b:c")]  # the token may hold ':'


def test_a_bare_token_stays_admin_and_is_named_by_its_position() -> None:
    assert entries("old-token,vera:viewer:tok-v,,other-old ,") == [
        ("token-0", "admin", "old-token"), ("vera", "viewer", "tok-v"),
        ("token-2", "admin", "other-old")]  # blank entries are skipped, as before


def test_the_environment_and_a_toml_list_are_read(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setenv("OUTBOX_ADMIN_TOKENS", "sam:support:tok-s")
    assert [t.name for t in load_settings().admin_tokens] == ["sam"]
    monkeypatch.delenv("OUTBOX_ADMIN_TOKENS")
    toml = os.path.join(tmp_path, "outbox.toml")
    with open(toml, "w") as fh:
        fh.write('admin_tokens = ["vera:viewer:tok-v", "legacy"]\n')
    monkeypatch.setenv("OUTBOX_CONFIG", toml)
    assert [(t.name, t.role) for t in load_settings().admin_tokens] == [
        ("vera", "viewer"), ("token-1", "admin")]


@pytest.mark.parametrize("value, message", [
    ("vera:root:tok-secret-1", "entry 1 ('vera'): the role must be one of viewer, support, admin"),
    ("vera:Viewer:tok-secret-1", "the role must be one of"),
    (":viewer:tok-secret-1", "entry 1: the name must be"),
    ("  :admin:tok-secret-1", "entry 1: the name must be"),
    ("vera:viewer:", "entry 1 ('vera'): the token is empty"),
    ("vera:viewer:   ", "the token is empty"),
    ("vera:tok-secret-1", "entry 1 ('vera') must be NAME:ROLE:TOKEN"),
    ("ok:viewer:t1,vera x:viewer:tok-secret-1", "entry 2: the name must be"),
    ("a<b>:viewer:tok-secret-1", "the name must be"),
    ("ali\nce:viewer:tok-secret-1", "the name must be"),
    ("-x:viewer:tok-secret-1", "the name must be"),
    ("x" * 65 + ":viewer:tok-secret-1", "the name must be"),
    ("vera:viewer:t1,vera:admin:tok-secret-1", "the name(s) vera are given to more than one"),
    ("tok-secret-1,token-0:viewer:t2", "the name(s) token-0 are given to more than one"),
    ("vera:viewer:tok-secret-1,sam:admin:tok-secret-1", "vera, sam have the same token"),
])
def test_a_bad_entry_is_refused_naming_the_setting_not_the_token(value: str,
                                                                 message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(admin_tokens=value)
    assert str(caught.value).startswith("invalid settings: OUTBOX_ADMIN_TOKENS: ")
    assert message in str(caught.value)
    assert "tok-secret-1" not in str(caught.value)


def test_a_bad_entry_stops_the_server_at_start() -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")},
           "OUTBOX_ADMIN_TOKENS": "vera:superuser:tok-secret-1"}
    done = subprocess.run([sys.executable, "-m", "outbox", "webhooks"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "OUTBOX_ADMIN_TOKENS: entry 1 ('vera'): the role must be one of" in done.stderr
    assert "tok-secret-1" not in done.stderr + done.stdout


def test_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "support", "admin")
    assert [allows(role, "support") for role in ROLES] == [False, True, True]
    assert all(allows(role, "viewer") for role in ROLES)
    assert [allows(role, "admin") for role in ROLES] == [False, False, True]


def test_tokens_are_masked_in_logs_not_their_names() -> None:
    cfg = load_settings(admin_tokens="vera:viewer:tok-v-0123,legacy-token-0123")
    redact = Redactor(secret_values(cfg))
    assert redact("Bearer? tok-v-0123 legacy-token-0123 by vera") == "Bearer? *** *** by vera"


def test_the_readme_lists_each_roles_actions_as_the_route_table_declares() -> None:
    """README "Admin API": the row of each role names exactly the actions that need it, and
    the calls table gives each route's role (generated from one declaration, or checked)."""
    import re

    from tests.docs import docs_text
    from webhooks.admin import PUBLIC, ROUTES

    readme = docs_text()
    for role in ROLES:
        [line] = [x for x in readme.splitlines() if x.startswith(f"| `{role}` | ")]
        listed = set(re.findall(r"`([a-z]+(?:\.[a-z]+)?)`", line.split("|")[2]))
        assert listed == {r.action for r in ROUTES if r.role == role}, role
    names = {"account": "(ID|ACCOUNT)", "recipient": "RECIPIENT", "job": "ID",
             "address": "ADDRESS", "domain": "DOMAIN"}
    for route in (r for r in ROUTES if r.role != PUBLIC):
        shown = re.sub(r"\{(\w+)\}", lambda m: names[m[1]], route.path)
        shown = re.sub(r"\{action:(\w+)\}", r"\1", shown)
        row = rf"^\| [^|]*`{route.method} {shown}[?`][^|]*\| {route.role} \|"
        assert re.search(row, readme, re.M), (route.action, row)
