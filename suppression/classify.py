"""Outcome classifier: SMTP reply, Twilio error code or ESP bounce record -> (kind, reason).

Pure (no I/O).  ``reason`` is from Sisimai's vocabulary; ``kind`` is one of
``hard``, ``soft``, ``block``, ``complaint``, ``transient`` or ``None`` when the
reply is not a failure (``delivered``, ``vacation``).  All rules are data in
:mod:`suppression.classify_rules`.

reason -> kind (``REASON_KIND``)::

    hard       userunknown hostunknown hasmoved notaccept suppressed suspend
               (permanent recipient failure: suppress the address); only when the reply
               is permanent and its words do not say "temporary" / "try again later",
               else soft: no guess made hard (see ``TEMPORARY_WORDS``)
    soft       mailboxfull exceedlimit mesgtoobig
               (temporary, recipient side: retried)
    block      blocked badreputation spamdetected virusdetected policyviolation
               authfailure requireptr notcompliantrfc contenterror rejected
               norelaying filtered speeding toomanyconn
               (receiver policy, reputation or rate: retried later, never
               suppresses the recipient; a 5xx reputation block is still block)
    complaint  feedback
    transient  expired networkerror systemerror systemfull mailererror
               failedstarttls securityerror syntaxerror onhold
               (our side, the network or a system problem)
    None       delivered vacation
    undefined  soft for 5xx (a permanent reply whose words say nothing: never
               suppress on a guess), otherwise transient

Precedence for SMTP replies: 2xx -> delivered; then the ordered text rules
(first match wins; they see ``"<code> <enhanced> <text>"`` lower-cased); then
the enhanced status code (exact, ``x.S.D``, ``x.S``); then the basic code;
then ``undefined``.  Twilio codes and ESP records use their own tables; an ESP
record's diagnostic reply refines a generic provider verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from suppression import classify_rules as R

_MAX_TEXT = 4000
# a basic code starts a line (after punctuation), follows "said:", or precedes an enhanced code
_CODE_RE = re.compile(
    r"(?:^[^\w\n]*|said:\s*)([245]\d\d)(?=[ \-]|$)|(?<![\w.])([245]\d\d)[ \-]+[245]\.\d",
    re.M | re.I)
_ENH_RE = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
_LINE_PREFIX_RE = re.compile(r"^\s*[245]\d\d[ \-]", re.M)
# one compiled regex per rule, in rule order (measured faster than one lookahead alternation)
_TEXT_RULES = tuple(
    (re.compile("|".join(f"(?:{p})" for p in pats), re.S).search, reason)
    for reason, pats in R.TEXT_RULES
)
_SLOW_DOWN = tuple((re.compile(pattern, re.S).search, name)
                   for name, pattern, _ in R.SLOW_DOWN_RULES)
_KEY_RE = re.compile(r"[^a-z0-9]")
_TEMPORARY = re.compile("|".join(f"(?:{p})" for p in R.TEMPORARY_WORDS))


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str | None
    reason: str
    code: int | None = None
    enhanced: str | None = None

    def as_dict(self) -> dict[str, str | int | None]:
        return {"kind": self.kind, "reason": self.reason, "code": self.code,
                "enhanced": self.enhanced}

    @property
    def permanent(self) -> bool:
        return self.kind == "hard"

    @property
    def retryable(self) -> bool:
        return self.kind in ("soft", "block", "transient")


def _kind(reason: str, code: int | None, enhanced: str | None, text: str) -> str | None:
    """Kind of a reason; ``undefined`` is soft for 5xx (words that say nothing are no ground
    to suppress an address), transient otherwise. A hard reason is soft when the reply is
    not permanent or its words say the failure is temporary (no guess made hard)."""
    if reason != "undefined":
        kind = R.REASON_KIND[reason]
        if kind == "hard" and (_not_permanent(code, enhanced) or _TEMPORARY.search(text)):
            return "soft"
        return kind
    permanent = (code is not None and 500 <= code < 600) or (enhanced or "").startswith("5.")
    return "soft" if permanent else "transient"


def _not_permanent(code: int | None, enhanced: str | None) -> bool:
    """A basic or enhanced code that is not of the permanent class (5)."""
    return (code is not None and not 500 <= code < 600) or bool(
        enhanced and not enhanced.startswith("5."))


def _text_reason(text: str) -> str | None:
    """First matching text rule (rule order, not position in the text)."""
    return next((reason for search, reason in _TEXT_RULES if search(text)), None)


def _enhanced_reason(enhanced: str | None) -> str | None:
    """Look an RFC 3463 code up: exact, class-free, then subject only."""
    if not enhanced:
        return None
    _, subject, detail = enhanced.split(".")
    for key in (enhanced, f"x.{subject}.{detail}", f"x.{subject}"):
        if key in R.ENHANCED_RULES:
            return R.ENHANCED_RULES[key]
    return None


def _is_success(code: int | None, enhanced: str | None) -> bool:
    return ((code is not None and 200 <= code < 300)
            or (code is None and (enhanced or "").startswith("2.")))


@lru_cache(maxsize=8192)
def _classify(code: int | None, text: str, enhanced: str | None) -> Outcome:
    lowered = f"{code or ''} {enhanced or ''} {text[:_MAX_TEXT]}".lower()
    reason = _text_reason(lowered)
    if _is_success(code, enhanced) and reason != "vacation":
        reason = "delivered"
    reason = reason or _enhanced_reason(enhanced) or R.BASIC_RULES.get(code or 0)
    reason = reason or "undefined"
    return Outcome(_kind(reason, code, enhanced, lowered), reason, code, enhanced)


def classify_smtp(code: int | None, text: str = "", enhanced: str | None = None) -> Outcome:
    """Classify an SMTP reply given as basic code, text and enhanced code."""
    code = int(code) if code is not None and str(code).isdigit() else None
    if enhanced is not None and not _ENH_RE.fullmatch(enhanced.strip()):
        enhanced = None
    return _classify(code, text or "", enhanced.strip() if enhanced else None)


@lru_cache(maxsize=8192)
def classify_reply(reply: str) -> Outcome:
    """Classify a raw reply: one or more lines, a bare enhanced code, or bare text."""
    reply = (reply or "")[:_MAX_TEXT]
    code_m, enh_m = _CODE_RE.search(reply), _ENH_RE.search(reply)
    code = int(code_m.group(1) or code_m.group(2)) if code_m else None
    enhanced = ".".join(enh_m.groups()) if enh_m else None
    text = " ".join(_LINE_PREFIX_RE.sub("", reply).split())
    return _classify(code, text, enhanced)


@lru_cache(maxsize=4096)
def slow_down(reply: str) -> str | None:
    """The name of the slow-down rule (``SLOW_DOWN_RULES``) a raw SMTP reply matches, or None.

    Only a temporary reply can be one: a 4xx basic code, or with none a 4.x.x enhanced code."""
    reply = (reply or "")[:_MAX_TEXT]
    code_m, enh_m = _CODE_RE.search(reply), _ENH_RE.search(reply)
    code = int(code_m.group(1) or code_m.group(2)) if code_m else None
    enhanced = ".".join(enh_m.groups()) if enh_m else None
    temporary = 400 <= code < 500 if code is not None else (enhanced or "").startswith("4.")
    if not temporary:
        return None
    text = " ".join(_LINE_PREFIX_RE.sub("", reply).split())
    lowered = f"{code or ''} {enhanced or ''} {text}".lower()
    return next((name for search, name in _SLOW_DOWN if search(lowered)), None)


def classify_twilio(error_code: int | str | None) -> Outcome:
    """Classify a Twilio ErrorCode; ``None`` (or empty) means delivered."""
    if error_code is None or str(error_code).strip() in ("", "0"):
        return Outcome(None, "delivered")
    code = int(str(error_code).strip()) if str(error_code).strip().isdigit() else None
    unknown = ("transient", "undefined")
    kind, reason = R.TWILIO_RULES.get(code, unknown) if code is not None else unknown
    return Outcome(kind, reason, code)


def _key(value: str | None) -> str:
    return _KEY_RE.sub("", (value or "").lower())


def classify_provider(provider: str, bounce_type: str | None, sub_type: str | None = None,
                      diagnostic: str | None = None) -> Outcome:
    """Normalise an ESP bounce record; a diagnostic reply refines generic verdicts."""
    prov = R.PROVIDER_ALIASES.get(_key(provider), _key(provider))
    bt, st = _key(bounce_type), _key(sub_type)
    kind, reason = R.PROVIDER_RULES.get((prov, bt, st)) or R.PROVIDER_RULES.get(
        (prov, bt, "*"), ("transient", "undefined"))
    diag = classify_reply(diagnostic) if diagnostic else None
    if (diag and reason in R.PROVIDER_REFINABLE and diag.kind is not None
            and diag.reason != "undefined"):
        return diag
    return Outcome(kind, reason, diag.code if diag else None, diag.enhanced if diag else None)
