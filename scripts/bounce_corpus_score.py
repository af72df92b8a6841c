"""Score the bounce readers on tests/data/bounces/mail/: by server family, the share of bounces
read (a format other than ``none``, and every labelled recipient found), the share of
recipients with the right kind, and the false-hard count (a recipient labelled soft, block or
transient read as ``hard``: an address that would be suppressed forever on a guess); messages
labelled with no recipient (auto-replies) must read as ``none``. Reads each message exactly as
``outbox bounces parse`` does. Then the same for the SMTP replies of
tests/data/bounces/not-hard.jsonl (soft and block replies only: none may be hard).

    PYTHONPATH=. .venv/bin/python scripts/bounce_corpus_score.py [DIR]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from webhooks.providers import dsn

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "bounces" / "mail"
MESSAGE_ID_DOMAIN = "mail.outbox.example"
#: directories of messages from several families, each file named ``<family>-<case>.eml``
MIXED = ("docs", "families", "not-hard")


def expected(directory: Path) -> dict[str, dict[str, str | None]]:
    """file -> {recipient: kind} from the directory's labels.json (both layouts)."""
    labels = json.loads((directory / "labels.json").read_text())
    out = {}
    for name, label in labels.items():
        file = name if name.endswith(".eml") else f"{name}.eml"
        out[file] = {r: (v["kind"] if isinstance(v, dict) else v)
                     for r, v in label["recipients"].items()}
    return out


def family_of(directory: Path, file: str) -> str:
    return file.split("-")[0] if directory.name in MIXED else directory.name


def score(root: Path = CORPUS) -> dict[str, dict[str, Any]]:
    """family -> counts and shares."""
    table: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for directory in sorted(p for p in root.iterdir() if (p / "labels.json").exists()):
        for file, want in expected(directory).items():
            report = dsn.read((directory / file).read_bytes(), (), MESSAGE_ID_DOMAIN)
            got = {line["recipient"]: line for line in dsn.describe(report)}
            row = table[family_of(directory, file)]
            if file.endswith("-delayed.eml") or "-delayed" in file:
                want = {r: ("soft" if k == "hard" else k) for r, k in want.items()}
            if not want:  # not a bounce: must be left alone
                row["not_bounces"] += 1
                row["left_alone"] += report.format == "none"
                continue
            row["bounces"] += 1
            row["read"] += report.format != "none" and set(want) <= set(got)
            for recipient, kind in want.items():
                row["recipients"] += 1
                if kind != "hard":
                    row["not_hard"] += 1
                    row["false_hard"] += got.get(recipient, {}).get("kind") == "hard"
                row["right_kind"] += recipient in got and got[recipient]["kind"] == kind
                if recipient not in got or got[recipient]["kind"] != kind:
                    row["misses"] = [*row.get("misses", []), f"{file}:{recipient}:"
                                     f"{got.get(recipient, {}).get('kind')}!={kind}"]
    return {f: dict(r) for f, r in sorted(table.items())}


NOT_HARD = CORPUS.parent / "not-hard.jsonl"


def replies_score(path: Path = NOT_HARD) -> dict[str, Any]:
    """The classifier on soft and block SMTP replies: how many, right kind, right reason,
    and those read as hard (each listed)."""
    from suppression.classify import classify_reply
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    outcomes = [(row, classify_reply(row["reply"])) for row in rows]
    return {"replies": len(rows),
            "right_kind": sum(o.kind == row["kind"] for row, o in outcomes),
            "right_reason": sum(o.reason == row["reason"] for row, o in outcomes),
            "false_hard": [row["reply"] for row, o in outcomes if o.kind == "hard"]}


def main(argv: list[str]) -> int:
    table = score(Path(argv[0]) if argv else CORPUS)
    total: dict[str, int] = defaultdict(int)
    print(f"{'family':<12} {'bounces read':>14} {'right kind':>14} {'false hard':>12} "
          f"{'auto-replies left':>18}")
    for family, row in table.items():
        for key in ("bounces", "read", "recipients", "right_kind", "not_bounces", "left_alone",
                    "not_hard", "false_hard"):
            total[key] += row.get(key, 0)
        print(_line(family, row))
    print(_line("ALL", total))
    for family, row in table.items():
        for miss in row.get("misses", []):
            print(f"  miss {family}: {miss}")
    replies = replies_score()
    print(f"\nnot-hard replies ({NOT_HARD.name}): {replies['replies']} soft/block/transient, "
          f"right kind {replies['right_kind']}/{replies['replies']}, right reason "
          f"{replies['right_reason']}/{replies['replies']}, "
          f"false hard {len(replies['false_hard'])}")
    for reply in replies["false_hard"]:
        print(f"  false hard: {reply}")
    return 0


def _line(name: str, row: Any) -> str:
    def share(a: str, b: str) -> str:
        return f"{row.get(a, 0)}/{row.get(b, 0)}" if row.get(b) else "-"
    return (f"{name:<12} {share('read', 'bounces'):>14} {share('right_kind', 'recipients'):>14}"
            f" {share('false_hard', 'not_hard'):>12} {share('left_alone', 'not_bounces'):>18}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
