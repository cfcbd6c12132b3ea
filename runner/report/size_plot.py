"""Latency against input size: takes the rows of one results file, returns a Drawing of its
`shapes=dynamic` rows (repeats merged): one panel per variant, a line per backend and precision
through the median latency at each size measured (image_hw_min, image_hw, image_hw_max), and
the seed's sizes (conf/config.yaml's input at conf/shapes/dynamic.yaml's scales) marked. Rows
that fail parity or were not measured get no line; the Drawing says why.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from pathlib import Path

from runner.report.identity import backend_label, title_of
from runner.report.repeats import merged_rows
from runner.report.rows import PRECISION_ORDER, rank
from runner.report.style import (
    PRECISION_LINE,
    PRECISION_MARKER,
    Drawing,
    Mark,
    backend_colours,
    font,
    left_out_text,
    legend_name,
    new_figure,
    short_labels,
)
from runner.run import record
from runner.run.record import Row

CONF = Path(__file__).resolve().parents[2] / "conf"
COLUMNS = 3  # panels per row of the grid
HEADROOM = 1.3  # the y axis' top over the panel's highest point
TITLE = "Latency against input size (shapes=dynamic)"


def pixels(image_hw: str) -> int | None:
    """Pixels of an "HxW" size; None where it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", image_hw or "")
    return int(match[1]) * int(match[2]) if match else None


@functools.lru_cache
def seed_sizes(conf: Path = CONF) -> dict[str, str]:
    """{"min": "HxW", "opt": ..., "max": ...}: the default input (inputs.height x width) and
    shapes=dynamic's min and max scales of it, rounded as runner.run.inputs rounds them."""
    from omegaconf import OmegaConf

    try:
        inputs = OmegaConf.load(conf / "config.yaml").inputs
        shapes = OmegaConf.load(conf / "shapes" / "dynamic.yaml")
        h, w = int(inputs.height), int(inputs.width)
        scales = {"min": float(shapes.min_scale), "opt": 1.0, "max": float(shapes.max_scale)}
    except Exception as error:
        raise ValueError(
            f"{conf}: cannot read the seed's input sizes (config.yaml inputs.height/width, "
            f"shapes/dynamic.yaml min_scale/max_scale): {type(error).__name__}: {error}"
        ) from error
    return {
        name: f"{max(32, round(h * scale))}x{max(32, round(w * scale))}"
        for name, scale in scales.items()
    }


def size_points(row: Row) -> list[tuple[int, float]]:
    """(pixels, median ms) at each size the row measured, smallest first."""
    sizes = [
        (row.image_hw_min, row.latency_ms_median_min_shape),
        (row.image_hw, row.latency_ms_median),
        (row.image_hw_max, row.latency_ms_median_max_shape),
    ]
    return sorted({(pixels(hw), ms) for hw, ms in sizes if pixels(hw) and ms is not None})


def draw_sizes(rows: Sequence[Row]) -> Drawing | None:
    """The figure, or None where no row has dynamic shapes."""
    dynamic = [row for row in merged_rows(rows) if row.shapes == "dynamic"]
    if not dynamic:
        return None
    labels = list(dict.fromkeys(backend_label(row) for row in dynamic))
    colours = backend_colours(labels)
    shorts, notes = short_labels(labels)
    panels: dict[str, list[Row]] = {}
    for row in dynamic:
        panels.setdefault(title_of(row), []).append(row)
    seed = seed_sizes()
    columns = min(COLUMNS, len(panels))
    grid = math.ceil(len(panels) / columns)
    with font():
        figure = new_figure(height=2.8 * grid + 1.2)
        axes_grid = figure.subplots(grid, columns, squeeze=False, sharex=True)
        drawing = Drawing("latency_vs_size", figure, notes=notes)
        for axes, (title, panel) in zip(axes_grid.flat, panels.items(), strict=False):
            lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
            for row in panel:
                label = backend_label(row)
                if not record.passed(row):
                    reason = "parity FAIL" if record.is_measured(row) else row.status
                    drawing.marks.append(Mark(title, label, row.precision, left_out=reason))
                    continue
                lines.setdefault((label, row.precision), []).extend(size_points(row))
            for (label, precision), points in lines.items():
                points = sorted(set(points))
                xs, ys = [p / 1e6 for p, _ in points], [ms for _, ms in points]
                axes.plot(
                    xs,
                    ys,
                    color=colours[label],
                    linestyle=PRECISION_LINE.get(precision, ":"),
                    marker=PRECISION_MARKER.get(precision, "s"),
                    markersize=4,
                )
                for x, y in zip(xs, ys, strict=True):
                    drawing.marks.append(Mark(title, label, precision, x, y))
            for name, hw in seed.items():
                x = pixels(hw) / 1e6
                axes.axvline(x, color="grey", linewidth=0.8, linestyle=":")
                axes.annotate(
                    hw, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", rotation=90, va="top", fontsize=6.5,
                    color="grey",
                )  # fmt: skip
                drawing.lines.append((title, f"seed {name} {hw}", x))
            axes.set_title(title)
            peak = max((m.y for m in drawing.drawn if m.panel == title), default=None)
            if peak:  # room above the highest point for the seed sizes' names
                axes.set_ylim(0, peak * HEADROOM)
            else:
                axes.set_ylim(bottom=0)
            axes.grid(linewidth=0.4, alpha=0.5)
        for axes in axes_grid.flat[len(panels) :]:
            axes.set_visible(False)
        for axes in axes_grid[:, 0]:
            axes.set_ylabel("median latency per call (ms)")
        footer = [text for text in (left_out_text(drawing.marks, shorts), *notes) if text]
        figure.supxlabel(
            "\n".join(["input size (megapixels; dotted: the seed's sizes, H x W)", *footer]),
            fontsize=8,
        )
        figure.suptitle(TITLE, fontsize=10)
        legend(figure, labels, colours, shorts, drawing)
    return drawing


def legend(figure, labels, colours, shorts, drawing: Drawing) -> None:
    from matplotlib.lines import Line2D

    precisions = sorted(
        {m.precision for m in drawing.drawn}, key=lambda p: rank(p, PRECISION_ORDER)
    )
    handles = [
        Line2D([], [], color=colours[label], label=legend_name(label, shorts[label]))
        for label in labels
        if any(m.backend == label for m in drawing.drawn)
    ] + [
        Line2D(
            [], [], color="grey", linestyle=PRECISION_LINE.get(p, ":"),
            marker=PRECISION_MARKER.get(p, "s"), markersize=4, label=p,
        )
        for p in precisions
    ]  # fmt: skip
    figure.legend(handles=handles, loc="outside right upper", frameon=False)
