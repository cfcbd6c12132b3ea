"""Host speed: takes the rows of one machine (one per repeat), returns a Markdown section that
sets each identity's block medians against the host probe measured around the same blocks
(`host_probe_ms`, runner.run.timing.host_probe), or "" where no row has a probe.

Why: eager block medians on the H200 machine jump between levels ~1.5x apart inside one process
while the GPU's own time stays put (results/h200_protocol_c.csv to _j.csv). If a block's
latency follows the probe (a fixed piece of pure-Python work), the host's CPU ran slower then,
and no protocol inside the process removes that; a row whose latency does not follow it (a
replayed graph) is bound by the GPU instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from runner.report.identity import backend_label, identity_of
from runner.report.markdown import DASH, markdown_header, markdown_row
from runner.report.rows import sort_rows
from runner.run.record import Row, is_measured

MIN_BLOCKS = 5  # fewer blocks give no correlation
# a block ran on the fast host when its probe is at most this times the lowest probe of the
# rows shown: on the H200 machine probes sit at ~0.35-0.40 ms (fast) or ~0.6-0.85 ms (slow)
# (results/h200_protocol_g.csv to _j.csv)
FAST_FACTOR = 1.25
COLUMNS = [
    "Variant",
    "Precision",
    "Backend",
    "Blocks",
    "Probe (ms)",
    "Block median (ms)",
    "r",
    "Fast-host median (ms)",
]
TEXT_COLUMNS = {"Variant", "Precision", "Backend"}
LEGEND = """\
**Probe**: the lowest and highest host probe of the blocks: milliseconds of one fixed piece of
pure-Python work, timed around each block (higher: the host's CPU ran slower then). **Block
median**: the lowest and highest block median. **r**: Pearson correlation of block medians with
probes (near 1: the row's latency follows the host's speed). **Fast-host median**: the median
over the blocks whose probe is at most 1.25x the lowest probe of the rows shown: the blocks
measured while the host ran at its fast level."""


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r of two equally long series; None where either does not vary or is too short."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or len(x) < MIN_BLOCKS or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def fast_host_median(latencies: Sequence[float], probes: Sequence[float], cut: float) -> float:
    """Median latency over the blocks whose probe is at most `cut` (all blocks where none is)."""
    chosen = [lat for lat, probe in zip(latencies, probes, strict=True) if probe <= cut]
    return float(np.median(chosen or list(latencies)))


def fast_cut(probes: Sequence[float]) -> float:
    """The probe at or below which a block counts as measured on the fast host."""
    return min(probes) * FAST_FACTOR


@dataclass
class Blocks:
    """The probed blocks of one identity: its first row, and each block's median and probe."""

    row: Row
    latency: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)


def probed_blocks(rows: Iterable[Row]) -> tuple[dict[tuple, Blocks], float | None]:
    """Measured rows that carry a probe, by identity (first-seen order), and the fast-host cut
    over all of them (None where no row has a probe)."""
    found: dict[tuple, Blocks] = {}
    for row in rows:
        if is_measured(row) and row.host_probe_ms is not None:
            blocks = found.setdefault(identity_of(row), Blocks(row))
            blocks.latency.append(row.latency_ms_median)
            blocks.probes.append(row.host_probe_ms)
    probes = [p for blocks in found.values() for p in blocks.probes]
    return found, fast_cut(probes) if probes else None


def fast_host_medians(rows: Iterable[Row]) -> dict[tuple, float]:
    """identity_of -> the fast-host median of its probed blocks (see LEGEND)."""
    found, cut = probed_blocks(rows)
    return {key: fast_host_median(b.latency, b.probes, cut) for key, b in found.items()}


def _range(values: Sequence[float], decimals: int) -> str:
    return f"{min(values):.{decimals}f}–{max(values):.{decimals}f}"


def section(rows: Sequence[Row], level: int = 3) -> str:
    found, cut = probed_blocks(rows)
    if not found:
        return ""
    lines = [f"{'#' * level} Host speed", "", *markdown_header(COLUMNS, TEXT_COLUMNS)]
    for row in sort_rows(blocks.row for blocks in found.values()):
        blocks = found[identity_of(row)]
        r = correlation(blocks.latency, blocks.probes)
        lines.append(
            markdown_row(
                [
                    row.variant or row.model,
                    row.precision,
                    backend_label(row),
                    str(len(blocks.latency)),
                    _range(blocks.probes, 3),
                    _range(blocks.latency, 2),
                    DASH if r is None else f"{r:+.2f}",
                    f"{fast_host_median(blocks.latency, blocks.probes, cut):.2f}",
                ]
            )
        )
    return "\n".join([*lines, "", LEGEND])
