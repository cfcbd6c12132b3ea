"""Parity: box IoU, same-class greedy matching, agreement figures and the pass/fail bounds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from runner.config import PrecisionConfig
from runner.exported import Detections, Panoptic, box_iou, match
from runner.run.parity import Figures, compare, limits, verdict, worst


def detections(boxes, scores, classes, masks=None) -> Detections:
    return Detections(
        boxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.as_tensor(scores, dtype=torch.float32),
        classes=torch.as_tensor(classes, dtype=torch.int64),
        masks=masks,
    )


FOUR = detections(
    [[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30], [0, 50, 30, 60]],
    [0.9, 0.8, 0.7, 0.6],
    [1, 2, 1, 3],
)


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(50 / 150)  # half overlap
    assert iou[0, 1] == pytest.approx(1.0)  # identical
    assert iou[0, 2] == 0.0  # disjoint
    assert iou[1, 1] == pytest.approx(4 / 100)  # contained
    assert iou[1, 0] == 0.0


def test_box_iou_degenerate_boxes_are_zero_not_nan():
    a = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    iou = box_iou(a, a)
    assert iou.item() == 0.0


def test_match_pairs_same_class_by_highest_iou():
    ref = detections([[0, 0, 10, 10], [100, 100, 110, 110]], [0.9, 0.5], [1, 1])
    out = detections(
        [[100, 100, 110, 111], [0, 0, 10, 11], [0, 0, 10, 10]], [0.5, 0.9, 0.8], [1, 1, 7]
    )
    pairs = match(ref, out, match_iou=0.5)
    assert [(r, o) for r, o, _ in pairs] == [(0, 1), (1, 0)]
    assert pairs[0][2] == pytest.approx(100 / 110)


def test_match_is_greedy_in_descending_reference_score():
    # both references overlap the one output; the higher-scored reference takes it
    ref = detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.3, 0.9], [1, 1])
    out = detections([[0, 0, 10, 10]], [0.9], [1])
    assert [(r, o) for r, o, _ in match(ref, out, 0.5)] == [(1, 0)]


def test_match_below_threshold_or_empty():
    ref = detections([[0, 0, 10, 10]], [0.9], [1])
    out = detections([[5, 0, 15, 10]], [0.9], [1])  # IoU 1/3
    assert match(ref, out, 0.5) == []
    assert len(match(ref, out, 0.3)) == 1
    assert match(ref, detections([], [], []), 0.5) == []


def test_compare_identical():
    figures = compare([FOUR], [FOUR], 0.7)
    assert figures.match_f1 == 1.0
    assert figures.box_iou == pytest.approx(1.0)
    assert figures.score_max_diff == 0.0
    assert figures.mask_iou is None
    assert (figures.num_reference, figures.num_output) == (4, 4)


def test_compare_shifted_boxes_and_scores():
    shifted = detections(
        FOUR.boxes + torch.tensor([1.0, 0.0, 1.0, 0.0]), FOUR.scores - 0.01, FOUR.classes
    )
    figures = compare([FOUR], [shifted], 0.5)
    assert figures.match_f1 == 1.0
    # each box shifted 1 px along x: IoU = (w - 1) h / ((w + 1) h)
    widths = [10, 20, 10, 30]
    expected = sum((w - 1) / (w + 1) for w in widths) / 4
    assert figures.box_iou == pytest.approx(expected)
    assert figures.score_max_diff == pytest.approx(0.01, abs=1e-6)


def test_a_missing_detection_lowers_f1_exactly():
    three = detections(FOUR.boxes[:3], FOUR.scores[:3], FOUR.classes[:3])
    figures = compare([FOUR], [three], 0.7)
    assert figures.match_f1 == pytest.approx(6 / 7)
    assert figures.box_iou == pytest.approx(1.0)
    assert (figures.num_reference, figures.num_output) == (4, 3)


def test_a_different_class_does_not_match():
    relabelled = detections(FOUR.boxes, FOUR.scores, torch.tensor([1, 2, 1, 9]))
    figures = compare([FOUR], [relabelled], 0.7)
    assert figures.match_f1 == pytest.approx(6 / 8)


def test_empty_against_empty_agrees():
    empty = detections([], [], [])
    figures = compare([empty, empty], [empty, empty], 0.7)
    assert (figures.match_f1, figures.box_iou, figures.score_max_diff) == (1.0, 1.0, 0.0)


def test_nothing_against_something_is_zero():
    figures = compare([FOUR], [detections([], [], [])], 0.7)
    assert figures.match_f1 == 0.0
    assert figures.box_iou == 0.0


def test_compare_counts_over_images():
    three = detections(FOUR.boxes[:3], FOUR.scores[:3], FOUR.classes[:3])
    figures = compare([FOUR, FOUR], [FOUR, three], 0.7)
    assert figures.match_f1 == pytest.approx(2 * 7 / 15)
    with pytest.raises(ValueError):
        compare([FOUR], [FOUR, FOUR], 0.7)


def _square_masks(n: int, size: int, fill: list[tuple[int, int]]) -> torch.Tensor:
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i, (rows, cols) in enumerate(fill):
        masks[i, 0, :rows, :cols] = True
    return masks


def test_mask_iou_of_bool_masks():
    ref_masks = _square_masks(2, 8, [(4, 4), (8, 8)])
    out_masks = _square_masks(2, 8, [(4, 2), (8, 8)])
    ref = detections(FOUR.boxes[:2], FOUR.scores[:2], FOUR.classes[:2], ref_masks)
    out = detections(FOUR.boxes[:2], FOUR.scores[:2], FOUR.classes[:2], out_masks)
    figures = compare([ref], [out], 0.7)
    assert figures.mask_iou == pytest.approx((8 / 16 + 1.0) / 2)


def test_mask_iou_of_probability_masks_binarised_at_half():
    ref_masks = torch.tensor([[[[0.9, 0.9], [0.1, 0.1]]]])
    out_masks = torch.tensor([[[[0.6, 0.4], [0.2, 0.7]]]])  # > 0.5: (0,0) and (1,1)
    ref = detections(FOUR.boxes[:1], FOUR.scores[:1], FOUR.classes[:1], ref_masks)
    out = detections(FOUR.boxes[:1], FOUR.scores[:1], FOUR.classes[:1], out_masks)
    assert compare([ref], [out], 0.7).mask_iou == pytest.approx(1 / 3)
    assert compare([ref], [ref], 0.7).mask_iou == 1.0


def test_two_empty_masks_agree():
    empty = torch.zeros(1, 1, 4, 4)
    ref = detections(FOUR.boxes[:1], FOUR.scores[:1], FOUR.classes[:1], empty)
    assert compare([ref], [ref], 0.7).mask_iou == 1.0


FP32 = PrecisionConfig(
    name="fp32", min_match=0.99, min_box_iou=0.99, max_score_diff=1e-3, min_mask_iou=0.98
)


def figures(**changes) -> Figures:
    base = Figures(
        match_f1=1.0,
        box_iou=1.0,
        score_max_diff=0.0,
        mask_iou=1.0,
        num_reference=10,
        num_output=10,
    )
    return dataclasses.replace(base, **changes)


def test_verdict_passes_perfect_figures():
    assert verdict(figures(), FP32) == []
    assert verdict(figures(mask_iou=None), FP32) == []


@pytest.mark.parametrize(
    "changes, broken",
    [
        ({"match_f1": 0.9}, "match_f1"),
        ({"box_iou": 0.5}, "box_iou"),
        ({"mask_iou": 0.5}, "mask_iou"),
        ({"score_max_diff": 0.01}, "score_max_diff"),
    ],
)
def test_verdict_names_each_broken_bound(changes, broken):
    sentences = verdict(figures(**changes), FP32)
    assert len(sentences) == 1
    assert sentences[0].startswith(broken)


def test_verdict_at_the_bound_passes():
    at_bound = figures(match_f1=0.99, box_iou=0.99, mask_iou=0.98, score_max_diff=1e-3)
    assert verdict(at_bound, FP32) == []


def test_limits_without_floor_are_the_tolerances():
    assert limits(FP32, None) == {
        "match_f1": 0.99,
        "box_iou": 0.99,
        "score_max_diff": 1e-3,
        "mask_iou": 0.98,
        "keypoint_max_dist": FP32.max_keypoint_dist,
        "sem_seg_agreement": FP32.min_sem_seg_agreement,
        "sem_seg_prob_max_diff": FP32.max_sem_seg_prob_diff,
        "panoptic_match_f1": FP32.min_panoptic_match,
        "panoptic_class_agreement": FP32.min_panoptic_class_agreement,
    }


def test_a_floor_loosens_bounds_to_its_scaled_distance_from_perfect():
    tolerances = dataclasses.replace(FP32, floor_scale=2.0)
    floor = figures(match_f1=0.8, box_iou=0.85, score_max_diff=0.2, mask_iou=0.7)
    bound = limits(tolerances, floor)
    assert bound["match_f1"] == pytest.approx(0.6)  # 1 - 2 x (1 - 0.8)
    assert bound["box_iou"] == pytest.approx(0.7)
    assert bound["score_max_diff"] == pytest.approx(0.4)  # 2 x 0.2
    assert bound["mask_iou"] == pytest.approx(0.4)
    # a backend as good as eager at this precision passes; one adding error of its own fails
    assert verdict(floor, tolerances, floor) == []
    assert verdict(figures(match_f1=0.55), tolerances, floor) != []


def test_a_floor_never_tightens_a_bound():
    # eager at this precision agrees perfectly: every bound stays the tolerance
    assert limits(FP32, figures()) == limits(FP32, None)
    assert verdict(figures(match_f1=0.995), FP32, figures()) == []


FP16 = PrecisionConfig(
    name="fp16",
    dtype="float16",
    autocast=True,
    min_match=0.9,
    min_box_iou=0.95,
    max_score_diff=0.05,
    min_mask_iou=0.9,
    floor_scale=2.0,
)


def test_a_floor_well_within_the_tolerances_leaves_them_as_they_are():
    floor = figures(match_f1=0.97, box_iou=0.99, score_max_diff=0.01, mask_iou=0.97)
    assert limits(FP16, floor) == limits(FP16, None)


def test_the_bound_moves_smoothly_with_the_floor_no_step_at_the_tolerance():
    """The old rule loosened a bound only when the floor fell below the tolerance: a floor of
    0.899 gave 0.799, one of 0.901 gave 0.9. The scaled floor gives 0.798 and 0.802."""
    below, above = figures(match_f1=0.899), figures(match_f1=0.901)
    assert limits(FP16, below)["match_f1"] == pytest.approx(0.798)
    assert limits(FP16, above)["match_f1"] == pytest.approx(0.802)


# Golden figures shaped on issue 20's R101 FPN at fp16: static_graph's F1 against the strict
# reference, and eager fp16's on the run's input then on four jittered copies. Seed 0's first
# pair is the (0.89 against one draw of 0.90: parity failed); the other figures are made
# to the spread it reports (F1 0.87-0.94 between draws and seeds), where seeds 1 and 2 passed.
R101_FP16 = {
    0: {"backend": 0.89, "eager_draws": (0.90, 0.87, 0.92, 0.88, 0.91)},
    1: {"backend": 0.92, "eager_draws": (0.91, 0.93, 0.89, 0.90, 0.94)},
    2: {"backend": 0.90, "eager_draws": (0.93, 0.90, 0.88, 0.91, 0.92)},
}


def _floor_of(draws) -> Figures:
    return dataclasses.replace(
        worst([figures(match_f1=f, box_iou=0.985, score_max_diff=0.02) for f in draws]),
        draws=len(draws),
    )


@pytest.mark.parametrize("seed", sorted(R101_FP16))
def test_the_fp16_verdict_does_not_flip_with_the_seed(seed):
    case = R101_FP16[seed]
    backend = figures(match_f1=case["backend"], box_iou=0.984, score_max_diff=0.021)
    floor = _floor_of(case["eager_draws"])
    assert floor.draws == 5 and floor.match_f1 == min(case["eager_draws"])
    assert verdict(backend, FP16, floor) == []
    # the rule it replaces: one draw (the run's input), loosened only below the tolerance
    one_draw = _floor_of(case["eager_draws"][:1])
    old_bound = one_draw.match_f1 - 0.1 if one_draw.match_f1 < FP16.min_match else 0.9
    assert (case["backend"] >= old_bound) is (seed != 0)


def test_boxes_5_px_off_still_fail_against_a_noisy_fp16_floor():
    """Teeth: the noisiest fp16 floor above, and a backend whose boxes are all 5 px off in x and
    y: 60 px boxes still match (IoU 55^2 / (2 x 60^2 - 55^2) = 0.72 >= match_iou), but their
    IoU is far under the bound (the tolerance 0.95; the scaled floor, 0.97, is tighter)."""
    floor = _floor_of(R101_FP16[0]["eager_draws"])
    shifted = [[x + 5, y + 5, x2 + 5, y2 + 5] for x, y, x2, y2 in SIXTY_PX_BOXES]
    ref = detections(SIXTY_PX_BOXES, [0.9, 0.8, 0.7], [1, 2, 3])
    out = detections(shifted, [0.9, 0.8, 0.7], [1, 2, 3])
    found = compare([ref], [out], 0.7)
    assert found.match_f1 == 1.0 and found.box_iou == pytest.approx(3025 / 4175, abs=1e-5)
    (broken,) = verdict(found, FP16, floor)
    assert broken == "box_iou 0.7246 < 0.9500"


SIXTY_PX_BOXES = [[0, 0, 60, 60], [100, 100, 160, 160], [200, 50, 260, 110]]


def test_a_floor_without_masks_keeps_the_mask_bound():
    floor = figures(match_f1=0.5, mask_iou=None)
    assert limits(FP32, floor)["mask_iou"] == FP32.min_mask_iou


def test_worst_takes_the_least_favourable_field_by_field():
    a = figures(match_f1=0.9, score_max_diff=0.01, mask_iou=None)
    b = figures(box_iou=0.8, score_max_diff=0.02, mask_iou=0.7, num_reference=3)
    w = worst([a, b])
    assert (w.match_f1, w.box_iou, w.score_max_diff, w.mask_iou) == (0.9, 0.8, 0.02, 0.7)
    assert w.num_reference == a.num_reference
    assert worst([a]).mask_iou is None


# ---- keypoints and fields no figure compares ----------------------------------------------


def _with_keypoints(base: Detections, keypoints, **extra) -> Detections:
    return dataclasses.replace(
        base, keypoints=torch.as_tensor(keypoints, dtype=torch.float32), extra=extra
    )


def test_keypoint_distance_is_the_largest_over_the_reference_box_size():
    two = detections([[0, 0, 10, 10], [20, 20, 60, 60]], [0.9, 0.8], [1, 1])  # sizes 10, 40
    ref_points = torch.zeros(2, 3, 2)
    out_points = ref_points.clone()
    out_points[0, 1] = torch.tensor([3.0, 4.0])  # 5 px off in a 10 px box: 0.5
    out_points[1, 2] = torch.tensor([0.0, 8.0])  # 8 px off in a 40 px box: 0.2
    ref = _with_keypoints(two, ref_points)
    out = _with_keypoints(two, out_points)
    assert compare([ref], [out], 0.7).keypoint_max_dist == pytest.approx(0.5)
    assert compare([ref], [ref], 0.7).keypoint_max_dist == 0.0
    # only matched pairs count: drop the first output detection, the 0.2 remains
    out_one = Detections(out.boxes[1:], out.scores[1:], out.classes[1:], keypoints=out_points[1:])
    assert compare([ref], [out_one], 0.7).keypoint_max_dist == pytest.approx(0.2)


def test_keypoint_distance_is_none_without_keypoints_and_checked_by_verdict():
    assert compare([FOUR], [FOUR], 0.7).keypoint_max_dist is None
    assert verdict(figures(keypoint_max_dist=FP32.max_keypoint_dist), FP32) == []
    (sentence,) = verdict(figures(keypoint_max_dist=0.3), FP32)
    assert sentence.startswith("keypoint_max_dist 0.3 >")


def test_a_keypoint_floor_loosens_the_bound_and_worst_takes_the_largest():
    floor = figures(keypoint_max_dist=0.4)
    assert limits(FP32, floor)["keypoint_max_dist"] == pytest.approx(0.8)
    assert verdict(figures(keypoint_max_dist=0.75), FP32, floor) == []
    w = worst([figures(keypoint_max_dist=0.1), figures(keypoint_max_dist=None)])
    assert w.keypoint_max_dist == 0.1
    assert worst([figures(), figures()]).keypoint_max_dist is None


def test_fields_no_figure_compares_are_named_not_dropped():
    ref = _with_keypoints(FOUR, torch.zeros(4, 2, 2), keypoint_scores=torch.zeros(4, 2))
    out = _with_keypoints(FOUR, torch.zeros(4, 2, 2), keypoint_scores=torch.ones(4, 2))
    assert compare([ref], [out], 0.7).unchecked == ("keypoint_scores",)
    masked = dataclasses.replace(FOUR, masks=torch.ones(4, 1, 2, 2))
    one_sided = compare([masked], [FOUR], 0.7)
    assert one_sided.unchecked == ("masks (only the reference has it)",)
    assert one_sided.mask_iou is None
    assert compare([FOUR], [FOUR], 0.7).unchecked == ()
    a, b = figures(unchecked=("b", "a")), figures(unchecked=("a", "c"))
    assert worst([a, b]).unchecked == ("a", "b", "c")
    assert verdict(figures(unchecked=("x",)), FP32) == []  # named in the row, not a failure


# ---- segmentation: semantic (sem_seg) and panoptic, and answers without instances ----


def semantic(logits) -> Detections:
    """An answer of semantic segmentation only (SemanticSegmentor): no instances."""
    empty = detections([], [], [])
    return dataclasses.replace(empty, instances=False, sem_seg=torch.as_tensor(logits))


def test_semantic_figures_count_pixels_labelled_alike_and_the_largest_probability_gap():
    ref = torch.zeros(3, 2, 2)
    ref[1] = 5.0  # every pixel: class 1
    out = ref.clone()
    out[2, 0, 0] = 10.0  # one pixel of four now class 2
    figures = compare([semantic(ref)], [semantic(out)], 0.7)
    assert figures.sem_seg_agreement == pytest.approx(0.75)
    expected = float((ref[:, 0, 0].softmax(0) - out[:, 0, 0].softmax(0)).abs().max())
    assert figures.sem_seg_prob_max_diff == pytest.approx(expected)
    # without instances on either side the detection figures say nothing, rather than 1.0
    assert figures.match_f1 is None and figures.box_iou is None
    assert figures.score_max_diff is None and figures.unchecked == ()
    broken = verdict(figures, FP32)
    assert broken[0].startswith("sem_seg_agreement 0.7500 <")
    assert broken[1].startswith("sem_seg_prob_max_diff")
    same = compare([semantic(ref)], [semantic(ref)], 0.7)
    assert same.sem_seg_agreement == 1.0 and same.sem_seg_prob_max_diff == 0.0
    assert verdict(same, FP32) == []


def test_a_segmentation_only_one_side_has_is_named_unchecked():
    with_seg = dataclasses.replace(FOUR, sem_seg=torch.zeros(2, 4, 4))
    figures = compare([with_seg], [FOUR], 0.7)
    assert figures.sem_seg_agreement is None
    assert figures.unchecked == ("sem_seg (only the reference has it)",)


def panoptic(segments, ids, categories, isthing) -> Panoptic:
    return Panoptic(
        segments=torch.as_tensor(segments),
        ids=torch.as_tensor(ids),
        categories=torch.as_tensor(categories),
        isthing=torch.as_tensor(isthing),
    )


def test_panoptic_segments_match_by_iou_whatever_their_class_and_agreement_counts_classes():
    # reference: segment 1 (left half, a thing of class 3), segment 2 (right half, stuff 7)
    ref = panoptic([[1, 1, 2, 2]] * 4, [1, 2], [3, 7], [True, False])
    # output: same pixels under other ids; the right half now says class 8
    out = panoptic([[5, 5, 6, 6]] * 4, [5, 6], [3, 8], [True, False])
    figures = compare(
        [dataclasses.replace(FOUR, panoptic=ref)], [dataclasses.replace(FOUR, panoptic=out)], 0.7
    )
    assert figures.panoptic_match_f1 == 1.0
    assert figures.panoptic_class_agreement == 0.5
    # a segment that shrank to a quarter of its pixels no longer matches (IoU 0.25 <= 0.5)
    shrunk = panoptic([[1, 0, 2, 2]] + [[0, 0, 2, 2]] * 3, [1, 2], [3, 7], [True, False])
    figures = compare(
        [dataclasses.replace(FOUR, panoptic=ref)],
        [dataclasses.replace(FOUR, panoptic=shrunk)],
        0.7,
    )
    assert figures.panoptic_match_f1 == 0.5 and figures.panoptic_class_agreement == 1.0
    assert any(s.startswith("panoptic_match_f1 0.5000 <") for s in verdict(figures, FP32))


def test_proposals_decode_as_one_class_detections():
    """ProposalNetwork answers boxes and objectness logits, no classes: every class is 0."""
    from runner.exported import detections as decoded

    found = decoded(
        "torchvision", ("boxes", "scores"), (torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([2.5]))
    )
    assert found.instances and found.classes.tolist() == [0] and found.scores.tolist() == [2.5]
    only_seg = decoded("torchvision", ("sem_seg",), (torch.zeros(2, 3, 3),))
    assert not only_seg.instances and len(only_seg) == 0 and only_seg.sem_seg.shape == (2, 3, 3)
