"""The reputation parameters are declared once (config/reputation.py), and every place that
names them — settings, Policy, the CLI, the admin API, the Lua scripts — agrees with it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, cast, get_type_hints

import pytest

from config import SettingsError, load_settings
from config.reputation import OVERRIDES, PARAMS, Param, Policy, ReputationSettings, check_override

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "suppression/lua"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)


def _script_params(script: str) -> list[Param]:
    return [p for p in PARAMS if p.script == script]


# --- the declaration itself ----------------------------------------------------------------


def test_each_policy_field_is_typed_as_its_default():
    hints = get_type_hints(Policy)
    assert [p.name for p in PARAMS] == list(hints)
    for p in PARAMS:
        assert hints[p.name] is p.kind, p.name
        assert p.kind in (int, float, str) and p.help
        assert (p.kind is str) == bool(p.choices), p.name  # text only as a choice


def test_the_defaults_are_inside_their_own_bounds():
    for p in PARAMS:
        if p.per_account:
            assert check_override(p.name, p.default) == p.default


# --- settings -----------------------------------------------------------------------------

#: what a user sets today: these names and defaults must not change under them
USER_SETTINGS = {
    "OUTBOX_ACCOUNT_RATE": 500.0, "OUTBOX_ACCOUNT_BURST": 5000, "OUTBOX_THROTTLE_FACTOR": 0.1,
    "OUTBOX_CONSENT_MODE": "opt_in", "OUTBOX_REPUTATION_WINDOW": 86400,
    "OUTBOX_REPUTATION_BUCKET": 3600, "OUTBOX_MIN_BOUNCE_VOLUME": 200,
    "OUTBOX_MIN_COMPLAINT_VOLUME": 1000, "OUTBOX_EARLY_BOUNCE_VOLUME": 50,
    "OUTBOX_EARLY_COMPLAINT_VOLUME": 250, "OUTBOX_THROTTLE_BOUNCE_RATE": 0.05,
    "OUTBOX_BLOCK_BOUNCE_RATE": 0.10, "OUTBOX_THROTTLE_COMPLAINT_RATE": 0.001,
    "OUTBOX_BLOCK_COMPLAINT_RATE": 0.003, "OUTBOX_WILSON_Z": 1.96,
    "OUTBOX_PROBATION_SECONDS": 86400,
    # issue 21: the warning lines, frequency caps and the daily quota
    "OUTBOX_WARNING_BOUNCE_RATE": 0.02, "OUTBOX_WARNING_COMPLAINT_RATE": 0.0008,
    "OUTBOX_FREQUENCY_CAP_MARKETING_EMAIL": 0, "OUTBOX_FREQUENCY_CAP_MARKETING_SMS": 0,
    "OUTBOX_FREQUENCY_CAP_NOTIFICATION_EMAIL": 0, "OUTBOX_FREQUENCY_CAP_NOTIFICATION_SMS": 0,
    "OUTBOX_FREQUENCY_CAP_PERIOD": 604800, "OUTBOX_DAILY_QUOTA": 0,
    "OUTBOX_QUOTA_UTC_OFFSET": 28800,
    "OUTBOX_FREQUENCY_CAP_MODE": "end", "OUTBOX_QUOTA_MODE": "end",
    "OUTBOX_QUIET_MARKETING_EMAIL": "off", "OUTBOX_QUIET_MARKETING_SMS": "off",
    "OUTBOX_QUIET_NOTIFICATION_EMAIL": "off", "OUTBOX_QUIET_NOTIFICATION_SMS": "off",
    "OUTBOX_QUIET_START": 1320, "OUTBOX_QUIET_END": 480,
}


def test_settings_hold_exactly_the_declared_parameters_with_the_same_names_and_defaults():
    s = load_settings()
    declared = {f"OUTBOX_{p.setting.upper()}": p.default for p in PARAMS}
    assert declared == USER_SETTINGS
    assert {f"OUTBOX_{n.upper()}": getattr(s, n) for n in ReputationSettings.__annotations__} \
        == USER_SETTINGS
    assert Policy.from_settings(s) == Policy()


def test_settings_keep_the_declared_bounds():
    fields = type(load_settings()).model_fields
    for p in PARAMS:
        info = fields[p.setting]
        bounds = {k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "le")
                  if getattr(m, k, None) is not None}
        assert bounds == {k: v for k, v in (("gt", p.gt), ("ge", p.ge), ("le", p.le))
                          if v is not None}, p.name


def test_a_setting_from_the_environment_reaches_the_policy(monkeypatch):
    monkeypatch.setenv("OUTBOX_WILSON_Z", "2.5")
    monkeypatch.setenv("OUTBOX_ACCOUNT_BURST", "7")
    monkeypatch.setenv("OUTBOX_CONSENT_MODE", "opt_out")
    policy = Policy.from_settings(load_settings())
    assert (policy.z, policy.burst, policy.consent_mode) == (2.5, 7, "opt_out")


@pytest.mark.parametrize("name, value", [
    ("OUTBOX_BLOCK_BOUNCE_RATE", "5"), ("OUTBOX_REPUTATION_WINDOW", "59"),
    ("OUTBOX_CONSENT_MODE", "maybe"), ("OUTBOX_ACCOUNT_RATE", "0"),
    ("OUTBOX_PROBATION_SECONDS", "-1"),
])
def test_a_setting_out_of_bounds_is_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


# --- per-account overrides: the store, the admin API, the CLI -------------------------------


def test_overrides_are_applied_with_the_declared_types():
    cfg = {"rate": "20", "burst": "30", "block_bounce": "0.2", "consent_mode": "opt_out",
           "z": "9", "probation_seconds": "1", "reputation_window": ""}
    policy = Policy().with_overrides(cfg)
    assert (policy.rate, policy.burst, policy.block_bounce, policy.consent_mode) == \
        (20.0, 30, 0.2, "opt_out")
    assert (policy.z, policy.probation_seconds, policy.reputation_window) == \
        (1.96, 86400, 86400)  # not overridable, or empty: the default stands


@pytest.mark.parametrize("name, value, error", [
    ("rate", "fast", "rate must be a number"), ("rate", True, "rate must be a number"),
    ("rate", [1], "rate must be a number"), ("rate", -1, "rate must be positive"),
    ("rate", math.nan, "finite"), ("rate", "inf", "finite"),
    ("burst", 1.5, "burst must be a whole number"), ("burst", 0, "burst must be at least 1"),
    ("reputation_window", 59, "at least 60"), ("block_bounce", 5, "fraction"),
    ("consent_mode", "maybe", "consent_mode must be opt_in or opt_out"),
    ("consent_mode", 1, "consent_mode must be opt_in or opt_out"),
])
def test_a_bad_override_is_refused_naming_it(name, value, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        check_override(name, value)


def test_an_override_numeral_becomes_its_number():
    assert check_override("burst", "500") == 500 and isinstance(check_override("burst", 5.0), int)
    assert check_override("rate", 50) == 50.0 and isinstance(check_override("rate", 50), float)


async def test_the_store_refuses_what_is_not_declared_overridable_and_writes_nothing():
    from suppression.store import AccountStore, BadEntry

    store = AccountStore(cast(Any, None), Policy())  # refused before any I/O
    for name in ("z", "throttle_factor", "probation_seconds", "wilson_z", "account_rate"):
        with pytest.raises(BadEntry, match=f"unknown account setting.*{name}"):
            await store.configure("acct", **{name: 1})
    with pytest.raises(BadEntry, match="at least 60"):
        await store.configure("acct", reputation_window=1)


def test_the_admin_api_takes_exactly_the_declared_overrides():
    from webhooks.admin import ApiError, _setting

    for p in OVERRIDES.values():
        assert _setting(p.name, p.default) == p.default
        with pytest.raises(ApiError) as refused:
            _setting(p.name, {"a": 1})
        assert refused.value.status == 400 and p.name in refused.value.message
    for name in ("z", "throttle_factor", "probation_seconds"):  # the store refuses these
        assert {"a": 1} == _setting(name, {"a": 1})


def test_the_cli_has_a_flag_for_exactly_each_declared_override():
    from outbox.cli import build_parser
    from outbox.support import IDENTITY_FLAGS, LIMIT_FLAGS, SENDER_FLAGS

    parser = build_parser()
    accounts = _subparser(parser, "accounts")
    configure = _subparser(accounts, "configure")
    options = {a.option_strings[0]: a for a in configure._actions if a.option_strings}
    other = {"-h", "--actor", "--json",
             *("--" + f.replace("_", "-") for f in (*SENDER_FLAGS, *IDENTITY_FLAGS,
                                                    *LIMIT_FLAGS))}
    assert set(options) - other == {p.flag for p in OVERRIDES.values()}
    for p in OVERRIDES.values():
        assert options[p.flag].type is p.kind and options[p.flag].dest == p.name
        assert tuple(options[p.flag].choices or ()) == p.choices


def _subparser(parser, name):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"no subcommand {name}")


# --- the scripts' arguments -----------------------------------------------------------------


def _arguments(script: str):
    from suppression.gate import post_send_args, pre_send_args

    return {"pre_send": pre_send_args, "post_send": post_send_args}[script](Policy)


@pytest.mark.parametrize("script", ["pre_send", "post_send", "support", "reopen", "recipient"])
def test_the_scripts_name_no_argument_by_position(script):
    """Every argument is read through the generated prelude (A.<name>, P.<name>)."""
    source = (LUA / f"{script}.lua").read_text()
    assert source.count("ARGV") == len(re.findall(r"^-- ARGV +by name", source, re.M)) == 1
    assert "-- GENERATED arguments" in source


@pytest.mark.parametrize("script", ["pre_send", "post_send"])
def test_the_script_header_names_every_declared_argument(script):
    header = " ".join(ln[2:] for ln in (LUA / f"{script}.lua").read_text().splitlines()
                      if ln.startswith("--"))
    words = set(re.findall(r"\w+", header))
    arguments = _arguments(script)
    missing = [n for n, _ in arguments.names if n not in words]
    assert not missing, f"{script}.lua's header does not describe {missing}"
    assert arguments.rest in words


@pytest.mark.parametrize("script", ["pre_send", "post_send"])
def test_the_script_reads_no_override_itself(script):
    """The account's overrides of the parameters are read by the generated policy() only."""
    source = (LUA / f"{script}.lua").read_text()
    for call in re.findall(r"(?:HMGET', |policy\()KEYS\[3\],(.*?)\)", source, re.S):
        assert not set(re.findall(r"'(\w+)'", call)) & {p.name for p in PARAMS}
    assert "policy(KEYS[3]" in source
    used = set(re.findall(r"\bP\.(\w+)", source))
    assert used <= {p.name for p in _script_params(script)}


def test_post_send_gets_the_policy_under_the_declared_names():
    from suppression import channels, keys
    from suppression.gate import Gate

    policy = Policy(reputation_bucket=11, reputation_window=222, min_bounce_volume=3,
                    min_complaint_volume=4, early_bounce_volume=5, early_complaint_volume=6,
                    throttle_bounce=0.07, block_bounce=0.08, throttle_complaint=0.009,
                    block_complaint=0.01, z=2.5)
    gate = Gate(cast(Any, None), idempotency_ttl=60, policy=policy)  # no I/O here
    _, args = gate.post_send_call("a", "j", status="sent", attempt=1)
    names = _arguments("post_send").describe()
    given = dict(zip(names[:-1], args, strict=False))
    assert {p.name: given[p.name] for p in _script_params("post_send")} == {
        p.name: (repr(getattr(policy, p.name)) if p.kind is float else getattr(policy, p.name))
        for p in _script_params("post_send")}
    assert (given["refund"], given["event_ttl"], given["detail"], given["timeline_keep"],
            given["timeline_ttl"], given["value_max"]) == (
        0, "", "", keys.TIMELINE_KEEP, 60, keys.HASH_VALUE_MAX)
    assert args[len(names) - 1:] == list(channels.names())  # the trailing list: every channel
