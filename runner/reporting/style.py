"""What the report's figures share: one colour per backend (the same in every figure), a hatch,
marker and line style per precision, a size that reads at the README's width (900 px), new
figures without pyplot's global state, PNGs written atomically, and `Drawing`, the description
each figure gives of what it drew and what it left out (and why), which the tests read.

matplotlib is imported inside the functions that draw, so importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable
from pathlib import Path

from runner.run import record

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
    """A figure and what it shows: marks, reference lines as (panel, what, value), footnotes."""

    name: str
    figure: object  # matplotlib.figure.Figure
    marks: list[Mark] = dataclasses.field(default_factory=list)
    lines: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

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
    """Axis labels: the backend's short name, with a footnote mark for its options ("SG¹" for
    "static_graph [x=1]"). Returns (label -> short label, footnotes "¹ static_graph: x=1")."""
    shorts, notes = {}, []
    for label in dict.fromkeys(labels):
        backend, _, options = label.partition(" [")
        short = BACKEND_SHORT.get(backend, backend)
        if not options:
            shorts[label] = short
            continue
        mark = superscript(len(notes) + 1)
        shorts[label] = short + mark
        notes.append(f"{mark} {backend}: {options.removesuffix(']')}")
    return shorts, notes


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
