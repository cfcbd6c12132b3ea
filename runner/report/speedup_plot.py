"""The speed-up figure: takes the rows of one results file (one per repeat) and the targets,
returns a Drawing: one small panel per variant (per table where a variant has several; a
variant's dynamic-shape rows are left out, and named under the figure, where it has
static-shape ones) in a grid, all on one speed-up axis; in each, a bar per backend and precision
(fp32 and fp16 side by side) at its paired speed-up over eager with the 95% bootstrap interval
as error bar, a line at 1x and one at each precision's target. A slot without a bar says why:
parity failed, unsupported, error, or no eager row of its session to pair with. The legend
takes the grid's last free slot, or a row under it; under all, the footnotes: the exact options
behind each short label ("SG+Inductor") and what was left out.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy

from runner.report.identity import (
    backend_label,
    identity_of,
    is_baseline,
    table_key,
)
from runner.report.markdown import ratio_text
from runner.report.performance import Targets
from runner.report.repeats import merged_rows, speed_ups
from runner.report.rows import PRECISION_ORDER, panel_titles, rank
from runner.report.style import (
    LEFT_OUT_COLOUR,
    PARITY_COLOUR,
    PRECISION_HATCH,
    TARGET_LINE,
    Drawing,
    Mark,
    backend_colours,
    dynamic_note,
    font,
    footer,
    footer_height,
    in_order,
    legend_name,
    new_figure,
    short_labels,
    static_first,
    tick_label,
)
from runner.run import record
from runner.run.record import Row

COLUMNS = 4  # panels per row of the grid
TITLE_WIDTH = 34  # characters of a panel's title per line: a longer one wraps
TITLE = "Speed-up over eager at the same precision"


def why_left_out(row: Row) -> str:
    """Why a row that has no speed-up gets no bar."""
    if not record.is_measured(row):
        return row.status  # unsupported | error
    if not record.passed(row):
        f1 = f" (F1 {row.parity_match_f1:.2f})" if row.parity_match_f1 is not None else ""
        return f"parity FAIL{f1}"
    return "no eager row in its session"


def draw_speedup(rows: Sequence[Row], targets: Targets | None = None) -> Drawing | None:
    """The figure, or None where no row of another backend than eager exists. A variant's
    shapes=dynamic rows are left out where it has static-shape rows (style.static_first): they
    are the size figure's, and a second panel per variant would crowd the grid."""
    headings = panel_titles(rows)  # the tables', dynamic ones' included
    rows, dynamic = static_first(rows)
    merged = [row for row in merged_rows(rows) if not is_baseline(row)]
    if not merged:
        return None
    titles = panel_titles(rows)
    panels: dict[str, list[Row]] = {}
    for row in merged:
        panels.setdefault(titles[table_key(row)], []).append(row)
    precisions = sorted({r.precision for r in merged}, key=lambda p: rank(p, PRECISION_ORDER))
    labels = in_order(backend_label(row) for row in merged)
    colours = backend_colours(labels)
    shorts, notes = short_labels(labels)
    moved = [row for row in merged_rows(dynamic) if not is_baseline(row)]
    notes = [*notes, dynamic_note(moved)] if moved else notes
    grid = math.ceil(len(panels) / COLUMNS)  # panels keep their width however many there are
    spare = grid * COLUMNS > len(panels)  # the legend goes in the grid's last free slot
    with font():
        handles = legend_handles(labels, colours, shorts, precisions, bool(targets))
        ncols = min(len(handles), 4)
        bottom = footer_height(0 if spare else math.ceil(len(handles) / ncols), len(notes))
        figure = new_figure(height=2.3 * grid + 0.5 + bottom)
        layout = figure.add_gridspec(
            grid + bool(bottom), COLUMNS, height_ratios=[1.7] * grid + ([bottom] if bottom else [])
        )
        axes_grid = numpy.empty((grid, COLUMNS), dtype=object)
        for i, j in numpy.ndindex(grid, COLUMNS):
            axes_grid[i, j] = figure.add_subplot(layout[i, j], sharey=axes_grid.flat[0])
        drawing = Drawing("speedup", figure, notes=notes)
        drawing.marks += [
            Mark(headings[table_key(r)], backend_label(r), r.precision, left_out="shapes=dynamic")
            for r in moved
        ]
        found = speed_ups(rows)
        top = 1.0
        for axes, (title, panel) in zip(axes_grid.flat, panels.items(), strict=False):
            panel_labels = in_order(backend_label(row) for row in panel)
            by_slot = {(backend_label(r), r.precision): r for r in panel}
            width = 0.8 / len(precisions)
            for i, label in enumerate(panel_labels):
                for j, precision in enumerate(precisions):
                    row = by_slot.get((label, precision))
                    if row is None:
                        continue
                    x = i + (j - (len(precisions) - 1) / 2) * width
                    paired = found.get(identity_of(row))
                    if paired is None:
                        reason = why_left_out(row)
                        drawing.marks.append(Mark(title, label, precision, x=x, left_out=reason))
                        mark_left_out(axes, x, reason)
                        continue
                    bar = Mark(title, label, precision, x, paired.ratio, paired.low, paired.high)
                    drawing.marks.append(bar)
                    top = max(top, draw_bar(axes, bar, width, colours, len(panel_labels) <= 3))
            variant = panel[0].variant or panel[0].model
            needed = {p: targets.needed(p, variant) if targets else None for p in precisions}
            top = max([top, *(n for n in needed.values() if n is not None)])
            drawing.lines += reference_lines(axes, title, needed)
            axes.set_title(textwrap.fill(title, TITLE_WIDTH), fontsize=9)
            ticks = [tick_label(shorts[label]) for label in panel_labels]
            axes.set_xticks(range(len(panel_labels)), ticks)
            axes.set_xlim(-0.6, len(panel_labels) - 0.4)
            axes.grid(axis="y", linewidth=0.4, alpha=0.5)
            axes.set_axisbelow(True)
        for axes in axes_grid.flat[len(panels) :]:
            axes.set_visible(False)
        axes_grid[0][0].set_ylim(0, top * 1.15)
        for axes in axes_grid[:, 0]:
            axes.set_ylabel("speed-up (x)")
        for axes in axes_grid[:, 1:].flat:
            axes.tick_params(labelleft=False)
        if spare:
            axes_grid.flat[-1].set_visible(True)
            axes_grid.flat[-1].axis("off")
            axes_grid.flat[-1].legend(handles=handles, loc="center", frameon=False)
            handles = []
        if bottom:
            footer(figure, layout[grid, :], handles, ncols, notes)
        figure.suptitle(
            f"{TITLE}: paired repeats' median ratio, 95% interval; "
            "bars only for answers that pass parity",
            fontsize=10,
        )
    return drawing


def draw_bar(axes, bar: Mark, width: float, colours: dict[str, str], annotate: bool) -> float:
    """One bar with its interval as error bar (where it has one), its value above where
    `annotate`. Returns its top."""
    error = None if bar.low is None else [[bar.y - bar.low], [bar.high - bar.y]]
    axes.bar(
        bar.x,
        bar.y,
        width * 0.92,
        yerr=error,
        capsize=2,
        color=colours[bar.backend],
        hatch=PRECISION_HATCH.get(bar.precision, ""),
        edgecolor="white",
        linewidth=0,
        error_kw={"elinewidth": 1, "ecolor": "black"},
    )
    peak = bar.y if bar.high is None else bar.high
    if annotate:
        axes.annotate(
            ratio_text(bar.y, decimals=1),
            (bar.x, peak),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    return peak


def mark_left_out(axes, x: float, reason: str) -> None:
    """The mark in a slot without a bar, saying why."""
    if reason.startswith("parity"):
        text, colour = "✗ parity", PARITY_COLOUR
    else:
        text, colour = ("no pair" if reason.startswith("no eager") else reason), LEFT_OUT_COLOUR
    axes.text(
        x,
        0.03,
        text,
        transform=axes.get_xaxis_transform(),
        ha="center",
        va="bottom",
        fontsize=6.5,
        color=colour,
        rotation=90,
    )


def reference_lines(axes, title: str, needed: dict[str, float | None]) -> list:
    """The line at 1x and one at each precision's target. Returns them as (panel, what, y)."""
    axes.axhline(1.0, color="black", linewidth=0.8)
    lines = [(title, "eager 1x", 1.0)]
    for precision, value in needed.items():
        if value is not None:
            axes.axhline(
                value, color="black", linewidth=1, linestyle=TARGET_LINE.get(precision, ":")
            )
            lines.append((title, f"target {precision}", value))
    return lines


def legend_handles(labels, colours, shorts, precisions, with_targets: bool) -> list:
    """The legend's entries: backend colours, precision hatches, the lines."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colours[label], label=legend_name(label, shorts[label])) for label in labels
    ]
    handles += [
        Patch(facecolor="white", edgecolor="grey", hatch=PRECISION_HATCH.get(p, ""), label=p)
        for p in precisions
    ]
    handles.append(Line2D([], [], color="black", linewidth=0.8, label="eager (1x)"))
    if with_targets:
        handles += [
            Line2D([], [], color="black", linestyle=TARGET_LINE.get(p, ":"), label=f"target {p}")
            for p in precisions
        ]
    return handles
