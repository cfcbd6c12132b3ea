"""Heads: takes detectron2's ROI heads (standard FPN, Cascade, Res5 of C4) or RetinaNet's head,
the backbone features and fixed-shape proposals; returns `Slots`: a fixed number of detection
slots per image with a validity mask, computed with no host synchronisation.

The arithmetic is detectron2's own (its layers, box transforms and mask functions are called
as they are); what changes is that nothing is removed: proposals, candidates and detections
that detectron2 would drop are masked and ride along in padded slots.

Detection NMS keeps the top `max_candidates` candidates above the score threshold. That is
exact whenever all candidates fit or at least `detections_per_image` of them survive NMS
(greedy NMS decides each box from higher-scored boxes only); `Slots.exact` is False otherwise
and the caller falls back to eager for that call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F  # noqa: N812

from runner.backends.static_graph.nms import batched_nms_topk
from runner.backends.static_graph.pooling import paste_masks, pool
from runner.backends.static_graph.proposals import Proposals, clip, nonempty


@dataclass
class Slots:
    """Detections of N images in D fixed slots each; `valid` marks the real ones."""

    boxes: torch.Tensor  # [N, D, 4] fp32
    scores: torch.Tensor  # [N, D]
    classes: torch.Tensor  # [N, D] int64
    valid: torch.Tensor  # [N, D] bool
    exact: torch.Tensor  # [N] bool: the slots are provably what detectron2 returns
    masks: torch.Tensor | None = None  # [N, D, 1, S, S] probabilities or [N, D, H, W] bool


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
) -> Slots:
    """Per-class NMS over [N, M] candidates, then the best `detections` survivors."""
    index, kept, exact = batched_nms_topk(
        boxes, scores, classes, valid, nms_thresh, detections, max_candidates=max_candidates
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


def fast_rcnn_slots(predictor, boxes, probs, proposals_valid, size, max_candidates) -> Slots:
    """detectron2's `fast_rcnn_inference` on fixed shapes: boxes [N, P, R*4] (R = 1 or K
    regressed classes), probs [N, P, K+1] -> the best `test_topk_per_image` detections."""
    n, p = probs.shape[:2]
    num_classes = probs.shape[2] - 1
    rows_ok = proposals_valid & torch.isfinite(boxes).all(dim=2) & torch.isfinite(probs).all(dim=2)
    scores = probs[:, :, :-1]
    boxes = boxes.view(n, p, -1, 4)
    boxes = torch.where(rows_ok[..., None, None], boxes, torch.zeros((), device=boxes.device))
    boxes = clip(boxes, size)
    if boxes.shape[2] == 1:
        boxes = boxes.expand(n, p, num_classes, 4)
    candidates = (scores > predictor.test_score_thresh) & rows_ok[..., None]
    classes = torch.arange(num_classes, device=probs.device).expand(n, p, num_classes)
    return select(
        boxes.reshape(n, p * num_classes, 4),
        scores.reshape(n, p * num_classes),
        classes.reshape(n, p * num_classes),
        candidates.reshape(n, p * num_classes),
        predictor.test_nms_thresh,
        predictor.test_topk_per_image,
        max_candidates,
    )


def _predict(predictor, features: torch.Tensor, proposal_boxes: torch.Tensor):
    """FastRCNNOutputLayers forward + predict_boxes + predict_probs on [N, P] proposals."""
    n, p = proposal_boxes.shape[:2]
    logits, deltas = predictor(features)
    boxes = predictor.box2box_transform.apply_deltas(deltas, proposal_boxes.reshape(n * p, 4))
    probs = logits.sigmoid() if predictor.use_sigmoid_ce else F.softmax(logits, dim=-1)
    return boxes.view(n, p, -1), probs.view(n, p, -1)


def standard_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """StandardROIHeads._forward_box at inference."""
    feats = [features[f] for f in heads.box_in_features]
    pooled = pool(heads.box_pooler, feats, proposals.boxes, options.half_roi_align)
    boxes, probs = _predict(heads.box_predictor, heads.box_head(pooled), proposals.boxes)
    return fast_rcnn_slots(
        heads.box_predictor, boxes, probs, proposals.valid, size, options.max_candidates
    )


def cascade_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """CascadeROIHeads._forward_box at inference: each stage refines the previous stage's
    boxes; scores are the stages' mean, boxes the last stage's."""
    feats = [features[f] for f in heads.box_in_features]
    proposal_boxes, boxes, probs_per_stage = proposals.boxes, None, []
    for stage in range(heads.num_cascade_stages):
        if boxes is not None:  # _create_proposals_from_boxes: clipped, none removed at inference
            proposal_boxes = clip(boxes.view(*boxes.shape[:2], 4), size)
        pooled = pool(heads.box_pooler, feats, proposal_boxes, options.half_roi_align)
        predictor = heads.box_predictor[stage]
        boxes, probs = _predict(predictor, heads.box_head[stage](pooled), proposal_boxes)
        probs_per_stage.append(probs)
    total = probs_per_stage[0]
    for probs in probs_per_stage[1:]:  # sum() in detectron2: ((s0 + s1) + s2), then scaled
        total = total + probs
    mean = total * (1.0 / heads.num_cascade_stages)
    return fast_rcnn_slots(
        heads.box_predictor[-1], boxes, mean, proposals.valid, size, options.max_candidates
    )


def res5_boxes(heads, features: dict, proposals: Proposals, size, options) -> Slots:
    """Res5ROIHeads.forward at inference (C4): pooled res4 features through res5 per box."""
    feats = [features[f] for f in heads.in_features]
    x = heads.res5(pool(heads.pooler, feats, proposals.boxes, options.half_roi_align))
    predictor = heads.box_predictor
    boxes, probs = _predict(predictor, x.mean(dim=[2, 3]), proposals.boxes)
    return fast_rcnn_slots(predictor, boxes, probs, proposals.valid, size, options.max_candidates)


def masks(heads, features: dict, slots: Slots, options) -> torch.Tensor:
    """The mask head on every slot: [N, D, 1, S, S] probabilities of each slot's class."""
    n, d = slots.valid.shape
    if hasattr(heads, "res5"):  # Res5ROIHeads: the shared res5 transform, then the head
        feats = [features[f] for f in heads.in_features]
        x = heads.res5(pool(heads.pooler, feats, slots.boxes, options.half_roi_align))
    else:
        feats = [features[f] for f in heads.mask_in_features]
        x = pool(heads.mask_pooler, feats, slots.boxes, options.half_roi_align)
    logits = heads.mask_head.layers(x)  # [N * D, K or 1, S, S]
    if logits.shape[1] == 1:
        probs = logits.sigmoid()
    else:
        rows = torch.arange(n * d, device=logits.device)
        probs = logits[rows, slots.classes.reshape(-1)][:, None].sigmoid()
    return probs.view(n, d, *probs.shape[1:])


def retinanet_slots(model, features: list, anchors, options) -> Slots:
    """RetinaNet.forward_inference: per level the best `test_topk_candidates` (class, anchor)
    pairs above the score threshold, decoded; per-class NMS; the best
    `max_detections_per_image`."""
    logits, deltas = model._transpose_dense_predictions(
        model.head(features), [model.num_classes, 4]
    )
    anchors = anchors(model.anchor_generator, features)
    k_classes = model.num_classes
    level_boxes, level_scores, level_classes, level_valid = [], [], [], []
    for logits_l, deltas_l, anchors_l in zip(logits, deltas, anchors, strict=True):
        n = logits_l.shape[0]
        scores = logits_l.sigmoid().flatten(1)  # [N, A * K], as detectron2: anchor-major
        above = scores > model.test_score_thresh
        masked = torch.where(above, scores, torch.full_like(scores, -float("inf")))
        k = min(model.test_topk_candidates, scores.shape[1])
        top, index = masked.topk(k, dim=1)
        anchor, cls = index // k_classes, index % k_classes
        chosen = deltas_l.gather(1, anchor[..., None].expand(n, k, 4))
        boxes = model.box2box_transform.apply_deltas(
            chosen.reshape(n * k, 4), anchors_l.tensor[anchor.reshape(-1)]
        ).view(n, k, 4)
        level_boxes.append(boxes)
        level_scores.append(top)
        level_classes.append(cls)
        level_valid.append(top > model.test_score_thresh)
    valid = torch.cat(level_valid, dim=1)
    boxes = torch.cat(level_boxes, dim=1)
    valid = valid & torch.isfinite(boxes).all(dim=2)
    boxes = torch.where(valid[..., None], boxes, torch.zeros((), device=boxes.device))
    return select(
        boxes,
        torch.cat(level_scores, dim=1),
        torch.cat(level_classes, dim=1),
        valid,
        model.test_nms_thresh,
        model.max_detections_per_image,
        options.max_candidates,
    )


def postprocess(slots: Slots, height: int, width: int, mask_threshold: float = 0.5) -> Slots:
    """detector_postprocess with the output size equal to the input size (the seed's pproc):
    boxes clipped, empty boxes masked, masks pasted into the image as bool [N, D, H, W]."""
    boxes = clip(slots.boxes, (height, width))
    valid = slots.valid & nonempty(boxes)
    pasted = slots.masks
    if pasted is not None:
        n, d = valid.shape
        flat = paste_masks(
            pasted.reshape(n * d, *pasted.shape[-2:]),
            boxes.reshape(n * d, 4),
            height,
            width,
            mask_threshold,
        )
        pasted = flat.view(n, d, height, width)
    return replace(slots, boxes=boxes, valid=valid, masks=pasted)


def compact(slots: Slots) -> Slots:
    """Move the valid slots to the front, keeping their order (what removing the others does)."""
    order = torch.sort((~slots.valid).to(torch.uint8), dim=1, stable=True).indices
    return Slots(
        boxes=_gather(slots.boxes, order),
        scores=_gather(slots.scores, order),
        classes=_gather(slots.classes, order),
        valid=_gather(slots.valid, order),
        exact=slots.exact,
        masks=None if slots.masks is None else _gather(slots.masks, order),
    )
