"""Pooling: takes a detectron2 `ROIPooler`, feature maps and a fixed number of boxes per image,
returns the pooled features [N * P, C, S, S] with no per-level `nonzero` and no host sync.

detectron2 assigns each box to one FPN level by its size, gathers each level's boxes with
`nonzero` (a sync and a run-time shape) and pools them. Here every level's ROIAlign sees all
N * P boxes, with the boxes of other levels replaced by an empty box, and each box takes the
result of its own level (`torch.where`), so the values are those of detectron2's pooler.

`half=True` runs ROIAlign itself in fp16 on fp16 features (autocast would cast it to fp32):
torchvision's kernel then reads and interpolates half values. detectron2 already rounds the
boxes to the features' dtype before pooling, so the boxes are the same either way.
"""

from __future__ import annotations

import torch


def pooler_rois(boxes: torch.Tensor) -> torch.Tensor:
    """[N, P, 4] boxes -> [N * P, 5] rows (image index, x1, y1, x2, y2), detectron2's format."""
    n, p, _ = boxes.shape
    index = torch.arange(n, dtype=boxes.dtype, device=boxes.device).repeat_interleave(p)
    return torch.cat([index[:, None], boxes.reshape(n * p, 4)], dim=1)


def box_levels(pooler, boxes: torch.Tensor) -> torch.Tensor:
    """detectron2's `assign_boxes_to_levels` on [M, 4] boxes: level index per box (0-based)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sizes = torch.sqrt(areas)
    levels = torch.floor(
        pooler.canonical_level + torch.log2(sizes / pooler.canonical_box_size + 1e-8)
    )
    levels = torch.clamp(levels, min=pooler.min_level, max=pooler.max_level)
    return levels.to(torch.int64) - pooler.min_level


def _align(level_pooler, feature: torch.Tensor, rois: torch.Tensor, half: bool) -> torch.Tensor:
    if not half or feature.dtype != torch.float16:
        return level_pooler(feature, rois)
    from torchvision.ops import roi_align

    with torch.autocast(feature.device.type, enabled=False):
        return roi_align(
            feature,
            rois.to(torch.float16),
            level_pooler.output_size,
            level_pooler.spatial_scale,
            level_pooler.sampling_ratio,
            level_pooler.aligned,
        )


def pool(pooler, features: list[torch.Tensor], boxes: torch.Tensor, half: bool = False):
    """ROIPooler.forward on fixed [N, P, 4] boxes -> [N * P, C, S, S] in the features' dtype."""
    rois = pooler_rois(boxes)
    poolers = pooler.level_poolers
    if len(poolers) == 1:
        return _align(poolers[0], features[0], rois, half)  # as detectron2: no cast here
    levels = box_levels(pooler, rois[:, 1:])
    empty = torch.zeros_like(rois)
    out = None
    for level, (level_pooler, feature) in enumerate(zip(poolers, features, strict=True)):
        mine = (levels == level)[:, None]
        pooled = _align(level_pooler, feature, torch.where(mine, rois, empty), half)
        out = pooled if out is None else torch.where(mine[:, :, None, None], pooled, out)
    # detectron2 writes each level's result into a buffer of the features' dtype
    return out.to(features[0].dtype)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold):
    """detectron2's `paste_masks_in_image` on the GPU path (every mask over the whole image,
    no skipping of empty regions): [M, S, S] probabilities + [M, 4] boxes -> [M, H, W] bool."""
    from detectron2.layers.mask_ops import _do_paste_mask

    pasted, _ = _do_paste_mask(masks[:, None, :, :], boxes, height, width, skip_empty=False)
    return pasted >= threshold
