"""Account limits and reputation parameters, declared once: each field of :class:`Policy`.

A field is one parameter: its name (the :class:`Policy` attribute, the field of an account's
``outbox:{acct:A}:cfg`` hash, the ``outbox accounts configure --flag`` and the admin API's
field), its type and default, bounds, help text, settings name (``OUTBOX_<SETTING>``), whether
an account may override it, and which Lua script takes it as an argument. Everything else is
derived from this table:

- the :class:`config.Settings` fields (:class:`ReputationSettings`, same names and bounds);
- :meth:`Policy.from_settings` and :meth:`Policy.with_overrides` (an account's cfg hash);
- the flags of ``outbox accounts configure`` and the fields the admin API accepts
  (:data:`OVERRIDES`), both checked by :func:`check_override`;
- the scripts' arguments (:mod:`suppression.script_args`): each parameter declared for
  ``pre_send`` or ``post_send`` is passed to that script and read there by name (``P.<name>``:
  the account's override when it may have one, else the default), with no edit to the script
  (tests/integration/test_script_args.py adds one and runs both).

The rule the parameters feed is in :mod:`suppression.reputation` (and ``post_send.lua``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from pydantic import Field

#: the scripts a parameter may be passed to (``script=``)
SCRIPTS = ("pre_send", "post_send")
_T = TypeVar("_T", int, float, str)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter, as the table declares it."""

    name: str
    kind: type  # int, float or str (the type of the default)
    default: int | float | str
    help: str
    setting: str  # the Settings field, OUTBOX_<SETTING upper-cased>
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    per_account: bool = True
    script: str = ""  # "pre_send" / "post_send": the script that gets it (as P.<name>)

    @property
    def flag(self) -> str:
        """The ``outbox accounts configure`` option."""
        return "--" + self.name.replace("_", "-")


def _param(default: _T, help: str, *, setting: str = "", gt: float | None = None,
           ge: float | None = None, le: float | None = None, choices: tuple[str, ...] = (),
           per_account: bool = True, script: str = "") -> _T:
    """A :class:`Policy` field with its declaration in the metadata."""
    spec = {"help": help, "setting": setting, "gt": gt, "ge": ge, "le": le,
            "choices": choices, "per_account": per_account, "script": script}
    return field(default=default, metadata={"param": spec})


_FRACTION = "a fraction: 0.05 = 5 %"
_QUIET = ("off", "drop", "wait")


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits and reputation lines: the settings' values, with an account's overrides on top.

    The table: one field per parameter (a subclass adding fields adds parameters: see
    :func:`declared`)."""

    rate: float = _param(500.0, "messages per second per channel", setting="account_rate",
                         gt=0, script="pre_send")
    burst: int = _param(5000, "token bucket size per channel", setting="account_burst",
                        ge=1, script="pre_send")
    throttle_factor: float = _param(0.1, "a throttled account's share of its rate and burst",
                                    gt=0, le=1, per_account=False, script="pre_send")
    consent_mode: str = _param("opt_in", "marketing without a consent record: refused "
                               "(opt_in) or sent (opt_out)", choices=("opt_in", "opt_out"),
                               script="pre_send")
    reputation_bucket: int = _param(3600, "seconds per counter bucket", ge=1,
                                    script="post_send")
    reputation_window: int = _param(86400, "seconds of counters the rule reads", ge=60,
                                    script="post_send")
    min_bounce_volume: int = _param(200, "sends before a bounce line applies", ge=1,
                                    script="post_send")
    min_complaint_volume: int = _param(1000, "sends before a complaint line applies", ge=1,
                                       script="post_send")
    early_bounce_volume: int = _param(50, "sends before a clear bounce block applies", ge=1,
                                      script="post_send")
    early_complaint_volume: int = _param(250, "sends before a clear complaint block applies",
                                         ge=1, script="post_send")
    throttle_bounce: float = _param(0.05, f"hard bounce throttle line, {_FRACTION}",
                                    setting="throttle_bounce_rate", gt=0, le=1,
                                    script="post_send")
    block_bounce: float = _param(0.10, f"hard bounce block line, {_FRACTION}",
                                 setting="block_bounce_rate", gt=0, le=1, script="post_send")
    throttle_complaint: float = _param(0.001, f"complaint throttle line, {_FRACTION}",
                                       setting="throttle_complaint_rate", gt=0, le=1,
                                       script="post_send")
    block_complaint: float = _param(0.003, f"complaint block line, {_FRACTION}",
                                    setting="block_complaint_rate", gt=0, le=1,
                                    script="post_send")
    warning_bounce: float = _param(0.02, f"hard bounce warning line, {_FRACTION}: the "
                                   "account is in warning, nothing is slowed",
                                   setting="warning_bounce_rate", gt=0, le=1,
                                   script="post_send")
    warning_complaint: float = _param(0.0008, f"complaint warning line, {_FRACTION}",
                                      setting="warning_complaint_rate", gt=0, le=1,
                                      script="post_send")
    z: float = _param(1.96, "z of the Wilson lower bound (1.96: 95 %)", setting="wilson_z",
                      gt=0, per_account=False, script="post_send")
    probation_seconds: int = _param(86400, "seconds of probation after an unblock or "
                                    "unsuspend", ge=0, per_account=False)

    cap_marketing_email: int = _param(0, "marketing e-mails to one recipient per cap_period "
                                      "(0: no cap); over it a job ends capped or waits "
                                      "(cap_mode)", ge=0,
                                      setting="frequency_cap_marketing_email",
                                      script="pre_send")
    cap_marketing_sms: int = _param(0, "marketing SMS to one recipient per cap_period (0: no "
                                    "cap)", ge=0, setting="frequency_cap_marketing_sms",
                                    script="pre_send")
    cap_notification_email: int = _param(0, "notification e-mails to one recipient per "
                                         "cap_period (0: no cap)", ge=0,
                                         setting="frequency_cap_notification_email",
                                         script="pre_send")
    cap_notification_sms: int = _param(0, "notification SMS to one recipient per cap_period "
                                       "(0: no cap)", ge=0,
                                       setting="frequency_cap_notification_sms",
                                       script="pre_send")
    cap_period: int = _param(604800, "seconds a frequency cap counts back (rolling)", ge=60,
                             setting="frequency_cap_period", script="pre_send")
    cap_mode: str = _param("end", "a job over a frequency cap ends capped (end) or waits "
                           "until the oldest message counted leaves the period (wait)",
                           choices=("end", "wait"), setting="frequency_cap_mode",
                           script="pre_send")
    daily_quota: int = _param(0, "messages per day, all channels (0: none); over it a job "
                              "ends over_quota or waits (quota_mode)", ge=0, script="pre_send")
    quota_mode: str = _param("end", "a job over the daily quota ends over_quota (end) or "
                             "waits for the next day (wait; transactional jobs never wait)",
                             choices=("end", "wait"),
                             script="pre_send")
    quota_utc_offset: int = _param(28800, "seconds east of UTC where the quota's day starts "
                                   "(28800: midnight in Hong Kong)", ge=-43200, le=50400,
                                   script="pre_send")

    quiet_marketing_email: str = _param("off", "marketing e-mail in the quiet hours: sent "
                                        "(off), dropped, ending quiet_hours (drop), or kept "
                                        "until the window ends (wait)",
                                        choices=_QUIET, script="pre_send")
    quiet_marketing_sms: str = _param("off", "marketing SMS in the quiet hours: off, drop or "
                                      "wait", choices=_QUIET, script="pre_send")
    quiet_notification_email: str = _param("off", "notification e-mail in the quiet hours: "
                                           "off, drop or wait", choices=_QUIET,
                                           script="pre_send")
    quiet_notification_sms: str = _param("off", "notification SMS in the quiet hours: off, "
                                         "drop or wait", choices=_QUIET, script="pre_send")
    quiet_start: int = _param(1320, "quiet hours' start, minutes after midnight in the "
                              "recipient's time (1320: 22:00)", ge=0, le=1439,
                              script="pre_send")
    quiet_end: int = _param(480, "quiet hours' end, minutes after midnight (480: 08:00)",
                            ge=0, le=1439, script="pre_send")

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        """The settings' values (an object without one keeps the default)."""
        values = {p.name: getattr(settings, p.setting, None) for p in PARAMS}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def with_overrides(self, cfg: Mapping[str, str]) -> Policy:
        """This policy with an account's overrides (its cfg hash) applied."""
        return replace(self, **{name: p.kind(cfg[name]) for name, p in OVERRIDES.items()
                                if cfg.get(name) not in (None, "")})


@functools.cache
def declared(policy_type: type = Policy) -> tuple[Param, ...]:
    """The parameters of ``policy_type`` (:class:`Policy` or a subclass), in declared order."""
    found = []
    for f in fields(policy_type):
        spec = dict(f.metadata["param"])
        spec["setting"] = spec["setting"] or f.name
        if spec["script"] not in ("", *SCRIPTS):
            raise ValueError(f"{f.name}: no script {spec['script']!r}")
        default = cast(int | float | str, f.default)
        found.append(Param(name=f.name, kind=type(default), default=default, **spec))
    return tuple(found)


#: every parameter, in declared order
PARAMS: tuple[Param, ...] = declared(Policy)
#: the parameters an account may override, by name (cfg field, CLI flag, admin API field)
OVERRIDES: Mapping[str, Param] = {p.name: p for p in PARAMS if p.per_account}


def check_override(name: str, value: Any) -> int | float | str:
    """An account's override as its parameter takes it (a numeral string is a number);
    ValueError, naming the parameter, for anything else. ``name`` must be in OVERRIDES."""
    p = OVERRIDES[name]
    if p.choices:
        if value not in p.choices:
            *others, last = p.choices
            raise ValueError(f"{name} must be {', '.join(others)} or {last}" if others
                             else f"{name} must be {last}")
        return cast(str, value)
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number")
    if p.kind is int and not number.is_integer():
        raise ValueError(f"{name} must be a whole number")
    if p.gt is not None and number <= p.gt:
        raise ValueError(f"{name} must be positive" if p.gt == 0
                         else f"{name} must be more than {p.gt:g}")
    if p.ge is not None and number < p.ge:
        raise ValueError(f"{name} must be at least {p.ge:g}")
    if p.le is not None and number > p.le:
        raise ValueError(f"{name} is {_FRACTION}, at most {p.le:g}, not {value!r}"
                         if p.le == 1 else f"{name} must be at most {p.le:g}")
    return int(number) if p.kind is int else number


def _settings_namespace() -> dict[str, Any]:
    """Annotations and pydantic fields of the settings, one per parameter."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for p in PARAMS:
        annotations[p.setting] = cast(Any, Literal)[p.choices] if p.choices else p.kind
        namespace[p.setting] = Field(p.default, gt=p.gt, ge=p.ge, le=p.le, description=p.help)
    return namespace


if TYPE_CHECKING:
    class ReputationSettings:
        """The parameters' settings (fields made at run time from :data:`PARAMS`; read them
        through :meth:`Policy.from_settings`)."""
else:
    ReputationSettings = type("ReputationSettings", (), _settings_namespace())
