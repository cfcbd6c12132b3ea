"""static_graph backend: the rewritten fixed-shape forward of each seed variant answers as the
eager detectron2 model does (CPU, fp32); the backend's options and refusals; and on a GPU, the
forward has no host synchronisation and replays as a CUDA graph with the same answers.

The detectron2 tests skip, with the reason, where detectron2 is missing (CI); the NMS at the
heart of the rewrite is tested against torchvision in test_static_nms.py, which runs in CI.
"""

from __future__ import annotations

import pytest
import torch

from runner import backends
from runner.run import measurement, parity
from tests.helpers import CUDA_MISSING, SMALL_CPU_RUN, seed_variants
from tests.test_detectron2 import (
    SMALL,
    assert_same_detections,
    backend_against_eager,
    variant_overrides,
)

CPU = torch.device("cpu")


def _static(cfg, exported, images, **options):
    merged = backends.validate_options("static_graph", {**cfg.backend.options, **options})
    return backends.get("static_graph")(exported, images, cfg.precision, merged)


def sync_free_and_replayed(cfg):
    """On the GPU: the rewritten forward of cfg's model called twice with CUDA's sync debug mode
    set to error (raises on any host sync), then static_graph captured and replayed. Returns
    eager's detections at the run's precision, the captured and the replayed call's, and the
    backend's callable; asserts one graph and no fallback."""
    from runner.backends.static_graph.detector import Budgets, StaticDetector
    from runner.precision import autocast

    device = torch.device("cuda", 0)
    exported, images, _ = measurement.build(cfg, device)
    opt = images.images["opt"]
    detector = StaticDetector(exported.model, cfg.postprocess, Budgets()).eval()
    with torch.no_grad(), autocast(cfg.precision, device):
        reference = exported.decode(exported.module(*opt), cfg.batch)
        detector(*opt)  # first call: cuDNN and allocator warm-up may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            detector(*opt)  # raises on any synchronising call
        finally:
            torch.cuda.set_sync_debug_mode("default")
        fn = _static(cfg, exported, images)
        first = exported.decode(fn(*opt), cfg.batch)  # captures
        replayed = exported.decode(fn(*opt), cfg.batch)
    assert "graphs=1" in fn.notes() and "fallback_calls=0/2" in fn.notes(), fn.notes()
    return reference, first, replayed, fn


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("name", list(seed_variants()))
def test_rewritten_forward_answers_as_eager_fp32(make_config, name):
    reference, output, figures, fn = backend_against_eager(make_config, name, "static_graph")
    assert "fallback_calls=0/1" in fn.notes(), fn.notes()  # the rewrite answered itself
    assert_same_detections(reference, figures)
    for ref, out in zip(reference, output, strict=True):  # same detections in the same order
        assert torch.equal(ref.classes, out.classes)


@pytest.mark.detectron2
def test_a_budget_too_small_to_vouch_falls_back_to_eager(make_config):
    """One detection candidate cannot yield 100 detections: the flag says so and the call is
    answered by the eager module (counted), never by a truncated rewrite."""
    cfg = make_config("model=retinanet", *SMALL, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        fn = _static(cfg, exported, images, max_candidates=1)
        output = exported.decode(fn(*opt), cfg.batch)
    assert len(reference[0]) > 1
    assert "fallback_calls=1/1" in fn.notes(), fn.notes()
    assert parity.compare(reference, output, cfg.bench.match_iou).match_f1 == 1.0


@pytest.mark.detectron2
def test_half_weights_cast_nothing_at_fp32_and_the_row_says_so(make_config):
    cfg = make_config("model=retinanet", *SMALL, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    fn = _static(cfg, exported, images, half_weights=True, fold_bn=True)
    assert all(p.dtype == torch.float32 for p in exported.model.parameters())
    fn(*images.images["opt"])
    assert "half_weights=n/a at fp32" in fn.notes() and "fold_bn=" in fn.notes(), fn.notes()


def test_torchvision_models_are_unsupported_with_the_reason(make_config):
    cfg = make_config(*SMALL_CPU_RUN, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    options = backends.validate_options("static_graph", cfg.backend.options)
    with pytest.raises(backends.Unsupported, match="rewrites detectron2 detectors"):
        backends.get("static_graph")(exported, images, cfg.precision, options)


def test_options_are_validated_by_name_and_value():
    with pytest.raises(ValueError, match="max_candidates"):
        backends.validate_options("static_graph", {"max_candidates": "many"})
    with pytest.raises(ValueError, match="unknown option"):
        backends.validate_options("static_graph", {"fold_batchnorm": True})


@pytest.mark.parametrize("option", ["compile_stages", "compile_nms"])
def test_options_that_change_the_compile_need_compile(option):
    with pytest.raises(ValueError, match=f"options.{option}=true .*compile"):
        backends.validate_options("static_graph", {option: True})
    backends.validate_options("static_graph", {option: True, "compile": True})


@pytest.mark.detectron2
@pytest.mark.slow
def test_compile_true_compiles_once_per_input_size(make_config):
    """The anchors are made before the first compiled call: dynamo traces one graph, not one
    that makes the anchors and, after its guard fails on the next call, a second one."""
    from torch._dynamo.utils import counters

    cfg = make_config("model=retinanet", *SMALL, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    batch = images.images["opt"]
    before = counters["stats"]["unique_graphs"]
    fn = _static(cfg, exported, images, compile=True, compile_nms=True)
    with torch.no_grad():
        for _ in range(3):
            fn(*batch)
    assert counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "model", ["mask_rcnn_fpn", "retinanet", "cascade_rcnn", "mask_rcnn_c4", "keypoint_rcnn_fpn"]
)
def test_compile_nms_makes_the_rewritten_forward_one_graph(make_config, model):
    """Without compile_nms each NMS call is a compile boundary (the RPN's and each box stage's;
    RetinaNet's one); with it dynamo traces the whole rewritten forward as one graph."""
    from runner.backends.static_graph import rewrite

    cfg = make_config(f"model={model}", *SMALL, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    batch = images.images["opt"]
    counts = {}
    for compile_nms in (False, True):
        options = {"compile": True, "compile_nms": compile_nms}
        outputs, _ = rewrite(exported, cfg.precision, options)
        with torch.no_grad():
            explained = torch._dynamo.explain(outputs)(*batch)
        counts[compile_nms] = explained.graph_count
    assert counts[True] == 1 and counts[False] > 1, counts


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("name", list(seed_variants()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_forward_has_no_host_sync_and_replays_the_same(make_config, name, precision):
    if not torch.cuda.is_available():
        pytest.skip(CUDA_MISSING)
    cfg = make_config(*variant_overrides(name), "device=cuda", f"precision={precision}")
    reference, first, replayed, fn = sync_free_and_replayed(cfg)
    assert parity.compare(first, replayed, cfg.bench.match_iou).match_f1 == 1.0
    figures = parity.compare(reference, replayed, cfg.bench.match_iou)  # eager, same precision
    if precision == "fp32":
        assert parity.verdict(figures, cfg.precision) == [], figures
    else:  # fp16 rounding can reorder ties at the top-k and NMS cut-offs
        assert figures.match_f1 > 0.95, figures


@pytest.mark.detectron2
@pytest.mark.parametrize("aligned", [True, False])
def test_one_roi_align_over_stacked_levels_pools_as_detectron2s_pooler(aligned):
    """The stacked pyramid (one ROIAlign for every level) against detectron2's ROIPooler, which
    gathers each level's boxes and pools them level by level: boxes of every level, ones that
    touch the image's right and bottom edge (where the repeated edge stands in for torchvision's
    clamp), a degenerate box, two images, and features whose sizes are not a power of two."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    from runner.backends.static_graph.pooling import box_levels, pool

    torch.manual_seed(0)
    height, width = 470, 630  # strides 4..32: 118x158, 59x79, 30x40, 15x20
    features = [torch.randn(2, 8, -(-height // s), -(-width // s)) for s in (4, 8, 16, 32)]
    pooler = ROIPooler(
        (7, 7), (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2" if aligned else "ROIAlign"
    )
    corners = torch.rand(2, 60, 2) * torch.tensor([width, height])
    sizes = torch.rand(2, 60, 2) ** 2 * torch.tensor([width, height])
    boxes = torch.cat([corners, corners + sizes], dim=2)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    boxes[0, 0] = torch.tensor([0.0, 0.0, width, height])  # the whole image: the top level
    boxes[0, 1] = torch.tensor([width - 3.0, height - 5.0, width, height])  # the corner
    boxes[1, 2] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # empty
    expected = pooler(features, [Boxes(b) for b in boxes])
    got = pool(pooler, features, boxes)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    levels_used = {int(v) for v in box_levels(pooler, boxes.reshape(-1, 4))}
    assert levels_used == {0, 1, 2, 3}, levels_used


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "model, batch", [("retinanet", 1), ("mask_rcnn_c4", 1), ("mask_rcnn_fpn", 2)]
)
def test_preprocessing_is_detectron2s_and_compiles_as_one_graph(make_config, model, batch):
    """The rewrite's preprocessing against the model's own `preprocess_image` on an image size
    no stride divides, and traced by Dynamo as one graph (fullgraph) with no data-dependent
    scalar: detectron2's padding reads its size back with `.item()`, which Inductor refused on
    the H200, leaving that piece eager."""
    from runner.backends.static_graph.detector import preprocess

    cfg = make_config(f"model={model}", *SMALL)
    exported, _, _ = measurement.build(cfg, CPU)
    net = exported.model
    torch.manual_seed(0)
    images = tuple(torch.rand(3, 101, 150) * 255 for _ in range(batch))
    expected = net.preprocess_image([{"image": im} for im in images])
    got, sizes = preprocess(net, images)
    assert sizes == [(101, 150)] * batch == [tuple(s) for s in expected.image_sizes]
    divisibility = max(net.backbone.size_divisibility, 1)  # FPN 32, C4 none
    assert got.shape == expected.tensor.shape and got.shape[-1] % divisibility == 0
    torch.testing.assert_close(got, expected.tensor, rtol=0, atol=0)

    ops: list[str] = []

    def record(gm, example_inputs):
        ops.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda *ims: preprocess(net, ims)[0], backend=record, fullgraph=True)
    torch.testing.assert_close(compiled(*images), got, rtol=0, atol=0)
    assert ops and not any("item" in op or "local_scalar" in op for op in ops), ops


@pytest.mark.detectron2
def test_heads_are_chosen_by_table_and_subclasses_are_named_not_guessed(make_config):
    """Meta-architectures and ROI heads are dispatched by class name (detector.META_ARCHITECTURES,
    roi_heads.BOX_STAGES); a subclass of an entry that is exact (PanopticFPN is a
    GeneralizedRCNN, and has an entry of its own) is unsupported with its own name, one of an
    entry that is not (a Cascade head's subclass) keeps its base's box stage."""
    from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

    from runner.backends.static_graph import roi_heads
    from runner.backends.static_graph.detector import (
        META_ARCHITECTURES,
        Budgets,
        StaticDetector,
        lookup,
    )

    cfg = make_config("model=cascade_rcnn", *SMALL)
    exported, _, _ = measurement.build(cfg, CPU)
    assert lookup(roi_heads.BOX_STAGES, exported.model.roi_heads) is roi_heads.cascade_boxes

    class MyCascade(CascadeROIHeads):
        pass

    class MyStandard(StandardROIHeads):
        pass

    exported.model.roi_heads.__class__ = MyCascade
    assert lookup(roi_heads.BOX_STAGES, exported.model.roi_heads) is roi_heads.cascade_boxes
    exported.model.roi_heads.__class__ = MyStandard
    with pytest.raises(backends.Unsupported, match="ROI heads MyStandard are not rewritten"):
        StaticDetector(exported.model, False, Budgets())

    class Panoptic(type(exported.model)):
        pass

    exported.model.__class__ = Panoptic
    with pytest.raises(backends.Unsupported, match="meta-architecture Panoptic"):
        StaticDetector(exported.model, False, Budgets())
    assert set(META_ARCHITECTURES) == {
        "FCOS",
        "GeneralizedRCNN",
        "PanopticFPN",
        "ProposalNetwork",
        "RetinaNet",
        "SemanticSegmentor",
    }
