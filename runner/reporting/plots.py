"""Plots: takes the rows of one results file, writes PNG figures: speed-up over eager, and
latency against image size for dynamic-shape rows."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from runner import record
from runner.record import Row
from runner.reporting.identity import (
    REFERENCE_BACKEND,
    backend_label,
    identity_of,
    table_key,
)
from runner.reporting.repeats import SpeedUp, merged_rows, speed_ups
from runner.reporting.rows import PRECISION_ORDER, machines, rank, table_headings

log = logging.getLogger(__name__)


def pixels(image_hw: str) -> int | None:
    """Pixels of an "HxW" size; None where it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", image_hw or "")
    return int(match[1]) * int(match[2]) if match else None


def save_figure(figure, path: Path) -> None:
    """Save as PNG so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    record.write_atomic(path, buffer.getvalue())


def new_figure(width: float, height: float):
    """A figure drawn by Agg, without pyplot's global state (matplotlib imported here only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_labels(rows: Sequence[Row]) -> dict[tuple, str]:
    """A label per table_key: its heading, and the machine where rows come from several."""
    mixed = len(machines(rows)) > 1
    return {
        key: f"{heading} ({key[0]})" if mixed else heading
        for key, heading in table_headings(rows).items()
    }


def speedup_bars(rows: Sequence[Row]) -> dict[str, dict[str, SpeedUp]]:
    """{"variant / backend": {precision: speed-up}} for rows of non-eager backends that were
    measured and pass parity (a fast wrong answer gets no bar)."""
    labels = plot_labels(rows)
    found = speed_ups(rows)
    bars: dict[str, dict[str, float]] = {}
    for row in merged_rows(rows):
        paired = found.get(identity_of(row))
        if row.backend != REFERENCE_BACKEND and paired is not None and record.passed(row):
            bars.setdefault(f"{labels[table_key(row)]} / {backend_label(row)}", {})[
                row.precision
            ] = paired
    return bars


def plot_speedup(rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars: per variant and backend, one bar per precision. False where none exist."""
    bars = speedup_bars(rows)
    if not bars:
        log.info("no speed-up over eager to plot; %s not written", path)
        return False
    precisions = sorted(
        {p for group in bars.values() for p in group}, key=lambda p: rank(p, PRECISION_ORDER)
    )
    width = 0.8 / len(precisions)
    figure = new_figure(max(6.0, 1.1 * len(bars)), 4.5)
    axes = figure.add_subplot()
    for i, precision in enumerate(precisions):
        offset = (i - (len(precisions) - 1) / 2) * width
        slots = [
            (n, group[precision]) for n, group in enumerate(bars.values()) if precision in group
        ]
        errors = [
            [v.ratio - v.low if v.low is not None else 0.0 for _, v in slots],
            [v.high - v.ratio if v.high is not None else 0.0 for _, v in slots],
        ]
        axes.bar(
            [n + offset for n, _ in slots],
            [value.ratio for _, value in slots],
            width,
            yerr=errors,
            capsize=2,
            label=precision,
            color=f"C{i}",
        )
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="eager")
    ticks = [label.replace(" / ", "\n") for label in bars]
    axes.set_xticks(range(len(bars)), ticks, fontsize=7, rotation=30, ha="right")
    axes.set_ylabel("speed-up over eager (median latency ratio)")
    axes.set_title(
        "Speed-up over eager at the same precision (runs that pass parity; 95% interval)"
    )
    axes.legend(title="precision")
    save_figure(figure, path)
    return True


def latency_lines(rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """{"variant backend precision": [(pixels, median ms), ...]} for dynamic rows that pass
    parity (a wrong answer gets no line)."""
    labels = plot_labels(rows)
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in merged_rows(rows):
        if row.shapes != "dynamic" or not record.passed(row):
            continue
        sizes = [
            (row.image_hw_min, row.latency_ms_median_min_shape),
            (row.image_hw, row.latency_ms_median),
            (row.image_hw_max, row.latency_ms_median_max_shape),
        ]
        points = [(pixels(hw), ms) for hw, ms in sizes if pixels(hw) and ms is not None]
        if points:
            lines[f"{labels[table_key(row)]} {backend_label(row)} {row.precision}"] = sorted(points)
    return lines


def plot_latency_vs_size(rows: Sequence[Row], path: Path) -> bool:
    """Median latency against image pixels, one line per variant, backend and precision."""
    lines = latency_lines(rows)
    if not lines:
        log.info("no dynamic-shape rows; %s not written", path)
        return False
    figure = new_figure(7.0, 4.5)
    axes = figure.add_subplot()
    for label, points in lines.items():
        axes.plot([p / 1e6 for p, _ in points], [ms for _, ms in points], marker="o", label=label)
    axes.set_xlabel("image size (megapixels, h x w)")
    axes.set_ylabel("median latency per call (ms)")
    axes.set_title("Latency against input size (dynamic shapes)")
    axes.legend(fontsize=7)
    save_figure(figure, path)
    return True


def plot(rows: Sequence[Row], folder: str | Path) -> list[Path]:
    """Write speedup.png and latency_vs_size.png (where there is something to draw) in `folder`.
    Returns the paths written."""
    folder = Path(folder)
    written = []
    for name, draw in (
        ("speedup.png", plot_speedup),
        ("latency_vs_size.png", plot_latency_vs_size),
    ):
        if draw(rows, folder / name):
            written.append(folder / name)
    return written
