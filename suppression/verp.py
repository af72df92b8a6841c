"""VERP envelope senders that name their job: ``bounce+<account>+<job>@<bounce domain>``.

Ids are ``[A-Za-z0-9._-]`` (see ``sender.models.SAFE_ID``), all allowed unquoted in a local
part, and never contain ``+``, so the address splits back unambiguously.
"""

from __future__ import annotations

import re

_VERP = re.compile(r"^bounce\+([A-Za-z0-9._\-]+)\+([A-Za-z0-9._\-]+)@", re.IGNORECASE)


def verp_address(account_id: str, job_id: str, domain: str) -> str:
    """The envelope sender for one job."""
    return f"bounce+{account_id}+{job_id}@{domain}"


def parse_verp(address: str) -> tuple[str, str] | None:
    """``(account_id, job_id)`` from a VERP address (angle brackets allowed), or None."""
    match = _VERP.match(address.strip().strip("<>"))
    return (match.group(1), match.group(2)) if match else None
