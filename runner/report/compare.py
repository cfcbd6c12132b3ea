"""Compare: takes two results files (or run folders) and returns Markdown setting them side by
side, to compare machines. Rows are paired by identity without the machine (compare_fields):
each side's file, machine, software and protocol, then one table per variant with both medians,
B/A latency, GPU busy and parity of each side, and the rows only in A and only in B.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from runner.report.identity import (
    backend_label,
    compare_fields,
    machine_of,
    pair_key,
    title_of,
)
from runner.report.markdown import (
    DASH,
    counted,
    joined,
    markdown_header,
    markdown_row,
    number,
    ratio_text,
)
from runner.report.repeats import merged_rows
from runner.report.rows import (
    MixedMachines,
    collect,
    drop_duplicates,
    machines,
    require_one_machine,
    sort_rows,
)
from runner.report.tables import (
    failure_text,
    machine_text,
    parity_text,
    protocol_texts,
    software_text,
    table_subtitle,
)
from runner.run.record import Row, is_measured

log = logging.getLogger(__name__)

COMPARE_COLUMNS = (
    "Backend",
    "Precision",
    "A median (ms)",
    "B median (ms)",
    "B/A latency",
    "A GPU busy (ms)",
    "B GPU busy (ms)",
    "A parity",
    "B parity",
)


ONLY_COLUMNS = (
    "Variant",
    "Shapes",
    "Input",
    "Backend",
    "Precision",
    "Median (ms)",
    "GPU busy (ms)",
    "Parity",
)


COMPARE_TEXT_COLUMNS = (
    "Machine",
    "Variant",
    "Shapes",
    "Input",
    "Backend",
    "Precision",
    "Parity",
    "A parity",
    "B parity",
)


COMPARE_LEGEND = """\
Columns:

- **A / B median (ms)**: median latency per call of `batch` images, in milliseconds, at the
  table's input size, each on its own file's machine.
- **B/A latency**: B's median latency divided by A's (below 1.00x: B is faster; — where either
  side has no measurement).
- **A / B GPU busy (ms)**: the profiler's kernel (and copy) time of one call.
- **A / B parity**: outputs against eager fp32 of the same file: pass or FAIL against the
  tolerances, with the F1 of matched detections.
- **unsupported / error**: the run could not apply or failed; its status is shown instead of
  numbers, and the first line of its reason is listed under the table."""


def read_side(path: Path, allow_mixed: bool) -> list[Row]:
    """One input of --compare or --agreement: its rows (one per repeat) collected, deduplicated
    and checked for one machine. Raises ValueError (MixedMachines among them) naming the file
    where that fails."""
    if not path.exists():
        raise ValueError(f"no such input: {path}")
    found, skipped = collect([path])
    rows, dropped = drop_duplicates(found)
    if not rows:
        raise ValueError(f"{path}: no rows to compare ({counted(len(skipped), 'file')} skipped)")
    try:
        require_one_machine(rows, allow_mixed)
    except MixedMachines as error:
        raise MixedMachines(f"{path}: {error}") from error
    log.info(
        "read %s from %s; dropped %s; skipped %s",
        counted(len(rows), "row"),
        path,
        f"{len(dropped)} identical cop{'y' if len(dropped) == 1 else 'ies'}",
        counted(len(skipped), "file"),
    )
    return rows


def compare_side(path: Path, allow_mixed: bool) -> list[Row]:
    """One side of --compare: read_side's rows with each identity's repeats merged (their
    medians' median)."""
    return merged_rows(read_side(path, allow_mixed))


def pair_rows(
    a_rows: Iterable[Row], b_rows: Iterable[Row]
) -> tuple[list[tuple[Row, Row]], list[Row], list[Row]]:
    """Pair rows of A and B that share pair_key (the identity without the machine).

    Returns (pairs, only_a, only_b), each in sort_rows order (pairs by their A row). A key with
    several rows on a side (several machines, where mixing was allowed) pairs each A row with each
    B row; a row with no partner goes to only_a or only_b, so none is lost.
    """
    a_sorted, b_sorted = sort_rows(a_rows), sort_rows(b_rows)
    b_by_key: dict[tuple, list[Row]] = {}
    for row in b_sorted:
        b_by_key.setdefault(pair_key(row), []).append(row)
    pairs: list[tuple[Row, Row]] = []
    only_a: list[Row] = []
    for row in a_sorted:
        partners = b_by_key.get(pair_key(row), [])
        pairs.extend((row, partner) for partner in partners)
        if not partners:
            only_a.append(row)
    a_keys = {pair_key(row) for row in a_sorted}
    only_b = [row for row in b_sorted if pair_key(row) not in a_keys]
    return pairs, only_a, only_b


def latency_ratio(a: Row, b: Row) -> float | None:
    """B's median latency over A's; None where either was not measured (or A's is 0)."""
    if not (is_measured(a) and is_measured(b)) or not a.latency_ms_median:
        return None
    return b.latency_ms_median / a.latency_ms_median


def side_cells(row: Row) -> tuple[str, str, str]:
    """(median ms, GPU busy ms, parity) of one side; its status instead of numbers where it did
    not run to a measurement."""
    if not is_measured(row):
        return row.status, DASH, DASH
    return number(row.latency_ms_median, 2), number(row.gpu_busy_ms, 2), parity_text(row)


def pair_row(a: Row, b: Row) -> str:
    (a_median, a_busy, a_parity), (b_median, b_busy, b_parity) = side_cells(a), side_cells(b)
    ratio = ratio_text(latency_ratio(a, b))
    return markdown_row(
        [
            backend_label(a),
            a.precision,
            a_median,
            b_median,
            ratio,
            a_busy,
            b_busy,
            a_parity,
            b_parity,
        ]
    )


def failure_notes(labelled: Iterable[tuple[str, Row]]) -> list[str]:
    """'- label: status: first line of the error' for each row that was not measured."""
    return [f"- {label}: {failure_text(row)}" for label, row in labelled if not is_measured(row)]


def compare_table_key(row: Row) -> tuple[str, str, str]:
    """Pairs that share one comparison table: variant, shapes and input size (no machine)."""
    return (title_of(row), row.shapes, row.image_hw)


def compare_tables(pairs: Sequence[tuple[Row, Row]], level: int) -> list[str]:
    """One table per compare_table_key of the A rows (pairs already in order), each followed by
    the reasons of the rows that were not measured."""
    groups: dict[tuple, list[tuple[Row, Row]]] = {}
    for a, b in pairs:
        groups.setdefault(compare_table_key(a), []).append((a, b))
    tables_of = collections.Counter(key[0] for key in groups)
    parts = []
    for key, group in groups.items():
        heading = key[0] + (f" ({key[1]} shapes, {key[2]})" if tables_of[key[0]] > 1 else "")
        lines = [f"{'#' * level} {heading}", "", table_subtitle(group[0][0]), ""]
        lines += markdown_header(COMPARE_COLUMNS, COMPARE_TEXT_COLUMNS)
        lines += [pair_row(a, b) for a, b in group]
        labelled = [
            (f"{side} {backend_label(row)} {row.precision}", row)
            for a, b in group
            for side, row in (("A", a), ("B", b))
        ]
        notes = failure_notes(labelled)
        parts.append("\n".join(lines + ([""] + notes if notes else [])))
    return parts


def only_section(side: str, other: str, rows: Sequence[Row], names: dict[str, str]) -> str:
    """The rows of one side with no partner in the other: a table, or a line saying none."""
    lines = [f"### Only in {side}", ""]
    if not rows:
        lines.append(f"None: every row of {side} has a partner in {other}.")
        return "\n".join(lines)
    with_machine = len(machines(rows)) > 1
    columns = (("Machine",) if with_machine else ()) + ONLY_COLUMNS
    lines.append(f"Rows of {side} (`{names[side]}`) with no row of the same identity in {other}:")
    lines += ["", *markdown_header(columns, COMPARE_TEXT_COLUMNS)]
    for row in rows:
        machine = [machine_of(row)] if with_machine else []
        identity = [title_of(row), row.shapes, row.image_hw, backend_label(row), row.precision]
        lines.append(markdown_row([*machine, *identity, *side_cells(row)]))
    labelled = [
        (f"{title_of(row)} {row.shapes} {row.image_hw} {backend_label(row)} {row.precision}", row)
        for row in rows
    ]
    notes = failure_notes(labelled)
    return "\n".join(lines + ([""] + notes if notes else []))


def side_summary(side: str, name: str, rows: Sequence[Row]) -> str:
    """A bullet naming the file and its machine, with machine, software and protocol below."""
    return "\n".join(
        [
            f"- **{side}:** `{name}`: {joined(machines(rows))} ({counted(len(rows), 'row')})",
            f"  - **Machine:** {machine_text(rows)}",
            f"  - **Software:** {software_text(rows)}",
            f"  - **Protocol:** {'; '.join(protocol_texts(rows)) or DASH}",
        ]
    )


def comparison(a_rows: Sequence[Row], b_rows: Sequence[Row], a_name: str, b_name: str) -> str:
    """Markdown comparing two results files: a header per side, one table per variant of the
    paired rows (a section per pair of machines where a side has several), the rows only in A
    and only in B, and a legend."""
    pairs, only_a, only_b = pair_rows(a_rows, b_rows)
    names = {"A": a_name, "B": b_name}
    parts = [
        f"## Comparison: A `{a_name}`, B `{b_name}`",
        side_summary("A", a_name, a_rows) + "\n" + side_summary("B", b_name, b_rows),
        f"Rows paired by identity without the machine ({', '.join(compare_fields())}): "
        f"{counted(len(pairs), 'pair')}; {len(only_a)} only in A, {len(only_b)} only in B.",
    ]
    sections: dict[tuple[str, str], list[tuple[Row, Row]]] = {}
    for a, b in pairs:
        sections.setdefault((machine_of(a), machine_of(b)), []).append((a, b))
    mixed = len(sections) > 1
    for machine_a, machine_b in sorted(sections):
        if mixed:
            parts.append(f"### {machine_a} (A) against {machine_b} (B)")
        parts.extend(compare_tables(sections[machine_a, machine_b], level=4 if mixed else 3))
    if not pairs:
        parts.append("No row of A has a row of the same identity in B.")
    parts.append(only_section("A", "B", only_a, names))
    parts.append(only_section("B", "A", only_b, names))
    parts.append(COMPARE_LEGEND)
    return "\n\n".join(parts) + "\n"
