"""The project's documentation as the tests read it: README.md (set-up and walkthrough) and
the pages of docs/ (reference, operations, design), which together must state every contract."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))


def docs_text() -> str:
    """Every page, one after another (each starts with its `# ` title)."""
    return "\n\n".join(page.read_text() for page in PAGES)


def section(heading: str) -> str:
    """The text under ``heading`` (a whole line, e.g. ``"### Recipient events"``) up to the
    next heading of level 2 (or the end of its page)."""
    for page in PAGES:
        text = page.read_text()
        start = text.find(heading + "\n")
        if start != -1:
            end = text.find("\n## ", start + len(heading))
            return text[start:end if end != -1 else len(text)]
    raise KeyError(heading)
