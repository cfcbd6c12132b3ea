"""Zoo coverage table: takes the rows of scripts/zoo_coverage.py (one per model-zoo config and
backend, `model` the config's path), returns the Markdown table of docs/zoo.md: one line per
config, one column per backend, each cell the outcome (ok or parity_fail with the parity
figures the model has, unsupported or error with the reason), and the counts. The page's block
between `<!-- d2bench:zoo:begin -->` and `<!-- d2bench:zoo:end -->` is generated, never edited.

    python -m runner.report.zoo results/cpu_zoo.csv --doc docs/zoo.md
    python -m runner.report.zoo outputs/zoo_shard1.csv outputs/zoo_shard2.csv \
        --out results/cpu_zoo.csv --doc docs/zoo.md

Several CSVs (the shards of one walk) are merged: one row per config and backend, a later
file's row replacing an earlier one's; --out writes the merged rows. The page names the commands
that measured the rows (each row's `command`) and the one that made the table.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from runner.report.readme import relative_link, update_readme

BEGIN_MARKER = "<!-- d2bench:zoo:begin -->"
END_MARKER = "<!-- d2bench:zoo:end -->"
STATUSES = ("ok", "parity_fail", "unsupported", "error")
# the parity figures a cell shows, where the row has them: (column, label, format)
FIGURES = (
    ("parity_match_f1", "F1", "{:.3f}"),
    ("parity_box_iou", "box IoU", "{:.3f}"),
    ("parity_mask_iou", "mask IoU", "{:.3f}"),
    ("parity_keypoint_max_dist", "kp dist", "{:.2g}"),
    ("parity_sem_seg_agreement", "sem pixels", "{:.3f}"),
    ("parity_sem_seg_prob_max_diff", "sem prob diff", "{:.2g}"),
    ("parity_panoptic_match_f1", "pan F1", "{:.3f}"),
    ("parity_panoptic_class_agreement", "pan class", "{:.3f}"),
)
REASON_CHARS = 220  # a cell's reason, shortened past this


def counts(rows: Iterable) -> dict[str, int]:
    """Rows per status, in STATUSES order (statuses no row has left out)."""
    found = Counter(row.status for row in rows)
    return {status: found[status] for status in STATUSES if found[status]}


def _cell_text(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def cell(row) -> str:
    """One backend's outcome for one config, as the table shows it."""
    if row is None:
        return "not run"
    if row.status in ("ok", "parity_fail"):
        shown = [
            f"{label} {form.format(getattr(row, column))}"
            for column, label, form in FIGURES
            if getattr(row, column, None) is not None
        ]
        unchecked = f"; unchecked: {row.parity_unchecked}" if row.parity_unchecked else ""
        failed = f" ({row.error})" if row.status == "parity_fail" and row.error else ""
        return _cell_text(f"{row.status}{failed}: {', '.join(shown)}{unchecked}")
    return _cell_text(f"{row.status}: {row.error}")


def table(rows: list) -> str:
    """The coverage block: counts per backend, then one line per config."""
    backends = list(dict.fromkeys(row.backend for row in rows))
    by_config: dict[str, dict] = {}
    for row in rows:
        by_config.setdefault(row.model, {})[row.backend] = row
    lines = [
        f"{len(by_config)} configs of the model zoo; per backend: "
        + "; ".join(
            f"`{backend}` "
            + ", ".join(
                f"{n} {status}"
                for status, n in counts(r for r in rows if r.backend == backend).items()
            )
            for backend in backends
        )
        + ".",
        "",
        "| config | " + " | ".join(f"`{backend}`" for backend in backends) + " |",
        "| --- |" + " --- |" * len(backends),
    ]
    for config in sorted(by_config):
        found = by_config[config]
        cells = [cell(found.get(backend)) for backend in backends]
        lines.append(f"| `{config}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merged(files: list[list]) -> list:
    """One row per (config, backend) of several files' rows, a later file's winning; in config
    order, then the order the backends came in."""
    found: dict[tuple, object] = {}
    for rows in files:
        for row in rows:
            found[(row.model, row.backend)] = row
    backends = list(dict.fromkeys(backend for _, backend in found))
    return [found[key] for key in sorted(found, key=lambda k: (k[0], backends.index(k[1])))]


def write_doc(doc: Path, rows: list, command: str, csv: Path) -> None:
    """Rewrite the coverage block of `doc` (its markers must be there) from `rows`."""
    from runner.run import record

    text = doc.read_text()
    link = relative_link(Path(csv), doc)
    walks = list(dict.fromkeys(row.command for row in rows if row.command))
    measured = "".join(f"    {walk}\n" for walk in walks)
    block = f"Rows: [{Path(csv).name}]({link})" + (
        f", measured by\n\n```\n{measured}```\n\n" if walks else ".\n\n"
    )
    updated = update_readme(text, block + table(rows), command, (BEGIN_MARKER, END_MARKER))
    record.write_atomic(doc, updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The zoo coverage table from its CSV")
    parser.add_argument("csv", type=Path, nargs="+", help="scripts/zoo_coverage.py's rows")
    parser.add_argument("--out", type=Path, help="write the merged rows here")
    parser.add_argument("--doc", type=Path, help="the page to rewrite (else: print the table)")
    args = parser.parse_args(argv)
    from runner.run import record

    try:
        rows = merged([record.read_rows(path) for path in args.csv])
    except (OSError, ValueError) as error:
        print(f"{error}", file=sys.stderr)
        return 2
    if args.out is not None:
        record.write_rows(args.out, rows)
    if args.doc is None:
        sys.stdout.write(table(rows))
        return 0
    command = "python -m runner.report.zoo " + " ".join(argv if argv else sys.argv[1:])
    try:
        write_doc(args.doc, rows, command, args.out or args.csv[-1])
    except (OSError, ValueError) as error:
        print(f"{args.doc}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
