"""runner.report's figures, from the golden fixture rows: which bars and points each draws,
which it leaves out and why (the Drawing each returns), that the matplotlib artists say the same,
one colour per backend in every figure, and the PNGs' size."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest

from runner.report.performance import Targets
from runner.report.plots import plot
from runner.report.size_plot import draw_sizes, seed_sizes
from runner.report.speedup_plot import draw_speedup
from runner.report.style import BACKEND_COLOURS, backend_colours, short_labels
from runner.report.time_plot import draw_time
from runner.run import record
from tests.test_pairing import repeats
from tests.test_report import dynamic, fixture_rows, measured

STATIC_FPN = "MaskRCNNFPN (static shapes, 800x1333)"  # its table's heading
DYNAMIC_FPN = "MaskRCNNFPN (dynamic shapes, 800x1333)"
FPN = "MaskRCNNFPN"  # its panel's title where the dynamic rows are left out
PLAIN = "mask_rcnn_fpn (trace, batch 2, postprocess)"
UNTUNED = "channels_last=false fold_bn=false half_weights=false"
TARGETS = Targets(
    {"fp16": {"default": 5.0}, "fp32": {"default": 3.0, "RetinaNet": 2.0}}, [], None, "t"
)


def slots(marks) -> dict[tuple[str, str, str], object]:
    return {(m.panel, m.backend, m.precision): m for m in marks}


def colour(artist) -> str:
    from matplotlib.colors import to_hex

    return to_hex(artist)


def flat(pairs) -> list[float]:
    return [value for pair in pairs for value in pair]


def scatters(axes) -> list:
    from matplotlib.collections import PathCollection

    return [c for c in axes.collections if isinstance(c, PathCollection)]


def scatter_offsets(axes) -> list:
    return [offset for c in scatters(axes) for offset in c.get_offsets()]


def titled(figure) -> dict[str, object]:
    """Panels by title, a wrapped title on one line."""
    return {a.get_title().replace("\n", " "): a for a in figure.axes if a.get_title()}


def boxes(figure, artists) -> list:
    """The artists' boxes in pixels, as saved (the layout done)."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    return [artist.get_window_extent(renderer) for artist in artists]


def inside(box, frame, slack: float = 0.5) -> bool:
    return (
        box.x0 >= frame.x0 - slack
        and box.x1 <= frame.x1 + slack
        and box.y0 >= frame.y0 - slack
        and box.y1 <= frame.y1 + slack
    )


def footer_parts(figure) -> tuple[list, list]:
    """(legends, notes' Text) of the figure's axes without axis: the footer and spare slot."""
    legends = [a.get_legend() for a in figure.axes if a.get_legend() is not None]
    texts = [t for a in figure.axes if not a.axison for t in a.texts if t.get_text()]
    return legends, texts


# ---- speed-up -------------------------------------------------------------------------------


def test_speedup_bars_are_the_paired_speed_ups_of_rows_that_pass_parity():
    drawing = draw_speedup(fixture_rows(), TARGETS)
    bars = {key: mark.y for key, mark in slots(drawing.drawn).items()}
    assert bars == {
        ("RetinaNet", "torchscript", "fp32"): pytest.approx(20.0 / 8.66),
        ("RetinaNet", "torchscript", "fp16"): pytest.approx(12.0 / 9.0),
        (FPN, "torchscript", "fp32"): pytest.approx(1.6),
        (PLAIN, "torchscript", "fp32"): pytest.approx(1.25),
    }


def test_speedup_slots_without_a_bar_say_why():
    drawing = draw_speedup(fixture_rows(), TARGETS)
    assert {key: mark.left_out for key, mark in slots(drawing.left_out).items()} == {
        (FPN, "torchscript", "fp16"): "parity FAIL (F1 0.85)",
        ("RetinaNet_scripted", "torchscript", "fp32"): "unsupported",
        ("CascadeRCNN", "torchscript", "fp32"): "error",
        ("CascadeRCNN", "torchscript", "fp16"): "no eager row in its session",
        (DYNAMIC_FPN, "torchscript", "fp32"): "shapes=dynamic",
    }
    panels = titled(drawing.figure)
    texts = [text.get_text() for text in panels[FPN].texts]
    assert "✗ parity" in texts
    assert [text.get_text() for text in panels["CascadeRCNN"].texts] == ["error", "no pair"]


def test_speedup_panels_share_one_axis_with_lines_at_one_and_at_the_targets():
    drawing = draw_speedup(fixture_rows(), TARGETS)
    panels = list(titled(drawing.figure).values())
    assert list(titled(drawing.figure)) == [
        "RetinaNet",
        "RetinaNet_scripted",
        FPN,
        "CascadeRCNN",
        PLAIN,
    ]
    assert len({axes.get_ylim() for axes in panels}) == 1
    lines = {(panel, what): value for panel, what, value in drawing.lines}
    assert lines["RetinaNet", "eager 1x"] == 1.0
    assert lines["RetinaNet", "target fp32"] == 2.0  # its own target
    assert lines["CascadeRCNN", "target fp32"] == 3.0 and lines["CascadeRCNN", "target fp16"] == 5.0
    heights = sorted({line.get_ydata()[0] for line in panels[0].lines})
    assert heights == [1.0, 2.0, 5.0]
    assert not [what for _, what, _ in draw_speedup(fixture_rows()).lines if "target" in what]


def test_speedup_bars_and_error_bars_in_the_axes_match_the_drawing():
    rows = (
        repeats("eager", [20.0, 30.0, 16.0, 25.0, 18.0])
        + repeats("ts", [10.0, 15.0, 8.0, 12.5, 9.0])
        + repeats("eager", [20.0, 21.0, 19.0], precision="fp32")
        + repeats("ts", [10.0, 9.0, 11.0], precision="fp32")
        + repeats("cg", [10.0] * 3, precision="fp32", status="parity_fail", parity_pass=False)
    )
    drawing = draw_speedup(rows)
    (axes,) = [axes for axes in drawing.figure.axes if axes.get_title()]
    bars = [patch for patch in axes.patches]
    assert sorted(bar.get_height() for bar in bars) == sorted(m.y for m in drawing.drawn)
    fp16 = slots(drawing.drawn)["RetinaNet", "ts", "fp16"]
    assert (fp16.y, fp16.low, fp16.high) == pytest.approx((2.0, 2.0, 2.0))
    assert [m.backend for m in drawing.left_out] == ["cg"]
    from matplotlib.container import BarContainer

    containers = [c for c in axes.containers if isinstance(c, BarContainer)]
    assert len(containers) == 2  # one per bar, each with its error bar (the 95% interval)
    assert all(container.errorbar is not None for container in containers)
    hatches = {bar.get_hatch() or "" for bar in bars}
    assert hatches == {"", "///"}  # fp32 solid, fp16 hatched


def test_a_slowdown_is_labelled_with_the_digits_that_show_it():
    """A bar's label has one decimal, unless that would turn its difference from 1 into a tie:
    0.97x is labelled "0.97x", never "1.0x"."""
    eager = [20.0, 30.0, 16.0, 25.0, 18.0]
    rows = (
        repeats("eager", eager)
        + repeats("ts", [ms / 0.97 for ms in eager])
        + repeats("cg", [ms / 1.5 for ms in eager])
    )
    drawing = draw_speedup(rows)
    (axes,) = [axes for axes in drawing.figure.axes if axes.get_title()]
    labels = {text.get_text() for text in axes.texts}
    assert labels == {"0.97x", "1.5x"}, labels


def test_options_get_a_short_label_and_a_footnote():
    rows = [
        measured("RetinaNet", "fp16", "eager", 12.0),
        measured("RetinaNet", "fp16", "static_graph", 4.0),
        measured("RetinaNet", "fp16", "static_graph", 3.0, backend_options="half_weights=true"),
    ]
    drawing = draw_speedup(rows)
    (axes,) = [axes for axes in drawing.figure.axes if axes.get_title()]
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["SG", "SG¹"]
    assert drawing.notes == ["¹ static_graph: half_weights=true"]


def seed_like_rows(variants=("RetinaNet", "RetinaNet_scripted", "MaskRCNNFPN", "CascadeRCNN")):
    """fp16 rows as the H200 seed table has them: eager, static_graph by default, untuned and
    with Inductor, torchscript, per variant."""
    rows = []
    for n, variant in enumerate(variants):
        rows += [
            measured(variant, "fp16", "eager", 24.0 + n),
            measured(variant, "fp16", "torchscript", 16.0 + n),
            measured(variant, "fp16", "static_graph", 3.0 + n),
            measured(variant, "fp16", "static_graph", 4.0 + n, backend_options=UNTUNED),
            measured(variant, "fp16", "static_graph", 2.0 + n, backend_options="compile=true"),
        ]
    return rows


def test_named_options_read_as_words_in_order_with_a_footnote_of_the_options():
    drawing = draw_speedup(seed_like_rows())
    axes = titled(drawing.figure)["RetinaNet"]
    ticks = [tick.get_text() for tick in axes.get_xticklabels()]
    assert ticks == ["SG\nuntuned", "SG", "SG\n+Inductor", "TS"]  # less to more, then TS
    assert drawing.notes == [
        f"SG untuned: static_graph {UNTUNED}",
        "SG+Inductor: static_graph compile=true",
    ]
    tick_boxes = boxes(drawing.figure, axes.get_xticklabels())
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(tick_boxes))  # none touch
    legends, texts = footer_parts(drawing.figure)
    (legend,) = legends
    assert [t.get_text() for t in legend.get_texts()][:4] == [
        "SG untuned  static_graph",
        "SG  static_graph",
        "SG+Inductor  static_graph",
        "TS  torchscript",
    ]
    assert [t.get_text() for t in texts] == ["\n".join(drawing.notes)]


@pytest.mark.parametrize("variants", [4, 3], ids=["legend-under-the-grid", "legend-in-a-slot"])
def test_legend_and_footnotes_are_whole_and_cover_nothing(variants):
    rows = seed_like_rows(list(seed_like_rows.__defaults__[0])[:variants])
    rows += [dynamic("MaskRCNNFPN", "fp16", b, 20.0) for b in ("eager", "torchscript")]
    figure = draw_speedup(rows, TARGETS).figure
    legends, texts = footer_parts(figure)
    panels = list(titled(figure).values())
    assert len(legends) == 1 and len(texts) == 1 and len(panels) == variants
    parts = boxes(figure, [*legends, *texts])
    edge = figure.bbox
    drawn = boxes(figure, panels) + boxes(figure, [a.title for a in panels])
    drawn += [box for a in panels for box in boxes(figure, a.get_xticklabels())]
    for part in parts:
        assert inside(part, edge)
        assert not any(part.overlaps(other) for other in drawn)
    assert not parts[0].overlaps(parts[1])


def test_dynamic_rows_are_left_to_the_size_figure_and_the_figure_says_so():
    drawing = draw_speedup(fixture_rows())
    assert not [title for title in titled(drawing.figure) if "dynamic" in title]
    assert [(m.panel, m.left_out) for m in drawing.left_out if "dynamic" in m.left_out] == [
        (DYNAMIC_FPN, "shapes=dynamic")
    ]
    note = (
        "Not shown: MaskRCNNFPN at shapes=dynamic (static shapes only here; see latency against "
        "input size)"
    )
    assert drawing.notes == [note]
    _, texts = footer_parts(drawing.figure)
    assert [t.get_text() for t in texts] == [note]
    only_dynamic = [
        r for r in fixture_rows() if r.variant == "MaskRCNNFPN" and r.shapes == "dynamic"
    ]
    drawing = draw_speedup(only_dynamic)  # a variant measured only at dynamic shapes keeps it
    assert list(titled(drawing.figure)) == [FPN] and drawing.notes == []


def test_a_long_panel_title_wraps_inside_its_panel():
    drawing = draw_speedup(fixture_rows())
    axes = titled(drawing.figure)[PLAIN]
    assert axes.get_title() == "mask_rcnn_fpn (trace, batch 2,\npostprocess)"
    (title, frame) = boxes(drawing.figure, [axes.title, axes])
    assert frame.x0 - 5 <= title.x0 and title.x1 <= frame.x1 + 5


def test_no_speedup_figure_without_another_backend():
    assert draw_speedup([measured("RetinaNet", "fp16", "eager", 12.0)]) is None


# ---- where the time goes --------------------------------------------------------------------


def test_time_points_are_gpu_busy_against_median_with_the_diagonal():
    rows = fixture_rows()
    drawing = draw_time(rows)
    points = {key: (m.x, m.y) for key, m in slots(drawing.drawn).items()}
    assert points["RetinaNet", "eager", "fp32"] == pytest.approx((16.0, 20.0))
    assert points["RetinaNet", "torchscript", "fp16"] == pytest.approx((7.2, 9.0))
    assert len(points) == 11
    assert {key: m.left_out for key, m in slots(drawing.left_out).items()} == {
        (FPN, "torchscript", "fp16"): "parity FAIL",
        ("RetinaNet_scripted", "torchscript", "fp32"): "unsupported",
        ("CascadeRCNN", "torchscript", "fp32"): "error",
        (DYNAMIC_FPN, "eager", "fp32"): "shapes=dynamic",
        (DYNAMIC_FPN, "torchscript", "fp32"): "shapes=dynamic",
    }
    assert drawing.notes == [
        "Left out (parity FAIL: MaskRCNNFPN TS fp16; 1 unsupported; 1 error)",
        "Not shown: MaskRCNNFPN at shapes=dynamic (static shapes only here; see latency against "
        "input size)",
    ]
    assert [t.get_text() for t in footer_parts(drawing.figure)[1]] == ["\n".join(drawing.notes)]
    panels = titled(drawing.figure)
    assert set(panels) == {"fp32", "fp16"}
    drawn = sorted(tuple(offset) for axes in panels.values() for offset in scatter_offsets(axes))
    assert flat(drawn) == pytest.approx(flat(sorted(points.values())))
    for axes in panels.values():  # the floor: latency = GPU busy
        diagonal = axes.lines[0]
        assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())


def test_one_precision_is_one_panel_the_width_of_the_figure_named_at_eager_points():
    variants = ["RetinaNet", "RetinaNet_scripted", "MaskRCNNFPN", "CascadeRCNN"]
    drawing = draw_time(seed_like_rows(variants))  # eager points close together
    figure = drawing.figure
    (axes,) = [a for a in figure.axes if a.axison]
    assert axes.get_title() == "" and figure.get_suptitle().endswith("(fp16)")
    (frame,) = boxes(figure, [axes])
    assert frame.width > 0.8 * figure.bbox.width
    diagonal = axes.lines[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert sorted(drawing.names["fp16"]) == sorted(variants)  # one name per variant
    names = [t for t in axes.texts if t.get_text() in variants]
    eager = {m.panel: (m.x, m.y) for m in drawing.drawn if m.backend == "eager"}
    assert {t.get_text(): tuple(t.xy) for t in names} == eager  # at the eager points
    from matplotlib.text import Text

    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    name_boxes = [Text.get_window_extent(t, renderer) for t in names]  # the name, not its line
    dots = axes.transData.transform([(m.x, m.y) for m in drawing.drawn])
    for i, box in enumerate(name_boxes):
        assert inside(box, frame)
        assert not any(box.overlaps(other) for other in name_boxes[i + 1 :])
        assert not any(box.x0 < x < box.x1 and box.y0 < y < box.y1 for x, y in dots)
    legends, _ = footer_parts(figure)
    (legend,) = legends
    (legend_box,) = boxes(figure, [legend])
    assert inside(legend_box, figure.bbox) and not legend_box.overlaps(frame)


def test_a_row_without_gpu_busy_gets_no_point_and_no_figure_without_any():
    rows = [measured("RetinaNet", "fp16", "eager", 12.0, gpu_busy_ms=None)]
    assert draw_time(rows) is None
    rows.append(measured("RetinaNet", "fp16", "ts", 6.0))
    drawing = draw_time(rows)
    assert [(m.backend, m.left_out) for m in drawing.left_out] == [("eager", "no GPU busy figure")]


# ---- latency against input size ---------------------------------------------------------


def size_rows():
    failing = record.replace(
        dynamic("MaskRCNNFPN", "fp16", "torchscript", 20.0),
        status="parity_fail",
        parity_pass=False,
    )
    return fixture_rows() + [failing, dynamic("RetinaNet", "fp32", "eager", 30.0)]


def test_size_lines_run_through_each_measured_size_per_backend_and_precision():
    drawing = draw_sizes(size_rows())
    by_line: dict[tuple, list] = {}
    for mark in drawing.drawn:
        by_line.setdefault((mark.panel, mark.backend, mark.precision), []).append((mark.x, mark.y))
    xs, ys = zip(*by_line["MaskRCNNFPN", "torchscript", "fp32"], strict=True)
    assert xs == pytest.approx([480 * 640 / 1e6, 800 * 1333 / 1e6, 1024 * 1706 / 1e6])
    assert ys == pytest.approx([14.0, 28.0, 28.0 * 1.6])
    assert set(by_line) == {
        ("MaskRCNNFPN", "eager", "fp32"),
        ("MaskRCNNFPN", "torchscript", "fp32"),
        ("RetinaNet", "eager", "fp32"),
    }
    assert [(m.panel, m.backend, m.precision, m.left_out) for m in drawing.left_out] == [
        ("MaskRCNNFPN", "torchscript", "fp16", "parity FAIL")
    ]
    panels = {axes.get_title(): axes for axes in drawing.figure.axes if axes.get_visible()}
    curves = [line for line in panels["MaskRCNNFPN"].lines if len(line.get_xdata()) == 3]
    assert len(curves) == 2
    expected = sorted(
        [y for _, y in by_line["MaskRCNNFPN", b, "fp32"]] for b in ("eager", "torchscript")
    )
    drawn = sorted(list(line.get_ydata()) for line in curves)
    assert flat(drawn) == pytest.approx(flat(expected))


def test_size_figure_marks_the_seeds_sizes_and_needs_dynamic_rows():
    assert seed_sizes() == {"min": "288x384", "opt": "480x640", "max": "1200x1600"}
    drawing = draw_sizes(size_rows())
    marked = {what: x for panel, what, x in drawing.lines if panel == "RetinaNet"}
    assert marked == {
        "seed min 288x384": pytest.approx(288 * 384 / 1e6),
        "seed opt 480x640": pytest.approx(480 * 640 / 1e6),
        "seed max 1200x1600": pytest.approx(1200 * 1600 / 1e6),
    }
    assert draw_sizes([r for r in fixture_rows() if r.shapes == "static"]) is None


def test_the_seed_sizes_names_cover_no_point():
    at_seed = record.replace(  # measured at the seed's sizes: its highest point under a name
        dynamic("RetinaNet", "fp16", "eager", 20.0),
        image_hw_min="288x384",
        image_hw="480x640",
        image_hw_max="1200x1600",
    )
    drawing = draw_sizes([at_seed])
    figure = drawing.figure
    (axes,) = [a for a in figure.axes if a.get_visible()]
    names = [t for t in axes.texts]
    assert [t.get_text() for t in names] == ["288x384", "480x640", "1200x1600"]
    figure.draw_without_rendering()
    dots = axes.transData.transform([(m.x, m.y) for m in drawing.drawn])
    assert len(dots) == 3
    for box in boxes(figure, names):
        assert not any(box.x0 - 4 < x < box.x1 + 4 and box.y0 - 4 < y < box.y1 + 4 for x, y in dots)


def test_seed_sizes_name_the_files_they_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="cannot read the seed's input sizes"):
        seed_sizes(tmp_path)


# ---- one colour per backend, and the files -------------------------------------------------


def test_each_backend_has_one_colour_in_every_figure():
    rows = size_rows()
    expected = backend_colours(["eager", "torchscript"])
    assert expected["torchscript"] == BACKEND_COLOURS["torchscript"]
    speedup = draw_speedup(fixture_rows()).figure.axes[0]
    assert speedup.get_title() == "RetinaNet"
    assert {colour(bar.get_facecolor()) for bar in speedup.patches} == {expected["torchscript"]}
    (fp32, _) = titled(draw_time(rows).figure).values()
    colours = {colour(c.get_facecolor()[0]) for c in scatters(fp32)}
    assert colours == {expected["eager"], expected["torchscript"]}
    size = [a for a in draw_sizes(rows).figure.axes if a.get_title() == "MaskRCNNFPN"][0]
    curves = [line for line in size.lines if len(line.get_xdata()) == 3]
    assert {colour(line.get_color()) for line in curves} == {
        expected["eager"],
        expected["torchscript"],
    }


def test_a_second_label_of_one_backend_is_a_lighter_shade_and_short_labels_footnote_options():
    colours = backend_colours(["cg", "cg [x=1]", "static_graph"])
    assert colours["static_graph"] == BACKEND_COLOURS["static_graph"]
    assert colours["cg"] != colours["cg [x=1]"]
    shorts, notes = short_labels(["torchscript", "cg [x=1]"])
    assert shorts == {"torchscript": "TS", "cg [x=1]": "cg¹"} and notes == ["¹ cg: x=1"]


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_plot_writes_each_figure_900_px_wide(tmp_path):
    written = plot(size_rows(), tmp_path, TARGETS)
    assert list(written) == ["speedup", "where_time_goes", "latency_vs_size"]
    for path in written.values():
        assert png_size(path)[0] == 900
    static = [r for r in fixture_rows() if r.shapes == "static"]
    assert list(plot(static, tmp_path / "static")) == ["speedup", "where_time_goes"]
    assert not (tmp_path / "static" / "latency_vs_size.png").exists()
