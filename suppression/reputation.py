"""Account reputation: the rule that throttles and blocks, and its Python mirror.

The worker decides in Lua (``suppression/lua/post_send.lua``), on every recorded outcome, in the
same round trip that records it; this module mirrors the arithmetic for ``outbox accounts
show`` and for the property test that checks the two agree.

Counters: per account and channel, sends, hard bounces and complaints in time buckets
(``reputation_bucket``, default 1 h) summed over a rolling window (``reputation_window``,
default 24 h; rounded up to whole buckets). A message refused at once by the relay with a hard
bounce counts as a send *and* a hard bounce (it was handed over; the rate is per attempt).

The rule (per channel; the account takes the worst channel)::

    lb = Wilson score lower bound (z = 1.96, i.e. 95 %) of k bad out of n sends
    block     if lb >= block line    and n >= min(min_volume, early_volume)
    throttle  if lb >= throttle line and n >= min_volume
    otherwise fine

================================  =========  ===========
parameter                         bounces    complaints
================================  =========  ===========
throttle line                     5 %        0.1 %
block line                        10 %       0.3 %
minimum volume (throttle, block)  200        1,000
early block volume                50         250
================================  =========  ===========

Deciding on the *lower* bound rather than the raw rate means: the line is crossed only when we
are 95 % sure the true rate is above it. A small sender with 3 bounces in 20 sends (15 %) is
not punished for noise, while a 30 %-dirty blast is blocked after about 50 sends
(lb(15, 50) = 0.19 > 10 %) instead of running on to 200. The parameters are declared once,
in :mod:`config.reputation` (:class:`Policy`): each is a setting (``OUTBOX_*``), and the lines,
volumes, window and bucket can be overridden per account (``outbox accounts configure``).

``blocked`` and ``suspended`` are left only by a support action (unblock, unsuspend), which
starts a probation period (``probation_seconds``, default 24 h) with fresh counters.
``throttled`` is left automatically when the rates fall back under the lines.

Before the throttle, a warning (``warning``, as SES's "under review"): from the early volume
on (``min(min_volume, early_volume)``), a lower bound at or above a warning line
(``warning_bounce`` 2 %, ``warning_complaint`` 0.08 %) moves an account that is neither
throttled nor blocked to ``warning``, with its audit record and status event; nothing is
slowed, and it is left automatically too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from config.reputation import OVERRIDES, PARAMS, Policy

__all__ = ["OVERRIDES", "PARAMS", "STATES", "Policy", "Rates", "level", "sum_buckets",
           "warned", "wilson_lower"]

STATES = ("active", "warning", "throttled", "blocked", "suspended")


def wilson_lower(k: float, n: float, z: float = 1.96) -> float:
    """Wilson score interval lower bound of ``k`` successes in ``n`` trials (same arithmetic,
    in the same order, as ``wilson`` in post_send.lua)."""
    if n <= 0:
        return 0.0
    ph = min(1.0, k / n)
    z2 = z * z
    centre = ph + z2 / (2 * n)
    margin = z * math.sqrt(ph * (1 - ph) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def level(k: int, n: int, *, min_n: int, early_n: int, throttle: float, block: float,
          z: float = 1.96) -> int:
    """0 fine, 1 throttle, 2 block (``level`` in post_send.lua)."""
    lb = wilson_lower(k, n, z)
    if n >= min(min_n, early_n) and lb >= block:
        return 2
    if n >= min_n and lb >= throttle:
        return 1
    return 0


def warned(k: int, n: int, *, min_n: int, early_n: int, line: float,
           z: float = 1.96) -> bool:
    """Over a warning line (``wb``/``wc`` in post_send.lua): from the early volume on, the
    lower bound at or above the line."""
    return n >= min(min_n, early_n) and wilson_lower(k, n, z) >= line


@dataclass(frozen=True, slots=True)
class Rates:
    """One channel's counters over the window, with rates and bounds."""

    sends: int
    hard_bounces: int
    complaints: int
    window: int
    policy: Policy

    @property
    def bounce_level(self) -> int:
        p = self.policy
        return level(self.hard_bounces, self.sends, min_n=p.min_bounce_volume,
                     early_n=p.early_bounce_volume, throttle=p.throttle_bounce,
                     block=p.block_bounce, z=p.z)

    @property
    def complaint_level(self) -> int:
        p = self.policy
        return level(self.complaints, self.sends, min_n=p.min_complaint_volume,
                     early_n=p.early_complaint_volume, throttle=p.throttle_complaint,
                     block=p.block_complaint, z=p.z)

    @property
    def warning(self) -> bool:
        """Over a warning line (bounces or complaints)."""
        p = self.policy
        return (warned(self.hard_bounces, self.sends, min_n=p.min_bounce_volume,
                       early_n=p.early_bounce_volume, line=p.warning_bounce, z=p.z)
                or warned(self.complaints, self.sends, min_n=p.min_complaint_volume,
                          early_n=p.early_complaint_volume, line=p.warning_complaint, z=p.z))

    def as_dict(self) -> dict[str, Any]:
        n = self.sends
        return {
            "sends": n, "hard_bounces": self.hard_bounces, "complaints": self.complaints,
            "bounce_rate": self.hard_bounces / n if n else 0.0,
            "complaint_rate": self.complaints / n if n else 0.0,
            "bounce_wilson_lower": wilson_lower(self.hard_bounces, n, self.policy.z),
            "complaint_wilson_lower": wilson_lower(self.complaints, n, self.policy.z),
            "bounce_level": self.bounce_level, "complaint_level": self.complaint_level,
            "warning": self.warning,
            "window": self.window,
        }


def sum_buckets(fields: dict[str, str], *, now: int, bucket: int, window: int) -> dict[str, int]:
    """Sum ``s:/h:/c:<start>`` bucket fields still inside the window (as post_send.lua)."""
    sums = {"s": 0, "h": 0, "c": 0}
    for name, value in fields.items():
        if name[1:2] != ":":
            continue  # the script's running totals and bookkeeping (S, H, C, lo)
        kind, start = name[:1], int(name[2:])
        if start + bucket > now - window and kind in sums:
            sums[kind] += int(value)
    return sums
