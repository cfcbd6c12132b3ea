"""Parity: takes reference detections (eager fp32) and a backend's detections on the same input,
returns agreement figures and a pass/fail against the precision's tolerances.

Detections are matched per image, greedily in descending reference score: a reference detection
matches the unmatched output detection of the same class with the highest IoU, if that IoU is at
least `match_iou`. Figures:
  match_f1        2 * matched / (reference count + output count); 1.0 when both are empty
  box_iou         mean IoU of matched boxes
  score_max_diff  largest |score difference| of a matched pair
  mask_iou        mean IoU of matched masks binarised at 0.5 (None for detectors without masks)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.config import PrecisionConfig


@dataclass
class Detections:
    boxes: torch.Tensor  # (N, 4) x1, y1, x2, y2
    scores: torch.Tensor  # (N,)
    classes: torch.Tensor  # (N,) int64
    masks: torch.Tensor | None = None  # (N, [1,] h, w) probabilities or booleans

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class Figures:
    match_f1: float
    box_iou: float
    score_max_diff: float
    mask_iou: float | None
    num_reference: int
    num_output: int


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _binary(masks: torch.Tensor) -> torch.Tensor:
    masks = masks.reshape(masks.shape[0], -1)
    return masks if masks.dtype == torch.bool else masks > 0.5


def match(ref: Detections, out: Detections, match_iou: float) -> list[tuple[int, int, float]]:
    """Greedy same-class matching; returns (reference index, output index, IoU) triples."""
    if len(ref) == 0 or len(out) == 0:
        return []
    iou = box_iou(ref.boxes, out.boxes)
    iou[ref.classes[:, None] != out.classes[None, :]] = -1.0
    taken = torch.zeros(len(out), dtype=torch.bool)
    pairs = []
    for r in torch.argsort(ref.scores, descending=True, stable=True).tolist():
        candidates = iou[r].masked_fill(taken, -1.0)
        best = int(torch.argmax(candidates))
        if float(candidates[best]) >= match_iou:
            taken[best] = True
            pairs.append((r, best, float(candidates[best])))
    return pairs


def compare(reference: list[Detections], output: list[Detections], match_iou: float) -> Figures:
    if len(reference) != len(output):
        raise ValueError(f"{len(reference)} reference images but {len(output)} output images")
    matched, ious, score_diffs, mask_ious = 0, [], [], []
    has_masks = False
    for ref, out in zip(reference, output, strict=True):
        pairs = match(ref, out, match_iou)
        matched += len(pairs)
        for r, o, iou in pairs:
            ious.append(iou)
            score_diffs.append(abs(float(ref.scores[r]) - float(out.scores[o])))
        if ref.masks is not None and out.masks is not None:
            has_masks = True
            if pairs:
                a = _binary(ref.masks[[r for r, _, _ in pairs]])
                b = _binary(out.masks[[o for _, o, _ in pairs]])
                inter = (a & b).sum(dim=1).double()
                union = (a | b).sum(dim=1).double()
                mask_ious += torch.where(union > 0, inter / union.clamp(min=1), 1.0).tolist()
    n_ref = sum(len(d) for d in reference)
    n_out = sum(len(d) for d in output)
    total = n_ref + n_out
    return Figures(
        match_f1=1.0 if total == 0 else 2.0 * matched / total,
        box_iou=(sum(ious) / len(ious)) if ious else (1.0 if total == 0 else 0.0),
        score_max_diff=max(score_diffs, default=0.0),
        mask_iou=None
        if not has_masks
        else ((sum(mask_ious) / len(mask_ious)) if mask_ious else (1.0 if total == 0 else 0.0)),
        num_reference=n_ref,
        num_output=n_out,
    )


def limits(tolerances: PrecisionConfig, floor: Figures | None) -> dict[str, float]:
    """The bound each figure must meet: the precision's tolerance, loosened to the floor (eager
    PyTorch at the same reduced precision, against the same fp32 reference) minus floor_margin
    where the precision alone already moves the answers further than the tolerance allows. A
    backend is not blamed for what the precision does; it fails when it adds error of its own."""
    bounds = {
        "match_f1": tolerances.min_match,
        "box_iou": tolerances.min_box_iou,
        "score_max_diff": tolerances.max_score_diff,
        "mask_iou": tolerances.min_mask_iou,
    }
    if floor is None:
        return bounds
    margin = tolerances.floor_margin
    for name in ("match_f1", "box_iou", "mask_iou"):  # higher is better
        value = getattr(floor, name)
        if value is not None and value < bounds[name]:
            bounds[name] = value - margin
    if floor.score_max_diff > bounds["score_max_diff"]:  # lower is better
        bounds["score_max_diff"] = floor.score_max_diff + margin
    return bounds


def verdict(
    figures: Figures, tolerances: PrecisionConfig, floor: Figures | None = None
) -> list[str]:
    """The bounds a result breaks, as readable sentences; empty when parity passes."""
    bound = limits(tolerances, floor)
    broken = []
    for name in ("match_f1", "box_iou", "mask_iou"):
        value = getattr(figures, name)
        if value is not None and value < bound[name]:
            broken.append(f"{name} {value:.4f} < {bound[name]:.4f}")
    if figures.score_max_diff > bound["score_max_diff"]:
        broken.append(
            f"score_max_diff {figures.score_max_diff:.4g} > {bound['score_max_diff']:.4g}"
        )
    return broken


def worst(figures: list[Figures]) -> Figures:
    """The least favourable of several figures (one per input shape), field by field."""
    masks = [f.mask_iou for f in figures if f.mask_iou is not None]
    return Figures(
        match_f1=min(f.match_f1 for f in figures),
        box_iou=min(f.box_iou for f in figures),
        score_max_diff=max(f.score_max_diff for f in figures),
        mask_iou=min(masks) if masks else None,
        num_reference=figures[0].num_reference,
        num_output=figures[0].num_output,
    )
