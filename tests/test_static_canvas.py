"""static_graph's option fuse_levels (runner/backends/static_graph/canvas.py): a head shared by
the pyramid levels run once over all of them, laid out in one zero canvas, answers as the head
run per level does.

CPU, for real, in CI: the layout (the seed's canvas sizes; levels kept apart); stacks of random
convolutions over levels of the seed's shapes and of odd ones, fused against per level (float64
to the last bits: the windows are the same; fp32 to its rounding); the layers that would read
across levels refused, naming them; the fused head exported by torch.export. detectron2-marked:
detectron2's own heads (RetinaNet's, FCOS's, the RPN's) fused against per level, the norms that
cannot be fused said in the notes, and static_graph with fuse_levels=true against itself without
and against eager on RetinaNet, FCOS and Mask R-CNN FPN; its rewrite exported, with another
package key.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runner.backends.static_graph.canvas import (
    Branch,
    FusedHead,
    NotFusable,
    fuse_levels,
    layout,
    level_mask,
    pack,
    plan,
    unpack,
)

# the feature maps at the seed's 480x640: RetinaNet's P3-P7 and the RPN's P2-P6 (Mask R-CNN FPN)
RETINANET_480x640 = [(60, 80), (30, 40), (15, 20), (8, 10), (4, 5)]
RPN_480x640 = [(120, 160), (60, 80), (30, 40), (15, 20), (8, 10)]
ODD = [(7, 9), (4, 5), (1, 1)]
SHAPE_SETS = {
    "retinanet": RETINANET_480x640,
    "rpn": RPN_480x640,
    "odd": ODD,
    "tall": [(3, 2), (13, 3), (1, 1), (2, 17)],
    "one": [(5, 6)],
}


def test_the_canvas_at_the_seeds_size_is_a_fifth_larger_than_the_levels_at_most():
    """The numbers canvas.py's docstring gives: RetinaNet's P3-P7 on 62x123 (1.19x the levels'
    6400 pixels), the RPN's P2-P6 on 122x243 (1.16x their 25580)."""
    retinanet, rpn = layout(RETINANET_480x640), layout(RPN_480x640)
    assert (retinanet.height, retinanet.width) == (62, 123)
    assert sum(h * w for h, w in RETINANET_480x640) == 6400
    assert round(retinanet.overhead, 2) == 1.19
    assert (rpn.height, rpn.width) == (122, 243)
    assert sum(h * w for h, w in RPN_480x640) == 25580
    assert round(rpn.overhead, 2) == 1.16
    # the largest level at the left, the others in a column to its right
    assert retinanet.places[0] == (1, 1) and {left for _, left in retinanet.places[1:]} == {82}


@pytest.mark.parametrize("gap", [1, 2])
@pytest.mark.parametrize("name", list(SHAPE_SETS))
def test_levels_lie_gap_apart_and_gap_inside_the_edge(name, gap):
    shapes = SHAPE_SETS[name]
    arrangement = layout(shapes, gap)
    grown = []  # each level with `gap` pixels around it
    for (top, left), (h, w) in zip(arrangement.places, shapes, strict=True):
        assert top >= gap and left >= gap
        assert top + h + gap <= arrangement.height and left + w + gap <= arrangement.width
        grown.append((top - gap, left - gap, top + h + gap, left + w + gap))
    for i, (top, left), (h, w) in zip(range(len(shapes)), arrangement.places, shapes, strict=True):
        for j, (t, l, b, r) in enumerate(grown):  # noqa: E741
            if j != i:
                assert top + h <= t or top >= b or left + w <= l or left >= r, (i, j)


def _levels(shapes, channels=4, batch=2, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, h, w, generator=generator, dtype=dtype) for h, w in shapes]


@pytest.mark.parametrize("name", ["retinanet", "odd", "tall"])
def test_pack_puts_each_level_at_its_place_on_zeros_and_unpack_gives_them_back(name):
    shapes = SHAPE_SETS[name]
    levels = _levels(shapes)
    arrangement = layout(shapes)
    canvas = pack(levels, arrangement)
    assert canvas.shape == (2, 4, arrangement.height, arrangement.width)
    for level, back in zip(levels, unpack(canvas, arrangement), strict=True):
        assert torch.equal(level, back)
        assert back.data_ptr() != level.data_ptr()  # a view of the canvas
    inside = level_mask(arrangement, canvas.device)
    assert inside.shape == (1, 1, arrangement.height, arrangement.width)
    assert int(inside.sum()) == sum(h * w for h, w in shapes)
    assert not canvas.masked_select(~inside).any()  # zeros everywhere else


def test_a_channels_last_canvas_stays_channels_last():
    levels = [level.to(memory_format=torch.channels_last) for level in _levels(ODD, channels=8)]
    canvas = pack(levels, layout(ODD))
    assert canvas.is_contiguous(memory_format=torch.channels_last)


class Stack(nn.Module):
    """A head as RetinaNet's is made, random: per branch a Sequential of 3x3 convolutions with
    ReLU (optionally a pointwise norm between), then output convolutions; forward runs it per
    level, as detectron2's heads do."""

    def __init__(self, channels=4, depth=3, norm=None, outputs=((3, 5), (1, 4))):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            if norm is not None:
                layers.append(norm(channels))
            layers.append(nn.ReLU())
        self.trunk = nn.Sequential(*layers)
        self.out = nn.ModuleList(
            nn.Conv2d(channels, c, k, padding=k // 2) for k, c in outputs
        )  # a final 3x3 and a 1x1 by default
        with torch.no_grad():  # biases and norms' shifts large enough to matter at separators
            for module in self.modules():
                if getattr(module, "bias", None) is not None:
                    module.bias.uniform_(-1, 1)
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-1, 1)
                    module.running_var.uniform_(0.5, 2)
        self.branches = (Branch("trunk", tuple(f"out.{i}" for i in range(len(outputs)))),)

    def forward(self, features):
        per_output = [[] for _ in self.out]
        for feature in features:
            x = self.trunk(feature)
            for answers, conv in zip(per_output, self.out, strict=True):
                answers.append(conv(x))
        return tuple(per_output)


def _fused_and_per_level(head: nn.Module, levels):
    fused = FusedHead(head, plan(head, head.branches))
    with torch.no_grad():
        return fused(levels), head(levels)


@pytest.mark.parametrize("name", ["retinanet", "odd", "tall"])
def test_fused_convolutions_see_the_per_level_windows_to_the_last_bit_in_float64(name):
    """In float64 the canvas's answers equal the per-level ones to 1e-12: each output pixel
    summed the same window (a wrong window, a separator not re-zeroed, would show at 1e-1)."""
    torch.manual_seed(0)
    head = Stack(depth=4).double().eval()
    got, want = _fused_and_per_level(head, _levels(SHAPE_SETS[name], dtype=torch.float64))
    assert len(got) == len(want) == 2
    for got_output, want_output in zip(got, want, strict=True):
        for a, b in zip(got_output, want_output, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["retinanet", "rpn", "odd"])
def test_fused_convolutions_answer_as_per_level_in_fp32(name):
    torch.manual_seed(0)
    head = Stack(channels=8).eval()
    got, want = _fused_and_per_level(head, _levels(SHAPE_SETS[name], channels=8))
    for got_output, want_output in zip(got, want, strict=True):
        for a, b in zip(got_output, want_output, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_pointwise_norm_is_fused_and_the_separators_zeroed_after_its_shift():
    """Eval BatchNorm shifts the separators away from zero: the mask sets them back before the
    next 3x3 convolution, and the answers stay per level's."""
    torch.manual_seed(0)
    head = Stack(norm=nn.BatchNorm2d).double().eval()
    got, want = _fused_and_per_level(head, _levels(ODD, dtype=torch.float64))
    for got_output, want_output in zip(got, want, strict=True):
        for a, b in zip(got_output, want_output, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_with_channels_last_weights_and_levels_the_answers_are_the_same():
    torch.manual_seed(0)
    head = Stack(channels=8).eval()
    levels = _levels(RETINANET_480x640, channels=8)
    want = head(levels)
    head.to(memory_format=torch.channels_last)
    got, _ = _fused_and_per_level(head, [lv.to(memory_format=torch.channels_last) for lv in levels])
    for got_output, want_output in zip(got, want, strict=True):
        for a, b in zip(got_output, want_output, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer, named",
    [
        (nn.GroupNorm(2, 4), "trunk.1 (GroupNorm) normalises each sample over all of a level"),
        (nn.BatchNorm2d(4).train(), "trunk.1 (BatchNorm2d) normalises with batch statistics"),
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), "trunk.1 (Conv2d kernel (3, 3), stride (2, 2)"),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), "dilation (2, 2)"),
        (nn.Conv2d(4, 4, 3), "padding (0, 0)"),
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"), "replicate"),
        (nn.Sigmoid(), "trunk.1 (Sigmoid) is not known to act on each pixel alone"),
    ],
)
def test_a_layer_that_would_read_across_levels_is_not_fused_and_is_named(layer, named):
    head = Stack()
    head.trunk = nn.Sequential(head.trunk[0], layer, nn.ReLU())
    with pytest.raises(NotFusable, match=named.replace("(", r"\(").replace(")", r"\)")):
        plan(head, head.branches)


def test_wider_windows_get_wider_separators():
    head = Stack(outputs=((5, 3),))
    assert plan(head, head.branches).gap == 2
    torch.manual_seed(0)
    got, want = _fused_and_per_level(head.double().eval(), _levels(ODD, dtype=torch.float64))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)


def test_a_model_without_a_planned_head_keeps_it_and_the_note_says_so():
    model = nn.Module()
    model.head = Stack()
    model.head_in_features = ["p3", "p4"]
    note = fuse_levels(model)
    assert isinstance(model.head, Stack)
    assert str(note) == (
        "fuse_levels: head Stack per level: no canvas plan "
        "(covered: FCOSHead, RetinaNetHead, StandardRPNHead)"
    )
    assert str(fuse_levels(nn.Linear(2, 2))) == "fuse_levels: no head shared by levels"


def test_the_fused_head_exports_with_its_layout_as_constants():
    """torch.export (as the package backend exports) of a fused head: fixed shapes, the same
    answers; its slices are numbers laid out in Python at the first call."""
    torch.manual_seed(0)
    head = Stack().eval()
    fused = FusedHead(head, plan(head, head.branches)).eval()
    levels = _levels(ODD)

    class Flat(nn.Module):  # export wants tensors in and out
        def __init__(self):
            super().__init__()
            self.fused = fused

        def forward(self, *features):
            return tuple(x for output in self.fused(list(features)) for x in output)

    flat = Flat().eval()
    with torch.no_grad():
        want = flat(*levels)  # the layout is made here, outside the trace
        program = torch.export.export(flat, tuple(levels), strict=False)
        got = program.module()(*levels)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
