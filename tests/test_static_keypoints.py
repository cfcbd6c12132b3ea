"""static_graph's keypoint head (runner/backends/static_graph/keypoints.py): the fixed-budget
heatmap decoding against detectron2's own `heatmaps_to_keypoints` and F.interpolate, and the
whole rewritten Keypoint R-CNN against the eager model (CPU, fp32): the same detections as a
set, keypoints within the stated bound; on a GPU, no host sync and the same answers replayed.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from runner import backends
from runner.run import measurement, parity
from tests.helpers import CUDA_MISSING, trace_sync_free
from tests.test_detectron2 import assert_same_detections

CPU = torch.device("cpu")
KEYPOINT_MODEL = ("model=keypoint_rcnn_fpn", "inputs.height=192", "inputs.width=256")
FEWER_PROPOSALS = {"MODEL.RPN.POST_NMS_TOPK_TEST": 200}
# the bound (keypoints.py): a keypoint is eager's argmax pixel, or where two pixels of a box's
# upsampled map tie to within rounding, the other one: in a smooth peak a neighbour, at most one
# output pixel away, and an output pixel is at most one image pixel (ceil(w) >= w) on each axis
KEYPOINT_PIXELS = 1.5  # image pixels (sqrt(2) for a diagonal neighbour)


def _boxes(n: int, d: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random boxes inside the image, of every size: tiny, ones under 56 pixels (the heatmap
    shrinks) and ones of the whole image (it grows many times)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, d, 2, generator=generator) * torch.tensor([width, height])
    size = torch.rand(n, d, 2, generator=generator) ** 2 * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + size], dim=2)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    boxes[0, 0] = torch.tensor([0.0, 0.0, width, height])
    boxes[0, 1] = torch.tensor([10.0, 10.0, 10.4, 10.2])  # under a pixel: clamped to 1 x 1
    return boxes


def _smooth_maps(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    """Heatmap logits like a trained head's: one broad peak per keypoint over low noise, so
    that neighbouring upsampled pixels come close to a tie at the top."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(56.0)
    centre = torch.rand(n, d, k, 2, generator=generator) * 56
    spread = 2 + torch.rand(n, d, k, 1, 1, generator=generator) * 6
    dy = (grid[:, None] - centre[..., 1, None, None]) ** 2
    dx = (grid[None, :] - centre[..., 0, None, None]) ** 2
    noise = torch.randn(n, d, k, 56, 56, generator=generator) * 0.05
    return 8 * torch.exp(-(dx + dy) / (2 * spread**2)) + noise


@pytest.mark.detectron2
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_decoding_is_detectron2s_heatmaps_to_keypoints(kind):
    """Per valid box the same keypoints as detectron2's per-box loop (bicubic resize to the
    box's size, argmax), scores to rounding; invalid slots are zeros."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    from detectron2.structures.keypoints import heatmaps_to_keypoints as reference

    from runner.backends.static_graph.keypoints import heatmaps_to_keypoints

    n, d, k, height, width = 2, 12, 17, 96, 128
    boxes = _boxes(n, d, height, width)
    maps = torch.randn(n, d, k, 56, 56) * 3 if kind == "random" else _smooth_maps(n, d, k)
    valid = torch.ones(n, d, dtype=torch.bool)
    valid[1, 3:5] = False
    got, fits = heatmaps_to_keypoints(maps, boxes, valid, 4 * height * width)
    assert fits.all()
    moved = 0
    for i in range(n):
        rows = valid[i].nonzero()[:, 0]
        want = reference(maps[i, rows], boxes[i, rows])[..., [0, 1, 3]]
        have = got[i, rows]
        distance = (want[..., :2] - have[..., :2]).norm(dim=-1)
        moved += int((distance > 0).sum())
        torch.testing.assert_close(have[..., 2], want[..., 2], rtol=1e-4, atol=1e-6)
        assert distance.max() <= KEYPOINT_PIXELS, distance.max()  # at most a near-tie's neighbour
    assert moved <= 2, f"{moved} keypoints moved"  # ties to within rounding are rare
    assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))


@pytest.mark.parametrize("side", [(56, 56), (28, 40)])
def test_upsampled_values_are_f_interpolates_to_rounding(side):
    """The bound's premise: every box's laid-out pixels are F.interpolate(bicubic)'s values of
    its heatmaps at the box's size, to fp32 rounding (measured up to 1.8e-5 of the map's
    largest magnitude: the same sums, rounded in another order), nothing past the last box."""
    from runner.backends.static_graph.keypoints import upsampled

    n, d, k, height, width = 1, 6, 3, 96, 128
    boxes = _boxes(n, d, height, width, seed=1)
    maps = torch.randn(n, d, k, *side) * 3
    valid = torch.ones(n, d, dtype=torch.bool)
    budget = 4 * height * width
    value, box, local, fits = upsampled(maps, boxes, valid, budget)
    assert fits.all()
    widths = (boxes[0, :, 2] - boxes[0, :, 0]).clamp(min=1).ceil().long()
    heights = (boxes[0, :, 3] - boxes[0, :, 1]).clamp(min=1).ceil().long()
    start = 0
    worst = 0.0
    for j in range(d):
        size = (int(heights[j]), int(widths[j]))
        want = F.interpolate(maps[0, j][None], size=size, mode="bicubic", align_corners=False)[0]
        area = size[0] * size[1]
        assert torch.equal(box[0, start : start + area], torch.full((area,), j))
        assert torch.equal(local[0, start : start + area], torch.arange(area))
        have = value[0, start : start + area].T.reshape(k, *size)
        worst = max(worst, float((have - want).abs().max()))
        start += area
    assert worst <= 5e-5 * float(maps.abs().max()), worst
    assert torch.isneginf(value[0, start:]).all()


def test_an_image_whose_boxes_overflow_the_budget_is_flagged():
    from runner.backends.static_graph.keypoints import heatmaps_to_keypoints

    boxes = torch.tensor([[[0.0, 0.0, 40.0, 30.0], [0.0, 0.0, 40.0, 30.0]]] * 2)
    valid = torch.tensor([[True, True], [True, False]])
    _, fits = heatmaps_to_keypoints(torch.randn(2, 2, 3, 56, 56), boxes, valid, 2000)
    assert fits.tolist() == [False, True]  # 2 x 1200 pixels do not fit 2000; 1200 do


def _keypoint_config(make_config, *overrides):
    cfg = make_config(*KEYPOINT_MODEL, "device=cpu", *overrides)
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    return cfg


def _static(cfg, exported, images, **options):
    merged = backends.validate_options("static_graph", {**cfg.backend.options, **options})
    return backends.get("static_graph")(exported, images, cfg.precision, merged)


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("postprocess", [False, True])
def test_rewritten_keypoint_rcnn_answers_as_eager_fp32(make_config, postprocess):
    """Keypoint R-CNN FPN rewritten, against the eager model at fp32 on the CPU: the same
    detections as a set (parity's matching), keypoints within KEYPOINT_PIXELS of eager's (and
    measured: the same argmax everywhere), the raw heatmaps the same to the folded batch norms'
    rounding; the call answered by the rewrite itself, not the fallback."""
    cfg = _keypoint_config(
        make_config, "backend=static_graph", f"postprocess={str(postprocess).lower()}"
    )
    exported, images, _ = measurement.build(cfg, CPU)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        fn = _static(cfg, exported, images)
        output = exported.decode(fn(*opt), cfg.batch)
    assert all(len(d) > 0 for d in reference), "no detections: parity would prove nothing"
    assert "fallback_calls=0/1" in fn.notes(), fn.notes()
    figures = parity.compare(reference, output, cfg.bench.match_iou)
    assert_same_detections(reference, figures)
    assert figures.keypoint_max_dist is not None, figures
    assert parity.verdict(figures, cfg.precision) == [], figures  # keypoints within 5 % of a box
    for ref, out in zip(reference, output, strict=True):
        assert out.keypoints.shape == ref.keypoints.shape
        assert set(out.extra) == set(ref.extra) == {"keypoint_heatmaps", "keypoint_scores"}
        pairs = parity.match(ref, out, cfg.bench.match_iou)
        mine = [r for r, _, _ in pairs]
        theirs = [o for _, o, _ in pairs]
        pixels = (out.keypoints[theirs] - ref.keypoints[mine]).norm(dim=-1)
        assert pixels.max() <= KEYPOINT_PIXELS, pixels.max()
        # measured at fp32 on the CPU: every argmax the same; what remains is the boxes' rounding
        assert (pixels > 1e-3).sum() <= 1, pixels[pixels > 1e-3]
        torch.testing.assert_close(  # fold_bn: the head's convolutions round otherwise
            out.extra["keypoint_heatmaps"][theirs],
            ref.extra["keypoint_heatmaps"][mine],
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.detectron2
def test_a_keypoint_budget_too_small_falls_back_to_eager(make_config):
    cfg = _keypoint_config(make_config, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, CPU)
    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        fn = _static(cfg, exported, images, keypoint_area=1e-4)  # a few pixels per image
        output = exported.decode(fn(*opt), cfg.batch)
    assert len(reference[0]) > 0
    assert "fallback_calls=1/1" in fn.notes(), fn.notes()
    assert parity.compare(reference, output, cfg.bench.match_iou).keypoint_max_dist == 0.0


@pytest.mark.detectron2
def test_keypoint_heads_are_chosen_by_table_and_others_are_named(make_config):
    from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead

    from runner.backends.static_graph.detector import Budgets, StaticDetector

    cfg = _keypoint_config(make_config)
    exported, _, _ = measurement.build(cfg, CPU)

    class MyKeypointHead(KRCNNConvDeconvUpsampleHead):
        pass

    exported.model.roi_heads.keypoint_head.__class__ = MyKeypointHead
    with pytest.raises(backends.Unsupported, match="keypoint head MyKeypointHead"):
        StaticDetector(exported.model, False, Budgets())


def test_keypoint_area_is_validated():
    with pytest.raises(ValueError, match="keypoint_area"):
        backends.validate_options("static_graph", {"keypoint_area": "all"})


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_keypoint_rcnn_has_no_host_sync_and_replays_the_same(make_config, precision):
    if not torch.cuda.is_available():
        pytest.skip(CUDA_MISSING)
    from tests.test_static_graph import sync_free_and_replayed

    cfg = make_config(*KEYPOINT_MODEL, "device=cuda", f"precision={precision}")
    reference, first, replayed, fn = sync_free_and_replayed(cfg)
    again = parity.compare(first, replayed, cfg.bench.match_iou)
    assert again.match_f1 == 1.0 and again.keypoint_max_dist == 0.0, again
    figures = parity.compare(reference, replayed, cfg.bench.match_iou)  # eager, same precision
    if precision == "fp32":
        assert parity.verdict(figures, cfg.precision) == [], figures
    else:  # fp16 rounding can reorder ties at the top-k and NMS cut-offs
        assert figures.match_f1 > 0.95, figures


def test_outputs_name_their_optional_fields_and_slice_in_eagers_order():
    """The Outputs tuple's optional fields come as whole groups (keypoints as two) in one
    order, named by its Fields, and each image's valid slots leave in the eager module's order:
    boxes, scores, classes, then keypoint_heatmaps, keypoints, masks (detectron2's pred_* names
    sorted)."""
    from runner.backends.static_graph.outputs import FIELDS, Fields, slice_detections

    n, d = 2, 4
    boxes, scores, classes = torch.rand(n, d, 4), torch.rand(n, d), torch.zeros(n, d).long()
    counts, exact = torch.tensor([3, 1]), torch.ones(n, dtype=torch.bool)
    masks, heatmaps, points = (
        torch.rand(n, d, 1, 5, 5),
        torch.rand(n, d, 2, 7, 7),
        torch.rand(n, d, 2, 3),
    )
    assert Fields().names == FIELDS
    assert Fields(("keypoint_heatmaps", "keypoints")).names[-2:] == (
        "keypoint_heatmaps",
        "keypoints",
    )
    fields = Fields(("masks", "keypoint_heatmaps", "keypoints"))
    assert fields.names[len(FIELDS) :] == ("masks", "keypoint_heatmaps", "keypoints")
    for wrong in (("keypoints",), ("keypoint_heatmaps", "keypoints", "masks")):  # half, order
        with pytest.raises(ValueError, match="whole groups"):
            Fields(wrong)
    both = (boxes, scores, classes, counts, exact, masks, heatmaps, points)
    sliced = slice_detections(both, [3, 1], fields)
    assert len(sliced) == 2 * 6
    expected = [boxes, scores, classes, heatmaps, points, masks]
    for i, count in enumerate([3, 1]):
        for got, want in zip(sliced[i * 6 : (i + 1) * 6], expected, strict=True):
            assert torch.equal(got, want[i, :count])
    with pytest.raises(ValueError):  # a tuple its Fields do not describe
        slice_detections(both[:-1], [3, 1], fields)


def test_the_decoding_traces_as_one_graph_without_data_dependent_scalars():
    """Sync-free by construction: Dynamo traces the whole decoding as one graph (fullgraph)
    with no `.item()`, `nonzero` or other data-dependent shape, and the graph answers as the
    eager function does."""
    from runner.backends.static_graph.keypoints import heatmaps_to_keypoints

    n, d, k, height, width = 2, 5, 4, 48, 64
    boxes = _boxes(n, d, height, width, seed=2)
    maps = torch.randn(n, d, k, 56, 56)
    valid = torch.rand(n, d, generator=torch.Generator().manual_seed(2)) > 0.3
    got, fits = trace_sync_free(
        lambda m, b, v: heatmaps_to_keypoints(m, b, v, 4 * height * width), maps, boxes, valid
    )
    want, want_fits = heatmaps_to_keypoints(maps, boxes, valid, 4 * height * width)
    assert torch.equal(got, want) and torch.equal(fits, want_fits)
