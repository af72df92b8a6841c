"""Account and job ids: the one rule, checked at every entrance.

An id is 1 to :data:`MAX_LENGTH` characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or
a digit. Ids go into Message-IDs (dot-atom text: no ``:``), VERP addresses, URLs, log lines and
Redis keys (``outbox:{acct:<id>}:...``), and Redis ``SCAN MATCH`` patterns are built from them:
the rule leaves out every glob metacharacter (``* ? [ ] { } \\``), the hash tag's ``}``, the
key separator ``:``, white space and line breaks, so an id can neither reach another account's
keys nor split a row.

Every entrance uses :func:`parse_account_id` / :func:`parse_job_id` (or the types built on
them): jobs (:data:`sender.models.AccountId`, :data:`sender.models.JobId`), the CLI
(``type=`` of the arguments: argparse's usage error, exit 2), the admin API (400 naming the
field), the support page (the same pattern, put into its script), webhook query strings and
the account part of every Redis key (:func:`suppression.keys.account_tag`).
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
#: The rule as a regular expression without anchors (for ``fullmatch``, JavaScript and docs).
PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._\-]{{0,{MAX_LENGTH - 1}}}"
#: Anchored, for pydantic and callers that match a whole string (``\Z``: no trailing newline).
SAFE_ID = rf"^{PATTERN}\Z"
RULE = (f"1-{MAX_LENGTH} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")
_ID = re.compile(PATTERN)
_SHOWN = 40  # characters of a refused value quoted in the error


class InvalidId(ValueError):
    """A value that is not an id; the message names the field and the rule."""

    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"{field} must be {RULE}; got {shown(value)}")
        self.field = field


def shown(value: object) -> str:
    """A refused value as an error quotes it: repr (line breaks escaped), cut to 40 characters."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def is_id(value: object) -> bool:
    """Whether ``value`` is an id (a str matching the rule, whole)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def parse_id(value: object, field: str) -> str:
    """``value`` if it is an id; :class:`InvalidId` naming ``field`` otherwise."""
    if not is_id(value):
        raise InvalidId(field, value)
    assert isinstance(value, str)
    return value


def parse_account_id(value: object) -> str:
    """An account id, or :class:`InvalidId` ("account id must be ...")."""
    return parse_id(value, "account id")


def parse_job_id(value: object) -> str:
    """A job id, or :class:`InvalidId` ("job id must be ...")."""
    return parse_id(value, "job id")
