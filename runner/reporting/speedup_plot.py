"""The speed-up figure: takes the rows of one results file (one per repeat) and the targets,
returns a Drawing: one small panel per variant (per table where a variant has several) in a
grid, all on one speed-up axis; in each, a bar per backend and precision (fp32 and fp16 side by
side) at its paired speed-up over eager with the 95% bootstrap interval as error bar, a line at
1x and one at each precision's target. A slot without a bar says why: parity failed,
unsupported, error, or no eager row of its session to pair with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runner import record
from runner.record import Row
from runner.reporting.identity import backend_label, identity_of, is_baseline, table_key
from runner.reporting.performance import Targets
from runner.reporting.repeats import merged_rows, speed_ups
from runner.reporting.rows import PRECISION_ORDER, panel_titles, rank
from runner.reporting.style import (
    LEFT_OUT_COLOUR,
    PARITY_COLOUR,
    PRECISION_HATCH,
    TARGET_LINE,
    Drawing,
    Mark,
    backend_colours,
    font,
    legend_name,
    new_figure,
    short_labels,
)

COLUMNS = 4  # panels per row of the grid
TITLE = "Speed-up over eager at the same precision"


def why_left_out(row: Row) -> str:
    """Why a row that has no speed-up gets no bar."""
    if not record.is_measured(row):
        return row.status  # unsupported | error
    if not record.passed(row):
        f1 = f" (F1 {row.parity_match_f1:.2f})" if row.parity_match_f1 is not None else ""
        return f"parity FAIL{f1}"
    return "no eager row in its session"


def slot_text(reason: str) -> tuple[str, str]:
    """The mark in an empty slot, and its colour."""
    if reason.startswith("parity"):
        return "✗ parity", PARITY_COLOUR
    return ("no pair" if reason.startswith("no eager") else reason), LEFT_OUT_COLOUR


def draw_speedup(rows: Sequence[Row], targets: Targets | None = None) -> Drawing | None:
    """The figure, or None where no row of another backend than eager exists."""
    merged = [row for row in merged_rows(rows) if not is_baseline(row)]
    if not merged:
        return None
    found = speed_ups(rows)
    titles = panel_titles(rows)
    panels: dict[str, list[Row]] = {}
    for row in merged:
        panels.setdefault(titles[table_key(row)], []).append(row)
    precisions = sorted({r.precision for r in merged}, key=lambda p: rank(p, PRECISION_ORDER))
    labels = list(dict.fromkeys(backend_label(row) for row in merged))
    colours = backend_colours(labels)
    shorts, notes = short_labels(labels)
    columns = COLUMNS  # panels keep their width however many there are
    grid = math.ceil(len(panels) / columns)
    with font():
        figure = new_figure(height=2.3 * grid + 1.1)
        axes_grid = figure.subplots(grid, columns, sharey=True, squeeze=False)
        drawing = Drawing("speedup", figure, notes=notes)
        width = 0.8 / len(precisions)
        top = 1.0
        for axes, (title, panel) in zip(axes_grid.flat, panels.items(), strict=False):
            panel_labels = list(dict.fromkeys(backend_label(row) for row in panel))
            by_slot = {(backend_label(r), r.precision): r for r in panel}
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
                        text, colour = slot_text(reason)
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
                        continue
                    low, high = paired.low, paired.high
                    error = None
                    if low is not None:
                        error = [[paired.ratio - low], [high - paired.ratio]]
                    axes.bar(
                        x,
                        paired.ratio,
                        width * 0.92,
                        yerr=error,
                        capsize=2,
                        color=colours[label],
                        hatch=PRECISION_HATCH.get(precision, ""),
                        edgecolor="white",
                        linewidth=0,
                        error_kw={"elinewidth": 1, "ecolor": "black"},
                    )
                    peak = high if high is not None else paired.ratio
                    if len(panel_labels) <= 3:  # room for the figure above each bar
                        axes.annotate(
                            f"{paired.ratio:.1f}x",
                            (x, peak),
                            xytext=(0, 2),
                            textcoords="offset points",
                            ha="center",
                            va="bottom",
                            fontsize=7,
                        )
                    top = max(top, peak)
                    drawing.marks.append(
                        Mark(title, label, precision, x, paired.ratio, low, high, "")
                    )
            axes.axhline(1.0, color="black", linewidth=0.8)
            drawing.lines.append((title, "eager 1x", 1.0))
            variant = panel[0].variant or panel[0].model
            for precision in precisions:
                needed = targets.needed(precision, variant) if targets else None
                if needed is None:
                    continue
                top = max(top, needed)
                axes.axhline(
                    needed, color="black", linewidth=1, linestyle=TARGET_LINE.get(precision, ":")
                )
                drawing.lines.append((title, f"target {precision}", needed))
            axes.set_title(title, fontsize=9)
            axes.set_xticks(range(len(panel_labels)), [shorts[lb] for lb in panel_labels])
            axes.set_xlim(-0.6, len(panel_labels) - 0.4)
            axes.grid(axis="y", linewidth=0.4, alpha=0.5)
            axes.set_axisbelow(True)
        for axes in axes_grid.flat[len(panels) :]:
            axes.set_visible(False)
        axes_grid[0][0].set_ylim(0, top * 1.15)
        for axes in axes_grid[:, 0]:
            axes.set_ylabel("speed-up (x)")
        legend(figure, axes_grid, labels, colours, shorts, precisions, bool(targets))
        footnote = "; ".join(notes)
        figure.suptitle(
            f"{TITLE}: paired repeats' median ratio, 95% interval; "
            "bars only for answers that pass parity",
            fontsize=10,
        )
        if footnote:
            figure.supxlabel(footnote, fontsize=7.5)
    return drawing


def legend(figure, axes_grid, labels, colours, shorts, precisions, with_targets: bool) -> None:
    """One legend for the figure: backend colours, precision hatches, the lines."""
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
    spare = [axes for axes in axes_grid.flat if not axes.get_visible()]
    if spare:
        spare[-1].set_visible(True)
        spare[-1].axis("off")
        spare[-1].legend(handles=handles, loc="center", frameon=False)
    else:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
