"""Dense heads: takes a detectron2 dense detector (RetinaNet or FCOS: its head, anchors and
decoding) and the backbone features; returns Slots (slots.py) with no host synchronisation: per
level the best `test_topk_candidates` (class, anchor) pairs above the score threshold, decoded,
then per-class NMS and the best `max_detections_per_image`, as their `forward_inference` does.
The two differ only in their scores: RetinaNet's are sigmoid(logits), FCOS's
sqrt(sigmoid(logits) * sigmoid(centerness)) (its head's third output); its box transform
(Box2BoxTransformLinear) is the model's own, called as RetinaNet's is.
"""

from __future__ import annotations

import torch

from runner.backends.static_graph.slots import Slots, select
from runner.stages import stage


def retinanet_slots(model, features: list, anchors, options) -> Slots:
    """RetinaNet.forward_inference: per level the best `test_topk_candidates` (class, anchor)
    pairs above the score threshold, decoded; per-class NMS; the best
    `max_detections_per_image`."""
    with stage("head"):  # with fuse_levels, one pass over all levels (canvas.FusedHead)
        predictions = model.head(features)
    logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    scores = [logits_l.sigmoid() for logits_l in logits]
    return _dense_slots(model, features, scores, deltas, anchors, options)


def fcos_slots(model, features: list, anchors, options) -> Slots:
    """FCOS.forward_inference: RetinaNet's, with scores sqrt(sigmoid(logits) *
    sigmoid(centerness))."""
    with stage("head"):  # with fuse_levels, one pass over all levels (canvas.FusedHead)
        predictions = model.head(features)
    logits, deltas, centerness = model._transpose_dense_predictions(
        predictions, [model.num_classes, 4, 1]
    )
    scores = [
        torch.sqrt(logits_l.sigmoid() * centerness_l.sigmoid())
        for logits_l, centerness_l in zip(logits, centerness, strict=True)
    ]
    return _dense_slots(model, features, scores, deltas, anchors, options)


def _dense_slots(model, features: list, level_probs, deltas, anchors, options) -> Slots:
    """DenseDetector's inference_single_image on [N, A_l, K] scores per level."""
    anchors = anchors(model.anchor_generator, features)
    k_classes = model.num_classes
    level_boxes, level_scores, level_classes, level_valid = [], [], [], []
    for probs_l, deltas_l, anchors_l in zip(level_probs, deltas, anchors, strict=True):
        n = probs_l.shape[0]
        scores = probs_l.flatten(1)  # [N, A * K], as detectron2: anchor-major
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
        select=options.select,
        compile_nms=options.compile_nms,
    )
