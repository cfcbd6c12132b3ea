"""Pooling: takes a detectron2 `ROIPooler`, feature maps and a fixed number of boxes per image,
returns the pooled features [N * P, C, S, S] with no per-level `nonzero` and no host sync.

detectron2 assigns each box to one FPN level by its size, gathers each level's boxes with
`nonzero` (a sync and a run-time shape) and pools them, one ROIAlign per level. Here, by
default (static_graph's `roi_align: torchvision`), the levels are stacked into one batch of
feature maps (each padded at its bottom and right edge to the largest level's size by repeating
its last row and column), each box is scaled to its own level and points at that level's entry,
and one ROIAlign pools all N * P boxes: each box does the work it does in detectron2, nothing
more, and no per-level `nonzero`, `where` or host sync is needed.

Samples never fall past a level's own edge (boxes are clipped to the image, so a sample lies
below height - 0.5 of its level), and inside the last row and column the repeated edge gives
the value of torchvision's edge clamp; the two sum the same bilinear terms in a different order,
so a value on that edge can differ from detectron2's in its last bit (fp32), nowhere else.

`half=True` runs ROIAlign itself in fp16 on fp16 features (autocast would cast it to fp32):
torchvision's kernel then reads and interpolates half values. detectron2 already rounds the
boxes to the features' dtype before pooling, so the boxes are the same either way.

`op=True` (static_graph's `roi_align: op`) pools through d2bench's own op instead
(`d2bench::roi_align`, runner.ops.roi_align): each box read from its own level, straight from
that level's tensor at the features' dtype (no stacked copy, no fp32 copy of the pyramid),
interpolated and summed in fp32 as torchvision's fp32 kernel does, so its values are
detectron2's under autocast bit for bit, edges included. An exported package then calls no
torchvision op (its CUDA kernel is compiled into the package).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F  # noqa: N812


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


def _align(level_pooler, feature, rois, half: bool, spatial_scale: float | None = None):
    """detectron2's ROIAlign.forward (boxes rounded to the features' dtype), at `spatial_scale`
    if given; with `half` on fp16 features, in fp16 (autocast would run it in fp32)."""
    from torchvision.ops import roi_align

    p = level_pooler
    scale = p.spatial_scale if spatial_scale is None else spatial_scale
    args = (p.output_size, scale, p.sampling_ratio, p.aligned)
    if not half or feature.dtype != torch.float16:
        return roi_align(feature, rois.to(feature.dtype), *args)
    with torch.autocast(feature.device.type, enabled=False):
        return roi_align(feature, rois.to(torch.float16), *args)


def stack_levels(features: list[torch.Tensor]) -> torch.Tensor:
    """[N, C, H_l, W_l] per level -> [L * N, C, H_0, W_0]: level l's images at l * N + i, each
    padded at the bottom and right by repeating its last row and column."""
    height = max(f.shape[-2] for f in features)
    width = max(f.shape[-1] for f in features)
    padded = [
        F.pad(f, (0, width - f.shape[-1], 0, height - f.shape[-2]), mode="replicate")
        if f.shape[-2:] != (height, width)
        else f
        for f in features
    ]
    return torch.cat(padded, dim=0)


def pool_with_op(pooler, features: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """ROIPooler.forward on fixed [N, P, 4] boxes through d2bench::roi_align -> [N * P, C, S, S]
    in the features' dtype. As detectron2: levels from the fp32 boxes, pooling from the boxes
    rounded to the features' dtype (its ROIAlign casts them), sums in fp32 (autocast's)."""
    import runner.ops  # noqa: F401 - registers torch.ops.d2bench

    poolers = pooler.level_poolers
    n, p = boxes.shape[:2]
    if len(poolers) == 1:
        levels = torch.zeros((n, p), dtype=torch.int64, device=boxes.device)
    else:
        levels = box_levels(pooler, boxes.reshape(n * p, 4)).view(n, p)
    first = poolers[0]
    height, width = first.output_size
    return torch.ops.d2bench.roi_align(
        list(features),
        boxes.to(features[0].dtype),
        levels,
        [float(level.spatial_scale) for level in poolers],
        height,
        width,
        first.sampling_ratio,
        first.aligned,
    )


def pool(
    pooler,
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    half: bool = False,
    op: bool = False,
):
    """ROIPooler.forward on fixed [N, P, 4] boxes -> [N * P, C, S, S] in the features' dtype;
    with `op`, through d2bench::roi_align (pool_with_op)."""
    if op:
        return pool_with_op(pooler, features, boxes)
    rois = pooler_rois(boxes)
    poolers = pooler.level_poolers
    if len(poolers) == 1:
        return _align(poolers[0], features[0], rois, half)  # as detectron2: no cast here
    n = boxes.shape[0]
    levels = box_levels(pooler, rois[:, 1:])
    # each box scaled to its level here (scales are powers of two: exact), so one ROIAlign at
    # scale 1 pools them all; level l's maps are at l * n in the stacked batch
    first = -math.log2(poolers[0].spatial_scale)
    scales = torch.exp2(-(levels.to(rois.dtype) + first))
    index = (levels * n).to(rois.dtype)[:, None] + rois[:, :1]
    scaled = torch.cat([index, rois[:, 1:] * scales[:, None]], dim=1)
    pooled = _align(poolers[0], stack_levels(features), scaled, half, spatial_scale=1.0)
    # detectron2 writes each level's result into a buffer of the features' dtype
    return pooled.to(features[0].dtype)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold):
    """detectron2's `paste_masks_in_image` on the GPU path (every mask over the whole image,
    no skipping of empty regions): [M, S, S] probabilities + [M, 4] boxes -> [M, H, W] bool."""
    from detectron2.layers.mask_ops import _do_paste_mask

    pasted, _ = _do_paste_mask(masks[:, None, :, :], boxes, height, width, skip_empty=False)
    return pasted >= threshold
