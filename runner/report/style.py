"""What the report's figures share: one colour per backend (the same in every figure), a hatch,
marker and line style per precision, a size that reads at the README's width (900 px), new
figures without pyplot's global state, PNGs written atomically, and `Drawing`, the description
each figure gives of what it drew and what it left out (and why), which the tests read.

matplotlib is imported inside the functions that draw, so importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterable
from pathlib import Path

from runner.report.identity import machine_of, title_of
from runner.run import record
from runner.run.record import Row

WIDTH_IN, DPI = 9.0, 100  # 900 px: GitHub's README column shows it at its own size
FONT_SIZE = 9
# fixed colours (matplotlib's tab10) for the backends that conf/backend/ has; any other backend
# takes the first free one of OTHER_COLOURS in name order
BACKEND_COLOURS = {
    "eager": "#595959",
    "torchscript": "#1f77b4",
    "inductor": "#ff7f0e",
    "static_graph": "#2ca02c",
    "cudagraphs": "#9467bd",
    "compiled_graphs": "#8c564b",
    "torch_blade": "#e377c2",
    "tensorrt": "#bcbd22",
}
# what the axes call each backend (the legend names it in full); others: their own name
BACKEND_SHORT = {
    "eager": "eager",
    "torchscript": "TS",
    "inductor": "Ind",
    "static_graph": "SG",
    "cudagraphs": "CG",
    "compiled_graphs": "CCG",
    "torch_blade": "Blade",
    "tensorrt": "TRT",
}
# readable names for the option sets the report's runs use (the footnote gives the options),
# and where each goes among its backend's labels: -1 before the defaults (less than they do),
# 1 after (more); any other set of options gets the backend's short name and a footnote mark
# ("SG¹") and goes after
OPTION_NAMES = {
    ("static_graph", "channels_last=false fold_bn=false half_weights=false"): ("SG untuned", -1),
    ("static_graph", "compile=true"): ("SG+Inductor", 1),
}
OTHER_COLOURS = ("#17becf", "#d62728", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a")
PRECISION_HATCH = {"fp32": "", "fp16": "///", "bf16": "..."}
PRECISION_MARKER = {"fp32": "o", "fp16": "^", "bf16": "s"}
PRECISION_LINE = {"fp32": "-", "fp16": "--", "bf16": ":"}
TARGET_LINE = {"fp32": (0, (1, 1.5)), "fp16": "--", "bf16": "-."}
PARITY_COLOUR = "#b22222"  # the mark of a parity failure, where nothing is drawn
LEFT_OUT_COLOUR = "#808080"  # the mark of anything else left out
FLOOR_COLOUR = "#000000"


@dataclasses.dataclass(frozen=True)
class Mark:
    """One bar or point of a figure (x, y; low-high its interval), or, with `left_out`, the
    reason it has none."""

    panel: str
    backend: str  # the backend's label (options included)
    precision: str
    x: float | None = None
    y: float | None = None
    low: float | None = None
    high: float | None = None
    left_out: str = ""


@dataclasses.dataclass
class Drawing:
    """A figure and what it shows: marks, reference lines as (panel, what, value), footnotes,
    and the names written next to points, per panel."""

    name: str
    figure: object  # matplotlib.figure.Figure
    marks: list[Mark] = dataclasses.field(default_factory=list)
    lines: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def drawn(self) -> list[Mark]:
        return [mark for mark in self.marks if not mark.left_out]

    @property
    def left_out(self) -> list[Mark]:
        return [mark for mark in self.marks if mark.left_out]


def backend_colours(labels: Iterable[str]) -> dict[str, str]:
    """A colour per backend label: the backend's fixed colour; a label with options (a second
    label of one backend) a lighter shade of it."""
    colours: dict[str, str] = {}
    others = iter(OTHER_COLOURS)
    by_backend: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        by_backend.setdefault(label.split(" [", 1)[0], []).append(label)
    for backend, group in by_backend.items():
        base = BACKEND_COLOURS.get(backend) or next(others, "#7f7f7f")
        for shade, label in enumerate(sorted(group, key=lambda text: (" [" in text, text))):
            colours[label] = lighter(base, 0.45 * shade / len(group))
    return colours


def lighter(colour: str, amount: float) -> str:
    """The colour mixed with white by `amount` (0: as it is)."""
    channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(c + (255 - c) * amount) for c in channels]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def short_labels(labels: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Axis labels: the backend's short name; for a label with options, OPTION_NAMES' name for
    them ("SG+Inductor") or the short name with a footnote mark ("SG¹" for "static_graph [x=1]").
    Returns (label -> short label, footnotes giving each one's exact options:
    "SG+Inductor: static_graph compile=true", "¹ static_graph: x=1")."""
    shorts, notes = {}, []
    marks = 0
    for label in dict.fromkeys(labels):
        backend, _, options = label.partition(" [")
        options = options.removesuffix("]")
        short = BACKEND_SHORT.get(backend, backend)
        if not options:
            shorts[label] = short
        elif (backend, options) in OPTION_NAMES:
            shorts[label] = OPTION_NAMES[backend, options][0]
            notes.append(f"{shorts[label]}: {backend} {options}")
        else:
            marks += 1
            shorts[label] = short + superscript(marks)
            notes.append(f"{superscript(marks)} {backend}: {options}")
    return shorts, notes


def in_order(labels: Iterable[str]) -> list[str]:
    """Backend labels with each backend's together, in the order backends first come, and
    within one backend by OPTION_NAMES' place: "SG untuned", "SG", "SG+Inductor"."""
    labels = list(dict.fromkeys(labels))
    backends = list(dict.fromkeys(label.partition(" [")[0] for label in labels))

    def place(label: str) -> tuple[int, int]:
        backend, _, options = label.partition(" [")
        named = OPTION_NAMES.get((backend, options.removesuffix("]")))
        return backends.index(backend), (named[1] if named else 1) if options else 0

    return sorted(labels, key=place)


def tick_label(short: str) -> str:
    """A short label on two lines where it has two words ("SG\nuntuned", "SG\n+Inductor"), so
    that four fit under one panel of a grid."""
    return re.sub(r"^(\S+?)(?: |(?=\+))", r"\1\n", short, count=1)


def legend_name(label: str, short: str) -> str:
    """ "SG  static_graph": the short name the axes use, then the backend's own."""
    backend = label.partition(" [")[0]
    return short if short == backend else f"{short}  {backend}"


def superscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def new_figure(height: float, width: float = WIDTH_IN):
    """A figure drawn by Agg, laid out by matplotlib's constrained layout, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def font(size: float = FONT_SIZE):
    """The rc settings every figure is drawn under (a context manager)."""
    import matplotlib

    return matplotlib.rc_context(
        {
            "font.size": size,
            "axes.titlesize": size + 1,
            "axes.labelsize": size,
            "xtick.labelsize": size - 1,
            "ytick.labelsize": size - 1,
            "legend.fontsize": size - 1,
            "hatch.linewidth": 0.8,
        }
    )


def footer(figure, slot, handles=(), ncols: int = 1, lines: Iterable[str] = ()) -> list:
    """A legend (where `handles`) and, under it, lines of notes (where `lines`), each centred in
    an axes without axis of its own in the gridspec `slot`. The axes are nearly flat: constrained
    layout grows the margins around them to fit what they hold, so legend and notes never cover
    each other, the panels or the figure's edge. Returns the legend and the notes' Text."""
    lines = [line for line in lines if line]
    parts = [part for part in (bool(handles), bool(lines)) if part]
    if not parts:
        return []
    inner = slot.subgridspec(len(parts), 1)
    drawn = []
    for i in range(len(parts)):
        axes = figure.add_subplot(inner[i])
        axes.axis("off")
        if handles and i == 0:
            drawn.append(
                axes.legend(handles=list(handles), loc="center", ncols=ncols, frameon=False)
            )
        else:
            drawn.append(
                axes.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=7.5)
            )
    return drawn


def footer_height(legend_rows: int, lines: int) -> float:
    """Inches a footer of that many legend rows and lines of notes takes."""
    return 0.22 * legend_rows + 0.14 * lines + (0.1 if legend_rows or lines else 0.0)


def static_first(rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
    """(rows kept, rows left out): a variant's shapes=dynamic rows are left out where it has
    rows at static shapes on that machine; they are latency_vs_size.png's. A variant measured
    only at dynamic shapes keeps its rows."""
    rows = list(rows)
    static = {(machine_of(r), title_of(r)) for r in rows if r.shapes != "dynamic"}
    kept, dropped = [], []
    for row in rows:
        moved = row.shapes == "dynamic" and (machine_of(row), title_of(row)) in static
        (dropped if moved else kept).append(row)
    return kept, dropped


def dynamic_note(dropped: Iterable[Row]) -> str:
    """The note on what static_first left out, "" where nothing."""
    variants = list(dict.fromkeys(title_of(row) for row in dropped))
    if not variants:
        return ""
    return (
        f"Not shown: {', '.join(variants)} at shapes=dynamic (static shapes only here; "
        "see latency against input size)"
    )


def save_figure(figure, path: Path) -> None:
    """Save as PNG (no timestamp inside: the same rows give the same bytes), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    record.write_atomic(path, buffer.getvalue())


def left_out_text(marks: Iterable[Mark], shorts: dict[str, str]) -> str:
    """One line on what a figure leaves out: parity failures by name, the rest counted by
    reason ("" where nothing is left out)."""
    parity, others = [], {}
    for mark in marks:
        if mark.left_out.startswith("parity"):
            parity.append(f"{mark.panel} {shorts.get(mark.backend, mark.backend)} {mark.precision}")
        elif mark.left_out:
            others[mark.left_out] = others.get(mark.left_out, 0) + 1
    parts = [f"parity FAIL: {', '.join(parity)}"] if parity else []
    parts += [f"{count} {reason}" for reason, count in others.items()]
    return f"Left out ({'; '.join(parts)})" if parts else ""
