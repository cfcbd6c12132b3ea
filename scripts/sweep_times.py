"""Wall time of every command of scripts/device_batch.sh logs, as a Markdown table.

    python scripts/sweep_times.py results/logs/h200x2_first_batch.log ...

device_batch.sh writes "# >>> COMMAND" before and "# <<< rc=N in S s" after each command; the
sweep summary line ("sweep done: ...") between them is shown too. Nothing is estimated: the
seconds are the script's own `date +%s` differences.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

START = re.compile(r"^# >>> (?P<command>.*)$")
END = re.compile(r"^# <<< rc=(?P<rc>-?\d+) in (?P<seconds>\d+) s$")
DONE = re.compile(r"sweep done: (?P<summary>.*)$")


def commands(text: str) -> list[dict]:
    """One dict per finished command: command, rc, seconds, summary ('' when no sweep line)."""
    found, current = [], None
    for line in text.splitlines():
        if match := START.match(line):
            current = {"command": match["command"], "summary": ""}
        elif current is not None and (match := DONE.search(line)):
            current["summary"] = match["summary"]
        elif current is not None and (match := END.match(line)):
            found.append({**current, "rc": int(match["rc"]), "seconds": int(match["seconds"])})
            current = None
    return found


def table(paths: list[Path]) -> str:
    lines = ["| log | command | exit | wall time (s) | sweep |", "|---|---|---:|---:|---|"]
    for path in paths:
        for item in commands(path.read_text()):
            if item["command"].startswith("tar "):
                continue
            command = item["command"].replace("|", "\\|")
            lines.append(
                f"| `{path.name}` | `{command}` | {item['rc']} | {item['seconds']} | "
                f"{item['summary'] or '—'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    missing = [p for p in argv if not Path(p).is_file()]
    if missing:
        print(f"no such log: {', '.join(missing)}", file=sys.stderr)
        return 2
    sys.stdout.write(table([Path(p) for p in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
