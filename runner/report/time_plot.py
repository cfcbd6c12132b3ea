"""The "where the time goes" figure: takes the rows of one results file, returns a Drawing with
one point per variant, backend and precision at (GPU busy ms, median latency ms), repeats
merged, and the diagonal latency = GPU busy: the floor, where the GPU never waits for the host.
A point's height above the diagonal is host time. One panel per precision, as wide as the
figure allows; each variant named once, at its eager point, where the name covers no other name
or point; legend and footnotes under the panels. Rows that fail parity, were not measured, or
have no GPU busy figure get no point, nor do a variant's dynamic-shape rows where it has static
ones; the Drawing and the footnotes say why.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from runner.report import style
from runner.report.identity import REFERENCE_BACKEND, backend_label, table_key
from runner.report.repeats import merged_rows
from runner.report.rows import PRECISION_ORDER, panel_titles, rank
from runner.run import record
from runner.run.record import Row

TITLE = "Where the time goes: median latency against the GPU's own time per call"


def why_no_point(row: Row) -> str:
    if not record.is_measured(row):
        return row.status
    if not record.passed(row):
        return "parity FAIL"
    return "no GPU busy figure" if not row.gpu_busy_ms else ""


def draw_time(rows: Sequence[Row]) -> style.Drawing | None:
    """The figure, or None where no row has both a median and a GPU busy time. A variant's
    shapes=dynamic rows are left out where it has static-shape rows (style.static_first)."""
    headings = panel_titles(rows)  # the tables', dynamic ones' included
    rows, dynamic = style.static_first(rows)
    merged = merged_rows(rows)
    titles = panel_titles(rows)
    labels = style.in_order(backend_label(row) for row in merged)
    colours = style.backend_colours(labels)
    shorts, notes = style.short_labels(labels)
    marks = []
    for row in merged:
        title, label = titles[table_key(row)], backend_label(row)
        reason = why_no_point(row)
        if reason:
            marks.append(style.Mark(title, label, row.precision, left_out=reason))
        else:
            marks.append(
                style.Mark(title, label, row.precision, row.gpu_busy_ms, row.latency_ms_median)
            )
    points = [mark for mark in marks if not mark.left_out]
    if not points:
        return None
    moved = merged_rows(dynamic)
    marks += [
        style.Mark(headings[table_key(r)], backend_label(r), r.precision, left_out="shapes=dynamic")
        for r in moved
    ]
    precisions = sorted({m.precision for m in points}, key=lambda p: rank(p, PRECISION_ORDER))
    low = min(min(m.x, m.y) for m in points) / 1.3
    high = max(max(m.x, m.y) for m in points) * 1.3
    shown = [label for label in labels if any(m.backend == label for m in points)]
    handles = legend_handles(shown, colours, shorts, precisions)
    ncols = min(len(handles), 4)
    left_out = style.left_out_text([m for m in marks if m.left_out != "shapes=dynamic"], shorts)
    footnotes = [
        textwrap.fill(text, 150) for text in (left_out, *notes, style.dynamic_note(moved)) if text
    ]
    with style.font():
        bottom = style.footer_height(math.ceil(len(handles) / ncols), sum(
            text.count("\n") + 1 for text in footnotes
        ))  # fmt: skip
        figure = style.new_figure(height=4.6 + bottom)
        layout = figure.add_gridspec(2, len(precisions), height_ratios=[3.6, bottom])
        panels = [figure.add_subplot(layout[0, 0])]
        panels += [
            figure.add_subplot(layout[0, i], sharex=panels[0], sharey=panels[0])
            for i in range(1, len(precisions))
        ]
        drawing = style.Drawing("where_time_goes", figure, marks, notes=[n for n in footnotes])
        for axes, precision in zip(panels, precisions, strict=True):
            draw_panel(axes, [m for m in points if m.precision == precision], colours, low, high)
            if len(precisions) > 1:
                axes.set_title(precision)
            axes.set_xlabel("GPU busy per call (ms): kernels and copies, from the profiler")
            drawing.lines.append((precision, "latency = GPU busy", 1.0))
        panels[0].set_ylabel("median latency per call (ms)")
        for axes in panels[1:]:
            axes.tick_params(labelleft=False)
        style.footer(figure, layout[1, :], handles, ncols, footnotes)
        only = f" ({precisions[0]})" if len(precisions) == 1 else ""
        figure.suptitle(TITLE + only, fontsize=10)
        figure.draw_without_rendering()  # the layout is final: place the names where they fit
        for axes, precision in zip(panels, precisions, strict=True):
            names = name_variants(axes, [m for m in points if m.precision == precision])
            drawing.names[precision] = [text.get_text() for text in names]
    return drawing


def draw_panel(
    axes, points: list[style.Mark], colours: dict[str, str], low: float, high: float
) -> None:
    """One precision: the diagonal, each point, and a line from each variant's eager point to
    its other backends' points."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.plot([low, high], [low, high], color=style.FLOOR_COLOUR, linewidth=1)
    axes.fill_between([low, high], [low, high], low, color="#eeeeee", zorder=0)
    axes.text(
        high / 1.1,
        low * 1.15,
        "diagonal: latency = GPU busy,\nthe floor (the GPU never waits)",
        ha="right",
        va="bottom",
        fontsize=7.5,
    )
    eager = {m.panel: m for m in points if m.backend == REFERENCE_BACKEND}
    for mark in points:
        start = eager.get(mark.panel)
        if start is not None and start is not mark:
            axes.plot(
                [start.x, mark.x], [start.y, mark.y], color=colours[mark.backend],
                linewidth=0.8, alpha=0.5, zorder=2,
            )  # fmt: skip
        axes.scatter(
            mark.x,
            mark.y,
            s=30,
            color=colours[mark.backend],
            marker=style.PRECISION_MARKER.get(mark.precision, "s"),
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
        )
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.grid(linewidth=0.4, alpha=0.5)


# where a name may go around its point, nearest first: (dx, dy) in pixels at distance 1
AROUND = ((-1, 0), (1, 0), (0, 1), (0, -1), (-1, 1), (1, 1), (-1, -1), (1, -1))
DISTANCES = (5, 12, 20, 30, 42, 56, 72, 90)
NAME_STYLE = {"fontsize": 7, "color": "#333333", "zorder": 4}
LEADER = {"arrowstyle": "-", "color": "#999999", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}


def name_variants(axes, points: list[style.Mark]) -> list:
    """Each variant's name at its eager point (or its first point where eager has none), put
    where it covers no other name, point or the axes' edge: next to the point if it can, else
    further out with a thin line to it. Run after the layout is final (the names are left out
    of it). Returns the names' Text."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = axes.figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    taken = [text.get_window_extent(renderer) for text in axes.texts]
    for x, y in axes.transData.transform([(m.x, m.y) for m in points]):
        taken.append(Bbox.from_bounds(x - 4, y - 4, 8, 8))
    named: dict[str, style.Mark] = {}
    for mark in points:
        if mark.panel not in named or mark.backend == REFERENCE_BACKEND:
            named[mark.panel] = mark
    names = []
    for mark in sorted(named.values(), key=lambda m: (-m.y, m.x)):
        text = place_name(axes, mark, taken, frame, renderer)
        taken.append(Text.get_window_extent(text, renderer))
        names.append(text)
    return names


def place_name(axes, mark: style.Mark, taken: list, frame, renderer):
    """The name at the nearest place around the point where it lies inside the axes and covers
    nothing in `taken`; next to the point where no place is free."""
    from matplotlib.text import Text

    for distance in DISTANCES:
        for dx, dy in AROUND:
            text = name_at(axes, mark, dx * distance, dy * distance * 0.6, distance > 5)
            box = Text.get_window_extent(text, renderer)  # the name alone, not its line
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in taken):
                return text
            text.remove()
    return name_at(axes, mark, -5, 0, False)


def name_at(axes, mark: style.Mark, dx: float, dy: float, leader: bool):
    """The name, offset (dx, dy) pixels from its point, aligned away from it."""
    text = axes.annotate(
        mark.panel,
        (mark.x, mark.y),
        xytext=(dx, dy),
        textcoords="offset pixels",
        ha="right" if dx < 0 else "left" if dx > 0 else "center",
        va="top" if dy < 0 else "bottom" if dy > 0 else "center",
        arrowprops=LEADER if leader else None,
        **NAME_STYLE,
    )
    text.set_in_layout(False)
    text.update_positions(axes.figure.canvas.get_renderer())
    return text


def marker(precision: str) -> str:
    return style.PRECISION_MARKER.get(precision, "s")


def legend_handles(shown, colours, shorts, precisions) -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D(
            [], [], linestyle="", marker="o", color=colours[label],
            label=style.legend_name(label, shorts[label]),
        )
        for label in shown
    ] + [
        Line2D([], [], linestyle="", marker=marker(p), color="grey", label=p)
        for p in precisions
    ]  # fmt: skip
