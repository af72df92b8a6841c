"""Redis replies as text: the client may answer bytes (the default) or str
(``decode_responses=True``), and scripts answer integers too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text(value: Any) -> str:
    """A reply as text; ``None`` (a missing field or key) is ``""``."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash reply (HGETALL, a stream entry's fields) with its names and values as text."""
    return {text(k): text(v) for k, v in raw.items()}
