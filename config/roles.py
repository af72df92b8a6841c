"""Admin tokens and their roles: ``OUTBOX_ADMIN_TOKENS`` parsed once, at start.

An entry is ``NAME:ROLE:TOKEN`` (the token may itself hold ``:``), or a bare token (no ``:``),
which stays ``admin`` for compatibility and is named ``token-<i>`` after its position (0 for
the first entry: the ``token_index`` the admin API logged before tokens had names). Entries are
comma-separated; blank ones are skipped. The name is who the audit says acted.

Roles, each allowing what the one before it does::

    viewer   reads only
    support  + unblock, suspend, suppression, consent, held jobs, dead letters
    admin    + configuration, domains: everything

Which route needs which role is declared in one table, ``webhooks.admin.ROUTES``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

ROLES = ("viewer", "support", "admin")
#: a name: what the audit and the logs show (no spaces, separators or markup)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class AdminToken(BaseModel):
    """One entry of ``OUTBOX_ADMIN_TOKENS``: who holds the token, and what it may do."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str
    token: SecretStr


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed`` (roles are ordered: viewer < ... )."""
    return ROLES.index(role) >= ROLES.index(needed)


def parse_admin_tokens(value: Any) -> tuple[AdminToken, ...]:
    """``OUTBOX_ADMIN_TOKENS`` (a comma-separated text, or a TOML list of entries) as tokens;
    ValueError naming the bad entry by position and name (never by its token)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError("must be comma-separated NAME:ROLE:TOKEN entries")
    found = [_entry(item, i) for i, item in enumerate(
        x for x in value if not isinstance(x, str) or x.strip())]
    _check_unique(found)
    return tuple(found)


def _entry(item: Any, index: int) -> AdminToken:
    if isinstance(item, AdminToken):
        return item
    if not isinstance(item, str):
        raise ValueError(f"entry {index + 1} is not text")
    item = item.strip()
    if ":" not in item:  # a bare token, as before roles
        return AdminToken(name=f"token-{index}", role="admin", token=SecretStr(item))
    name, role, token = (item.split(":", 2) + ["", ""])[:3]
    name, role, token = name.strip(), role.strip(), token.strip()
    where = f"entry {index + 1}" + (f" ({name!r})" if NAME.fullmatch(name) else "")
    if item.count(":") < 2:
        raise ValueError(f"{where} must be NAME:ROLE:TOKEN (or a bare token without ':')")
    if not NAME.fullmatch(name):
        raise ValueError(f"{where}: the name must be 1 to 64 letters, digits, '.', '_', '@' "
                         "or '-', starting with a letter or digit")
    if role not in ROLES:
        # the role is not echoed: a token written in its place would end up in a log
        raise ValueError(f"{where}: the role must be one of {', '.join(ROLES)}")
    if not token:
        raise ValueError(f"{where}: the token is empty")
    return AdminToken(name=name, role=role, token=SecretStr(token))


def _check_unique(found: list[AdminToken]) -> None:
    names = [t.name for t in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the name(s) {', '.join(twice)} are given to more than one token")
    secrets = [t.token.get_secret_value() for t in found]
    if len(set(secrets)) < len(secrets):
        same = [t.name for t in found if secrets.count(t.token.get_secret_value()) > 1]
        raise ValueError(f"{', '.join(same)} have the same token: each needs its own")
