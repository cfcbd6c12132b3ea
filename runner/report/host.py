"""Host speed: takes the rows of one machine (one per repeat), returns a Markdown section that
sets each identity's block medians against the host probe measured around the same blocks
(`host_probe_ms`, runner.run.timing.host_probe), or "" where no row has a probe.

Why: eager block medians on the H200 machine jump between levels ~1.5x apart inside one process
while the GPU's own time stays put. If a block's latency follows the probe (a fixed piece of
pure-Python work), the host's CPU ran slower then, and no protocol inside the process removes
that; a row whose latency does not follow it (a replayed graph) is bound by the GPU instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runner.report.identity import backend_label
from runner.report.markdown import DASH, markdown_header, markdown_row
from runner.report.rows import frame, sort_rows
from runner.run.record import Row, is_measured

MIN_BLOCKS = 5  # fewer blocks give no correlation
# a block ran on the fast host when its probe is at most this times the lowest probe of the
# rows shown: on the H200 machine probes sit at ~0.35-0.40 ms (fast) or ~0.6-0.85 ms (slow)
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


def _range(values: Sequence[float], decimals: int) -> str:
    return f"{min(values):.{decimals}f}–{max(values):.{decimals}f}"


def section(rows: Sequence[Row], level: int = 3) -> str:
    table = frame([r for r in rows if is_measured(r) and r.host_probe_ms is not None])
    if table.empty:
        return ""
    cut = fast_cut([float(v) for v in table["host_probe_ms"]])
    lines = [f"{'#' * level} Host speed", "", *markdown_header(COLUMNS, TEXT_COLUMNS)]
    groups = {key: group for key, group in table.groupby("identity", sort=False)}
    for row in sort_rows(group["row"].iloc[0] for group in groups.values()):
        group = next(g for g in groups.values() if g["row"].iloc[0] is row)
        latency = [float(v) for v in group["latency_ms_median"]]
        probes = [float(v) for v in group["host_probe_ms"]]
        r = correlation(latency, probes)
        lines.append(
            markdown_row(
                [
                    row.variant or row.model,
                    row.precision,
                    backend_label(row),
                    str(len(latency)),
                    _range(probes, 3),
                    _range(latency, 2),
                    DASH if r is None else f"{r:+.2f}",
                    f"{fast_host_median(latency, probes, cut):.2f}",
                ]
            )
        )
    return "\n".join([*lines, "", LEGEND])
