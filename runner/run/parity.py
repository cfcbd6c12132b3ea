"""Parity: takes reference detections (eager fp32, TF32 off) and a backend's detections on the
same input, returns agreement figures and a pass/fail against the precision's tolerances.

Detections are matched per image, greedily in descending reference score: a reference detection
matches the unmatched output detection of the same class with the highest IoU, if that IoU is at
least `match_iou`. Figures:
  match_f1           2 * matched / (reference count + output count); 1.0 when both are empty
  box_iou            mean IoU of matched boxes
  score_max_diff     largest |score difference| of a matched pair
  mask_iou           mean IoU of matched masks binarised at 0.5 (None for detectors without masks)
  keypoint_max_dist  largest distance between a matched pair's keypoints (same index, x and y),
                     divided by sqrt(area) of the reference box, the box's size: 0.05 means off
                     by 5 % of the box's size (None for detectors without keypoints)
  sem_seg_agreement  semantic segmentation (SemanticSegmentor, Panoptic FPN): the fraction of
                     pixels whose label (the argmax over classes) is the reference's (1.0: every
                     pixel labelled alike)
  sem_seg_prob_max_diff  the largest difference of a class probability (softmax over classes of
                     the per-pixel logits) between reference and output, over pixels and classes
  panoptic_match_f1  panoptic segmentation (Panoptic FPN, post-processed): segments matched one
                     to one at IoU > 0.5 of their pixels, whatever their class (the panoptic
                     quality's rule; segments do not overlap, so a match is unique):
                     2 * matched / (reference segments + output segments); 1.0 when both have none
  panoptic_class_agreement  of the matched segments, the fraction whose category and thing/stuff
                     kind agree (1.0 without matched segments when both have none)
  Models without instances (semantic segmentation) have no match_f1, box_iou or score_max_diff;
  proposals (ProposalNetwork) match as detections of one class, their objectness logits as scores.
  unchecked          fields no figure compares (Detections.extra: keypoint heatmaps and
                     per-keypoint scores, anything else a model returns), and a field only one
                     side has: named in the row, never dropped in silence
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.config import PrecisionConfig
from runner.exported import Detections, match

HIGHER_IS_BETTER = (
    "match_f1",
    "box_iou",
    "mask_iou",
    "sem_seg_agreement",
    "panoptic_match_f1",
    "panoptic_class_agreement",
)
LOWER_IS_BETTER = ("score_max_diff", "keypoint_max_dist", "sem_seg_prob_max_diff")
FIGURES = (
    "match_f1",
    "box_iou",
    "score_max_diff",
    "mask_iou",
    "keypoint_max_dist",
    "sem_seg_agreement",
    "sem_seg_prob_max_diff",
    "panoptic_match_f1",
    "panoptic_class_agreement",
)
PANOPTIC_IOU = 0.5  # a segment matches at more than this IoU (panoptic quality's rule)
# the PrecisionConfig tolerance that bounds each figure
TOLERANCES = {
    "match_f1": "min_match",
    "box_iou": "min_box_iou",
    "score_max_diff": "max_score_diff",
    "mask_iou": "min_mask_iou",
    "keypoint_max_dist": "max_keypoint_dist",
    "sem_seg_agreement": "min_sem_seg_agreement",
    "sem_seg_prob_max_diff": "max_sem_seg_prob_diff",
    "panoptic_match_f1": "min_panoptic_match",
    "panoptic_class_agreement": "min_panoptic_class_agreement",
}


@dataclass
class Figures:
    match_f1: float | None  # None: neither side has instances (semantic segmentation)
    box_iou: float | None
    score_max_diff: float | None
    mask_iou: float | None
    num_reference: int
    num_output: int
    keypoint_max_dist: float | None = None
    unchecked: tuple[str, ...] = ()
    draws: int = 1  # inputs these are the worst over (a floor's: runner.run.fidelity)
    sem_seg_agreement: float | None = None
    sem_seg_prob_max_diff: float | None = None
    panoptic_match_f1: float | None = None
    panoptic_class_agreement: float | None = None


def _binary(masks: torch.Tensor) -> torch.Tensor:
    masks = masks.reshape(masks.shape[0], -1)
    return masks if masks.dtype == torch.bool else masks > 0.5


def _mask_ious(ref: Detections, out: Detections, pairs) -> list[float]:
    if not pairs:
        return []
    a = _binary(ref.masks[[r for r, _, _ in pairs]])
    b = _binary(out.masks[[o for _, o, _ in pairs]])
    inter = (a & b).sum(dim=1).double()
    union = (a | b).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0).tolist()


def _keypoint_dists(ref: Detections, out: Detections, pairs) -> list[float]:
    """Per matched pair: the largest keypoint distance over sqrt(reference box area)."""
    if not pairs:
        return []
    r = [i for i, _, _ in pairs]
    a = ref.keypoints[r][..., :2]
    b = out.keypoints[[o for _, o, _ in pairs]][..., :2]
    boxes = ref.boxes[r]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    size = area.sqrt().clamp(min=1.0)  # a degenerate box counts as 1 pixel
    return ((a - b).norm(dim=-1).amax(dim=-1) / size).tolist()


def sem_seg_figures(ref: torch.Tensor, out: torch.Tensor) -> tuple[int, int, float]:
    """(pixels, pixels labelled alike, largest class-probability difference) of two (C, H, W)
    per-class logits."""
    agree = int((ref.argmax(dim=0) == out.argmax(dim=0)).sum())
    diff = float((ref.softmax(dim=0) - out.softmax(dim=0)).abs().max()) if ref.numel() else 0.0
    return ref[0].numel(), agree, diff


def panoptic_figures(ref, out) -> tuple[int, int, int, int]:
    """(reference segments, output segments, matched at IoU > PANOPTIC_IOU, of those the ones
    of the same category and kind) of two runner.exported.Panoptic."""
    a = ref.segments.reshape(-1)
    b = out.segments.reshape(-1)
    matched = agreeing = 0
    for i, segment in enumerate(ref.ids.tolist()):
        mine = a == segment
        for j, other in enumerate(out.ids.tolist()):
            theirs = b == other
            union = int((mine | theirs).sum())
            if union and int((mine & theirs).sum()) / union > PANOPTIC_IOU:
                matched += 1
                same_class = int(ref.categories[i]) == int(out.categories[j])
                agreeing += int(same_class and bool(ref.isthing[i]) == bool(out.isthing[j]))
                break
    return len(ref.ids), len(out.ids), matched, agreeing


def unchecked_fields(ref: Detections, out: Detections) -> set[str]:
    """Fields no figure compares: every extra field, and masks, keypoints, sem_seg or panoptic
    segments only one side has (or of different sizes)."""
    names = set(ref.extra) | set(out.extra)
    if ref.instances != out.instances:
        names.add(f"instances (only the {'reference' if ref.instances else 'output'} has them)")
    if ref.sem_seg is not None and out.sem_seg is not None:
        if ref.sem_seg.shape != out.sem_seg.shape:
            names.add(f"sem_seg (sizes {tuple(ref.sem_seg.shape)} and {tuple(out.sem_seg.shape)})")
    for name in ("sem_seg", "panoptic"):
        mine, theirs = getattr(ref, name), getattr(out, name)
        if (mine is None) != (theirs is None):
            names.add(f"{name} (only the {'reference' if theirs is None else 'output'} has it)")
    for name in ("masks", "keypoints"):
        mine, theirs = getattr(ref, name), getattr(out, name)
        if (mine is None) != (theirs is None):
            names.add(f"{name} (only the {'reference' if theirs is None else 'output'} has it)")
    return names


def _mean(values: list[float], present: bool, total: int) -> float | None:
    """Mean of matched-pair values; None for an absent field; 1.0 / 0.0 without pairs."""
    if not present:
        return None
    return (sum(values) / len(values)) if values else (1.0 if total == 0 else 0.0)


def compare(reference: list[Detections], output: list[Detections], match_iou: float) -> Figures:
    if len(reference) != len(output):
        raise ValueError(f"{len(reference)} reference images but {len(output)} output images")
    matched, ious, score_diffs, mask_ious, keypoint_dists = 0, [], [], [], []
    has_masks = has_keypoints = False
    has_instances = any(d.instances for d in [*reference, *output])
    pixels = agree = 0
    prob_diffs: list[float] = []
    segments = [0, 0, 0, 0]  # reference, output, matched, of the same class
    has_sem_seg = has_panoptic = False
    unchecked: set[str] = set()
    for ref, out in zip(reference, output, strict=True):
        if ref.sem_seg is not None and out.sem_seg is not None:
            if ref.sem_seg.shape == out.sem_seg.shape:
                has_sem_seg = True
                counted, alike, diff = sem_seg_figures(ref.sem_seg, out.sem_seg)
                pixels, agree = pixels + counted, agree + alike
                prob_diffs.append(diff)
        if ref.panoptic is not None and out.panoptic is not None:
            has_panoptic = True
            counts = panoptic_figures(ref.panoptic, out.panoptic)
            segments = [total + count for total, count in zip(segments, counts, strict=True)]
        pairs = match(ref, out, match_iou)
        matched += len(pairs)
        for r, o, iou in pairs:
            ious.append(iou)
            score_diffs.append(abs(float(ref.scores[r]) - float(out.scores[o])))
        if ref.masks is not None and out.masks is not None:
            has_masks = True
            mask_ious += _mask_ious(ref, out, pairs)
        if ref.keypoints is not None and out.keypoints is not None:
            has_keypoints = True
            keypoint_dists += _keypoint_dists(ref, out, pairs)
        unchecked |= unchecked_fields(ref, out)
    n_ref = sum(len(d) for d in reference)
    n_out = sum(len(d) for d in output)
    total = n_ref + n_out
    n_segments = segments[0] + segments[1]
    return Figures(
        match_f1=(1.0 if total == 0 else 2.0 * matched / total) if has_instances else None,
        box_iou=_mean(ious, has_instances, total),
        score_max_diff=max(score_diffs, default=0.0) if has_instances else None,
        mask_iou=_mean(mask_ious, has_masks, total),
        num_reference=n_ref,
        num_output=n_out,
        keypoint_max_dist=max(keypoint_dists, default=0.0) if has_keypoints else None,
        sem_seg_agreement=(agree / pixels if pixels else 1.0) if has_sem_seg else None,
        sem_seg_prob_max_diff=max(prob_diffs, default=0.0) if has_sem_seg else None,
        panoptic_match_f1=(
            (1.0 if n_segments == 0 else 2.0 * segments[2] / n_segments) if has_panoptic else None
        ),
        panoptic_class_agreement=(
            _mean([segments[3] / segments[2]] if segments[2] else [], True, n_segments)
            if has_panoptic
            else None
        ),
        unchecked=tuple(sorted(unchecked)),
    )


def limits(tolerances: PrecisionConfig, floor: Figures | None) -> dict[str, float]:
    """The bound each figure must meet: the precision's tolerance, or, where looser, the floor
    scaled: `floor_scale` times the floor's distance from a perfect figure (1 - figure for F1
    and IoUs, the figure itself for differences and distances).

    The floor is eager PyTorch at the run's precision against the same strict reference, the
    worst figure over `floor_draws` inputs (runner.run.fidelity): how far the precision alone
    moves the answers. Why draws and a scale, not one draw and a margin: at fp16 which of two
    near-tied detections survives a top-k or NMS cut-off is a coin toss of rounding, so the
    F1 of eager and of a backend are both random draws of the same kind. One draw as the floor,
    loosened only when it falls below the tolerance, judged one draw by another: a backend
    whose F1 (0.89) was one such toss below eager's (0.90) failed at one seed and passed at
    the next. The worst of several draws (jittered copies of the input re-draw the rounding)
    measures the spread instead of sampling it once; the scale lets the backend's own rounding
    add as much again, so a correct backend passes at any seed. The bound moves smoothly with
    the floor (no step at the tolerance), and a precision that moves nothing (a floor of 1.0
    F1, 0 score difference) keeps its tolerances: a backend still fails when it adds error of
    its own (boxes 5 px off leave the IoU bound far behind)."""
    bounds = {name: getattr(tolerances, tolerance) for name, tolerance in TOLERANCES.items()}
    if floor is None:
        return bounds
    scale = tolerances.floor_scale
    for name in HIGHER_IS_BETTER:
        value = getattr(floor, name)
        if value is not None:
            bounds[name] = min(bounds[name], 1.0 - scale * (1.0 - value))
    for name in LOWER_IS_BETTER:
        value = getattr(floor, name)
        if value is not None:
            bounds[name] = max(bounds[name], scale * value)
    return bounds


def verdict(
    figures: Figures, tolerances: PrecisionConfig, floor: Figures | None = None
) -> list[str]:
    """The bounds a result breaks, as readable sentences; empty when parity passes. Unchecked
    fields break no bound: the row names them (parity_unchecked)."""
    bound = limits(tolerances, floor)
    broken = []
    for name in HIGHER_IS_BETTER:
        value = getattr(figures, name)
        if value is not None and value < bound[name]:
            broken.append(f"{name} {value:.4f} < {bound[name]:.4f}")
    for name in LOWER_IS_BETTER:
        value = getattr(figures, name)
        if value is not None and value > bound[name]:
            broken.append(f"{name} {value:.4g} > {bound[name]:.4g}")
    return broken


def worst(figures: list[Figures]) -> Figures:
    """The least favourable of several figures (one per input shape), field by field."""

    def least(name: str, pick):
        values = [getattr(f, name) for f in figures if getattr(f, name) is not None]
        return pick(values) if values else None

    return Figures(
        match_f1=least("match_f1", min),
        box_iou=least("box_iou", min),
        score_max_diff=least("score_max_diff", max),
        mask_iou=least("mask_iou", min),
        num_reference=figures[0].num_reference,
        num_output=figures[0].num_output,
        keypoint_max_dist=least("keypoint_max_dist", max),
        sem_seg_agreement=least("sem_seg_agreement", min),
        sem_seg_prob_max_diff=least("sem_seg_prob_max_diff", max),
        panoptic_match_f1=least("panoptic_match_f1", min),
        panoptic_class_agreement=least("panoptic_class_agreement", min),
        unchecked=tuple(sorted({name for f in figures for name in f.unchecked})),
    )
