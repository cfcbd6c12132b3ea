"""Slots: a fixed number of detection slots per image with a validity mask, and the two ways
every head fills them: `select` (per-class NMS through the custom op, the best detections) and
`compact` (the valid slots first, in order, as removing the others would leave them: a
stable partition, order.valid_first, with no sort).

Every head of the rewrite (roi_heads.py, dense.py, the RPN-only and semantic heads of
detector.py) answers with Slots; post-processing (postprocess.py) and the package's Outputs
(outputs.py) take them. Nothing is removed: what detectron2 would drop is masked and rides
along in padded slots. A model with a semantic head carries its per-image logits beside the
slots (`sem_seg`); one with only that head has no slots at all (`no_detections`: D = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.backends.static_graph.nms import nms_call
from runner.backends.static_graph.order import valid_first


@dataclass
class Slots:
    """Detections of N images in D fixed slots each; `valid` marks the real ones."""

    boxes: torch.Tensor  # [N, D, 4] fp32
    scores: torch.Tensor  # [N, D]
    classes: torch.Tensor  # [N, D] int64
    valid: torch.Tensor  # [N, D] bool
    exact: torch.Tensor  # [N] bool: the slots are provably what detectron2 returns
    masks: torch.Tensor | None = None  # [N, D, 1, S, S] probabilities or [N, D, H, W] bool
    keypoint_heatmaps: torch.Tensor | None = None  # [N, D, K, S, S] the keypoint head's logits
    keypoints: torch.Tensor | None = None  # [N, D, K, 3] x, y, score (keypoints.py)
    # per image, not per slot: [N, C, H, W] logits of the semantic head (semantic.py)
    sem_seg: torch.Tensor | None = None


def no_detections(num_images: int, device: torch.device) -> Slots:
    """Slots of a model that detects nothing (semantic segmentation only): D = 0, every image
    exact."""
    return Slots(
        boxes=torch.zeros(num_images, 0, 4, device=device),
        scores=torch.zeros(num_images, 0, device=device),
        classes=torch.zeros(num_images, 0, dtype=torch.int64, device=device),
        valid=torch.zeros(num_images, 0, dtype=torch.bool, device=device),
        exact=torch.ones(num_images, dtype=torch.bool, device=device),
    )


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [N, M, ...] at index [N, D] -> [N, D, ...]."""
    shape = index.shape + values.shape[2:]
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return values.gather(1, expanded)


def select(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    valid: torch.Tensor,
    nms_thresh: float,
    detections: int,
    max_candidates: int,
    *,
    select: str = "sort",
    compile_nms: bool = False,
) -> Slots:
    """Per-class NMS over [N, M] candidates, then the best `detections` survivors. `select`:
    how the `max_candidates` best are taken (nms.batched_nms_topk: "sort" or "topk");
    `compile_nms`: whether a compiled caller compiles the NMS too (nms.nms_call)."""
    index, kept, exact = nms_call(compile_nms)(
        boxes,
        scores,
        classes,
        valid,
        nms_thresh,
        detections,
        max_candidates=max_candidates,
        select=select,
    )
    out_boxes = torch.where(
        kept[..., None], _gather(boxes, index), torch.zeros((), device=boxes.device)
    )
    return Slots(
        boxes=out_boxes,
        scores=torch.where(
            kept, _gather(scores, index), torch.zeros((), dtype=scores.dtype, device=scores.device)
        ),
        classes=torch.where(kept, _gather(classes, index), torch.zeros_like(index)),
        valid=kept,
        exact=exact,
    )


def compact(slots: Slots) -> Slots:
    """Move the valid slots to the front, keeping their order (what removing the others does);
    the per-image `sem_seg` stays as it is. The order is the stable sort's of the flags, found
    without sorting (order.valid_first)."""
    order = valid_first(slots.valid)

    def gather(values):
        return None if values is None else _gather(values, order)

    return Slots(
        boxes=gather(slots.boxes),
        scores=gather(slots.scores),
        classes=gather(slots.classes),
        valid=gather(slots.valid),
        exact=slots.exact,
        masks=gather(slots.masks),
        keypoint_heatmaps=gather(slots.keypoint_heatmaps),
        keypoints=gather(slots.keypoints),
        sem_seg=slots.sem_seg,
    )
