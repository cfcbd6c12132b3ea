"""static_graph's option fuse_levels (runner/backends/static_graph/canvas.py): a head shared by
the pyramid levels run once over all of them, laid out in one zero canvas, answers as the head
run per level does.

CPU, for real, in CI: the layout (the seed's canvas sizes; levels kept apart); stacks of random
convolutions over levels of the seed's shapes and of odd ones, fused against per level (float64
to the last bits: the windows are the same; fp32 to its rounding); the layers that would read
across levels refused, naming them; the fused head traced whole by Dynamo and exported by
torch.export. detectron2-marked:
detectron2's own heads (RetinaNet's, FCOS's, the RPN's) fused against per level, the norms that
cannot be fused said in the notes, and static_graph with fuse_levels=true against itself without
and against eager on RetinaNet, FCOS and Mask R-CNN FPN; its rewrite exported, with another
package key.
"""

from __future__ import annotations

import copy

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
ODD_5 = [(7, 9), (4, 5), (1, 1), (2, 17), (3, 2)]  # five levels, as a dense head takes
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


def test_the_fused_head_traces_whole_with_no_host_read():
    """Dynamo's whole-graph trace (the CPU's stand-in for a CUDA graph capture and what
    compile=true compiles): no graph break, no data-dependent op; the layout it made at the
    trace is kept, as a tensor, for the next calls."""
    from tests.helpers import trace_sync_free

    torch.manual_seed(0)
    head = Stack().eval()
    fused = FusedHead(head, plan(head, head.branches))
    levels = _levels(ODD)
    got = trace_sync_free(lambda *features: fused(list(features)), *levels)
    with torch.no_grad():
        want = head(levels)
    for got_output, want_output in zip(got, want, strict=True):
        for a, b in zip(got_output, want_output, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ((_, mask),) = fused.layouts.values()
    assert type(mask) is torch.Tensor


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


# --- detectron2's heads ----------------------------------------------------------------------


def _retinanet_head(norm="", cls="RetinaNetHead", channels=16):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.meta_arch.fcos import FCOSHead
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    torch.manual_seed(0)
    shapes = [ShapeSpec(channels=channels)] * 5
    if cls == "FCOSHead":
        head = FCOSHead(input_shape=shapes, num_classes=3, conv_dims=[channels] * 4, norm=norm)
    else:
        head = RetinaNetHead(
            input_shape=shapes, num_classes=3, num_anchors=2, conv_dims=[channels] * 4, norm=norm
        )
    for module in head.modules():  # random weights larger than the zoo's init (std 0.01)
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return head.eval()


def _rpn_head(conv_dims=(-1,), channels=16):
    from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

    torch.manual_seed(0)
    head = StandardRPNHead(in_channels=channels, num_anchors=3, conv_dims=list(conv_dims))
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return head.eval()


def _against_per_level(head, shapes, channels=16, dtype=torch.float32):
    from runner.backends.static_graph.canvas import HEADS

    head = head.to(dtype)
    fused = FusedHead(head, plan(head, HEADS[type(head).__name__]))
    levels = _levels(shapes, channels=channels, dtype=dtype)
    with torch.no_grad():
        got, want = fused(levels), head(levels)
    assert type(got) is tuple and len(got) == len(want)
    tolerance = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for got_output, want_output in zip(got, want, strict=True):
        assert len(got_output) == len(want_output) == len(shapes)
        for a, b in zip(got_output, want_output, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **tolerance)
    return fused


@pytest.mark.detectron2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", ["RetinaNetHead", "FCOSHead"])
def test_detectron2s_dense_heads_fused_answer_as_per_level(cls, dtype):
    fused = _against_per_level(_retinanet_head(cls=cls), RETINANET_480x640, dtype=dtype)
    assert fused.plan.convolutions == (10 if cls == "RetinaNetHead" else 11)
    _against_per_level(_retinanet_head(cls=cls), ODD_5, dtype=dtype)


@pytest.mark.detectron2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv_dims", [(-1,), (-1, 8)])
def test_detectron2s_rpn_head_fused_answers_as_per_level(conv_dims, dtype):
    """StandardRPNHead's `conv`: one detectron2 Conv2d with its ReLU, or (several conv_dims) a
    Sequential of them; its 1x1 outputs read no separator, so nothing needs re-zeroing after."""
    fused = _against_per_level(_rpn_head(conv_dims), RPN_480x640, dtype=dtype)
    assert fused.plan.convolutions == len(conv_dims) + 2
    _against_per_level(_rpn_head(conv_dims), ODD, dtype=dtype)


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "norm, why",
    [
        ("GN", "cls_subnet.1 (GroupNorm) normalises each sample over all of a level's pixels"),
        ("BN", "cls_subnet.1 (CycleBatchNormList) keeps one BatchNorm per level, taken in turn"),
    ],
)
def test_a_head_with_a_norm_over_a_levels_pixels_runs_per_level_and_the_note_says_why(norm, why):
    model = nn.Module()
    model.head = head = _retinanet_head(norm=norm, channels=32)  # GN: 32 groups
    model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]
    note = str(fuse_levels(model))
    assert model.head is head
    assert note == f"fuse_levels: head RetinaNetHead per level: {why}"


@pytest.mark.detectron2
def test_a_frozen_batchnorm_head_is_fused():
    """FrozenBatchNorm2d (and BatchNorm2d at inference) is per channel x * scale + shift."""
    from detectron2.layers import FrozenBatchNorm2d

    model = nn.Module()
    model.head = _retinanet_head(norm="FrozenBN")
    model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]
    for module in model.head.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.bias.uniform_(-1, 1)
            module.running_mean.uniform_(-1, 1)
    note = fuse_levels(model)
    assert isinstance(model.head, FusedHead)
    _against_per_level(model.head.head, ODD_5, dtype=torch.float64)
    assert str(note) == "fuse_levels: head RetinaNetHead fused: 10 conv calls instead of 50"


# --- static_graph with fuse_levels, whole detectors -------------------------------------------


def _assert_same_in_order(fused, unfused) -> None:
    """The same detections in the same order (the per-level head and the fused one differ only
    in the convolutions' rounding)."""
    for a, b in zip(fused, unfused, strict=True):
        assert len(a) == len(b) > 0
        assert torch.equal(a.classes, b.classes)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)


def _variant(make_config, name: str):
    """A seed variant, small, on the CPU at fp32 (test_detectron2's backend_against_eager):
    its config, exported model and inputs."""
    from runner.run import measurement
    from tests.test_detectron2 import FEWER_PROPOSALS, SMALL, variant_overrides

    cfg = make_config(*variant_overrides(name), *SMALL, "backend=static_graph")
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    exported, images, _ = measurement.build(cfg, torch.device("cpu"))
    return cfg, exported, images


def _static_graph(cfg, exported, images, **options):
    from runner import backends

    checked = backends.validate_options("static_graph", {**cfg.backend.options, **options})
    return backends.get("static_graph")(exported, images, cfg.precision, checked)


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, head, convolutions",
    [("RetinaNet", "head RetinaNetHead", 50), ("MaskRCNNFPN", "rpn_head StandardRPNHead", 15)],
)
def test_static_graph_with_fused_levels_answers_as_without_and_as_eager(
    make_config, name, head, convolutions
):
    from runner.run import parity
    from tests.test_detectron2 import assert_same_detections

    cfg, exported, images = _variant(make_config, name)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        # fuse_levels alone (no weight rewrite) still works on a copy of the model
        fn = _static_graph(
            cfg, exported, images, fuse_levels=True, fold_bn=False, half_weights=False
        )
        fused = exported.decode(fn(*opt), cfg.batch)
        unfused = exported.decode(
            _static_graph(cfg, exported, images, fuse_levels=False)(*opt), cfg.batch
        )
    assert all(len(d) > 0 for d in reference), "no detections: parity would prove nothing"
    assert_same_detections(reference, parity.compare(reference, fused, cfg.bench.match_iou))
    _assert_same_in_order(fused, unfused)
    notes = fn.notes()
    assert f"{head} fused: " in notes and f"instead of {convolutions}, canvas " in notes, notes
    assert "fallback_calls=0/1" in notes, notes
    # the exported module (the eager fallback) keeps its own head
    assert not any(isinstance(m, FusedHead) for m in exported.model.modules())


def _pointwise_norms(model, images) -> None:
    """FCOS's head with each GroupNorm replaced by a BatchNorm2d at inference holding the
    per-channel statistics of that GroupNorm's input on `images`: a norm of the same scale that
    acts on each pixel alone, so the head can be fused. (Without a norm, random weights
    saturate the scores at 1.0, and the ties leave the detections' order to chance.)"""
    from tests.test_static_fcos import _eager

    seen: dict = {}
    hooks = [
        module.register_forward_hook(
            lambda _, given, __, name=name: seen.setdefault(name, []).append(
                given[0].transpose(0, 1).flatten(1)
            )
        )
        for name, module in model.head.named_modules()
        if isinstance(module, nn.GroupNorm)
    ]
    with torch.no_grad():
        _eager(model, images)
    for hook in hooks:
        hook.remove()
    for name, inputs in seen.items():
        values, group_norm = torch.cat(inputs, dim=1), model.head.get_submodule(name)
        norm = nn.BatchNorm2d(group_norm.num_channels).eval()
        with torch.no_grad():
            norm.running_mean.copy_(values.mean(dim=1))
            norm.running_var.copy_(values.var(dim=1))
            norm.weight.copy_(group_norm.weight)
            norm.bias.copy_(group_norm.bias)
        parent, _, attribute = name.rpartition(".")
        setattr(model.head.get_submodule(parent), attribute, norm)


@pytest.mark.detectron2
@pytest.mark.slow
def test_fcos_with_fused_levels_answers_as_without_and_as_eager():
    """FCOS's zoo head has GroupNorm: it runs per level, and the notes say why. With pointwise
    norms in their place its head is fused (BatchNorm's shift re-zeroed at the separators), and
    the rewritten FCOS answers as without fusing and as detectron2's own inference."""
    from runner.backends.static_graph.detector import Budgets, StaticDetector
    from tests.test_static_fcos import _eager, _fcos, _static

    model = _fcos(torch.device("cpu"))
    note = str(fuse_levels(copy.deepcopy(model)))
    assert note == (
        "fuse_levels: head FCOSHead per level: cls_subnet.1 (GroupNorm) normalises each sample "
        "over all of a level's pixels"
    )
    generator = torch.Generator().manual_seed(0)
    images = tuple(torch.rand(3, 160, 224, generator=generator) * 255 for _ in range(2))
    _pointwise_norms(model, images)
    fused_model = copy.deepcopy(model)
    fusion = fuse_levels(fused_model)
    assert isinstance(fused_model.head, FusedHead), str(fusion)
    with torch.no_grad():
        reference = _eager(model, images)
        unfused, _ = _static(StaticDetector(model, False, Budgets()).eval(), images)
        fused, exact = _static(StaticDetector(fused_model, False, Budgets()).eval(), images)
    assert exact.all()
    _assert_same_in_order(fused, reference)
    _assert_same_in_order(fused, unfused)
    assert str(fusion).startswith("fuse_levels: head FCOSHead fused: 11 conv calls instead of 55")


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_fused_rewrite_exports_and_its_package_gets_another_key(make_config):
    """torch.export (as aot_package exports) of the whole rewritten RetinaNet with
    fuse_levels=true: the same answers as the forward; its graph differs from the unfused
    rewrite's, so its package key does too (build.package_key: a package of one is never
    reused for the other)."""
    from runner import backends
    from runner.backends.aot_package import build
    from runner.backends.static_graph import rewrite

    cfg, exported, images = _variant(make_config, "RetinaNet")
    opt = images.images["opt"]
    keys = {}
    for fuse in (True, False):
        options = backends.validate_options(
            "aot_package", {**_package_options(cfg), "fuse_levels": fuse}
        )
        outputs, notes = rewrite(exported, cfg.precision, options)
        with torch.no_grad():
            want = outputs(*opt)  # lays out the canvas and makes the anchors, outside the trace
            program = build.export(outputs, opt)
            got = program.module()(*opt)
        for name, a, b in zip(outputs.fields.names, want, got, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        keys[fuse] = build.package_key(program, torch.device("cpu"), {})
        assert any("fuse_levels: head RetinaNetHead fused" in str(n) for n in notes) == fuse
    assert keys[True] != keys[False]


def _package_options(cfg) -> dict:
    """conf/backend/aot_package.yaml's options (the test's config has static_graph's)."""
    import yaml

    from tests.helpers import REPO

    text = (REPO / "conf" / "backend" / "aot_package.yaml").read_text()
    return dict(yaml.safe_load(text)["options"])


def test_fuse_levels_is_a_bool_for_static_graph_and_aot_package():
    from runner import backends

    for backend in ("static_graph", "aot_package"):
        assert backends.validate_options(backend, {"fuse_levels": True}) == {"fuse_levels": True}
        with pytest.raises(ValueError, match=r"options.fuse_levels='yes'; allowed: bool"):
            backends.validate_options(backend, {"fuse_levels": "yes"})
        with pytest.raises(ValueError, match=r"options.fuse_levels=1; allowed: bool"):
            backends.validate_options(backend, {"fuse_levels": 1})
