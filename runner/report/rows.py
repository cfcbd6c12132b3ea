"""Rows: reads result.csv files and merged results CSVs, drops identical copies, checks that the
rows come from one machine, and puts them in the seed's order.

Takes paths; returns Rows (runner.run.record parses each file, so the CSV format lives in one
place) and, for the steps that work on the whole set, a pandas table of them (`frame`). Writes
the merged results CSV.
"""

from __future__ import annotations

import collections
import csv
import functools
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from runner.report.identity import (
    REFERENCE_BACKEND,
    SETUP_FIELDS,
    backend_label,
    describe,
    identity_of,
    machine_of,
    table_key,
    title_of,
)
from runner.report.markdown import DASH
from runner.run import record
from runner.run.record import Row

log = logging.getLogger(__name__)

SEED_SWEEP = Path(__file__).resolve().parents[2] / "conf" / "sweep" / "seed.yaml"
PRECISION_ORDER = ("fp32", "fp32_strict", "fp16", "bf16")
SHAPES_ORDER = ("static", "dynamic")


# ---- collect ------------------------------------------------------------------------------


def collect(paths: Iterable[str | Path]) -> tuple[list[Row], list[tuple[str, str]]]:
    """Rows of every result.csv under the folders (recursively) and of the CSV files given.

    Returns (rows, skipped): a file that cannot be read as rows of this version's columns is
    skipped, and (its path, a one-line reason) is logged and returned.
    """
    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    for path in result_files(paths):
        try:
            found = record.read_rows(path)
        except (OSError, ValueError, csv.Error) as error:
            reason = one_line_reason(path, error)
            log.warning("skipped %s: %s", path, reason)
            skipped.append((str(path), reason))
            continue
        log.debug("read %d rows from %s", len(found), path)
        rows.extend(found)
    return rows, skipped


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: result.csv under each folder, each other path as given, each once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        found = sorted(path.rglob("result.csv")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            log.warning("no result.csv under %s (name merged results CSVs as files)", path)
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def one_line_reason(path: Path, error: Exception) -> str:
    """The error's first line, without the path that the report already names."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.removeprefix(f"{path}:").strip()
    return re.sub(r"^(\d+): ", r"line \1: ", text)


# ---- the rows as one table ----------------------------------------------------------------


def frame(rows: Iterable[Row]) -> pd.DataFrame:
    """The rows as a pandas table, in their order: one column per Row field (values as the Row
    holds them: None stays None), `machine`, `identity` (identity_of), and `row`, the Row."""
    rows = list(rows)
    table = pd.DataFrame(
        [[getattr(row, name) for name in record.COLUMNS] for row in rows],
        columns=record.COLUMNS,
        dtype=object,
    )
    table["machine"] = [machine_of(row) for row in rows]
    table["identity"] = pd.Series([identity_of(row) for row in rows], dtype=object)
    table["row"] = pd.Series(rows, dtype=object)
    return table


def drop_duplicates(rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
    """Drop copies: a row equal in every column to one already seen (the same file read twice,
    or a results CSV next to the run folders it came from). Rows that differ anywhere are kept:
    two measurements of one identity are repeats, shown as spread. Returns (kept, dropped)."""
    table = frame(rows)
    copies = table.duplicated(subset=record.COLUMNS, keep="first")
    for row in table.loc[copies, "row"]:
        log.info("copy of %s from %s dropped", describe(row), row.output_dir or "(no dir)")
    return table.loc[~copies, "row"].tolist(), table.loc[copies, "row"].tolist()


# ---- machines -----------------------------------------------------------------------------


class MixedMachines(ValueError):
    """Rows from more than one machine, where one was expected."""


def machines(rows: Iterable[Row]) -> list[str]:
    return sorted({machine_of(row) for row in rows})


def require_one_machine(rows: Sequence[Row], allow_mixed: bool = False) -> None:
    """Raise MixedMachines naming the machines, unless there is one or mixing is allowed."""
    names = machines(rows)
    if len(names) > 1 and not allow_mixed:
        raise MixedMachines(
            f"rows come from {len(names)} machines: {', '.join(map(repr, names))}; "
            "report each machine on its own, or pass --allow-mixed-gpus for one section each"
        )


# ---- order --------------------------------------------------------------------------------


class SeedOrderError(ValueError):
    """The seed sweep file, which gives the variants their order, cannot be read."""


@functools.lru_cache
def seed_variant_order(sweep: Path = SEED_SWEEP) -> tuple[str, ...]:
    """The variant names of the seed sweep (hydra.sweeper.variants), in the file's order."""
    try:
        from omegaconf import OmegaConf

        return tuple(OmegaConf.load(sweep).hydra.sweeper.variants.keys())
    except Exception as error:  # missing, unparsable or reshaped: one message for all
        raise SeedOrderError(
            f"{sweep}: cannot read the seed's variants (hydra.sweeper.variants), which order "
            f"the report's tables: {type(error).__name__}: {error}"
        ) from error


def rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    """Position in `order`; values outside it after, alphabetically."""
    return (order.index(value), "") if value in order else (len(order), value)


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Seed variant order (others after, by name), then precision, then backend (eager first)."""
    variants = seed_variant_order()

    def order(row: Row) -> tuple:
        return (
            rank(row.variant, variants),
            title_of(row),
            rank(row.shapes, SHAPES_ORDER),
            row.image_hw,
            rank(row.precision, PRECISION_ORDER),
            rank(backend_label(row), (REFERENCE_BACKEND,)),
            machine_of(row),
        )

    return sorted(rows, key=order)


def write(rows: Iterable[Row], out: str | Path) -> list[Row]:
    """Write the rows, sorted, to `out` atomically. Returns them in that order."""
    ordered = sort_rows(rows)
    record.write_rows(Path(out), ordered)
    return ordered


def table_headings(rows: Iterable[Row]) -> dict[tuple, str]:
    """A heading per table_key, in table order: the variant's title, with its shapes and input
    size where one variant has several tables on one machine, and the setup fields that differ
    between them."""
    keys = list(dict.fromkeys(table_key(row) for row in sort_rows(rows)))
    tables_of = collections.Counter(key[:2] for key in keys)
    headings = {}
    for key in keys:
        heading = key[1]
        if tables_of[key[:2]] > 1:
            siblings = [other[4] for other in keys if other[:2] == key[:2]]
            differ = [
                f"{name} {DASH if key[4][i] in ('', None) else key[4][i]}"
                for i, name in enumerate(SETUP_FIELDS)
                if len({setup[i] for setup in siblings}) > 1
            ]
            heading += f" ({', '.join([f'{key[2]} shapes', key[3], *differ])})"
        headings[key] = heading
    return headings


def panel_titles(rows: Iterable[Row]) -> dict[tuple, str]:
    """A figure panel's title per table_key: its table's heading, and the machine where the
    rows come from several."""
    mixed = len(machines(rows := list(rows))) > 1
    return {
        key: f"{heading} ({key[0]})" if mixed else heading
        for key, heading in table_headings(rows).items()
    }
