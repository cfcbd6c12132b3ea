"""`d2bench::roi_align`: multi-level ROIAlign, each box pooled from its own pyramid level at the
features' dtype, as a torch.library op.

    torch.ops.d2bench.roi_align(
        features        list of L tensors [N, C, H_l, W_l]: one dtype (fp32, fp16 or bf16), one
                        device, any strides (NCHW or channels last: read in place, never copied
                        or cast)
        boxes           [N, P, 4] or [N * P, 4] (x1, y1, x2, y2) in image pixels, any float
                        dtype (taken to fp32; a caller that wants detectron2's rounding passes
                        them rounded to the features' dtype); image i's boxes are i * P ...
        levels          [N, P] or [N * P] int: each box's level, 0-based into `features` (as
                        pooling.box_levels / detectron2's assign_boxes_to_levels give it);
                        clamped into [0, L)
        spatial_scales  L floats: level l's size over the image's (1/4, 1/8, ... for FPN)
        pooled_height, pooled_width, sampling_ratio (> 0: that many samples per bin side;
        <= 0: adaptive, ceil(box size / pooled size)), aligned (True: ROIAlignV2's half-pixel
        shift; False: boxes under 1 x 1 grow to 1 x 1)
    ) -> [N * P, C, pooled_height, pooled_width] in the features' dtype

Every value is torchvision's `roi_align` (its fp32 kernel) of the box on its own level, with
the level upcast to fp32, then rounded to the features' dtype: the same sample positions,
bilinear weights and order of the sums in fp32 (runner/ops/roi_align_triton.py says how the
CUDA kernel keeps to them). A box with a non-finite coordinate pools zeros.

One op, three kernels, registered once (importing runner.ops), as d2bench::greedy_nms:
- CUDA: `torch.library.triton_op` over the Triton kernel of roi_align_triton.py, launched
  through `wrap_triton`: torch.export keeps the op whole and Inductor (torch.compile,
  AOTInductor) compiles the kernel into what it makes, so a package needs neither Triton,
  torchvision nor this module to run it.
- CPU: `d2bench::roi_align_cpu`, an opaque op: torchvision's roi_align on each level's boxes,
  the level upcast to fp32 (torchvision's CPU kernel would round every step of a half level to
  half). A CPU package calls it by name: the loading process imports runner.ops first.
- Fake (meta): the output's shape [N * P, C, pooled_height, pooled_width] from the inputs'
  shapes alone, so torch.export traces the op without touching data.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:  # Triton ships with the CUDA builds of torch; without it the op has no CUDA kernel
    from runner.ops.roi_align_triton import roi_align_triton
except ImportError as missing:  # pragma: no cover - every supported install has triton
    log.info("triton not importable (%s): d2bench::roi_align has no CUDA kernel", missing)
    roi_align_triton = None


def _check(features, boxes, levels, spatial_scales, pooled_height, pooled_width) -> None:
    """Refuse what the kernels cannot pool, naming the argument and its shape."""
    name = "d2bench::roi_align"
    if not features:
        raise ValueError(f"{name}: features is empty; pass at least one level")
    first = features[0]
    for index, level in enumerate(features):
        if level.dim() != 4 or level.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"{name}: features[{index}] {tuple(level.shape)} must be [N, C, H, W] with the "
                f"N and C of features[0] {tuple(first.shape)}"
            )
        if level.dtype != first.dtype or level.device != first.device:
            raise ValueError(
                f"{name}: features[{index}] is {level.dtype} on {level.device}; every level "
                f"must be {first.dtype} on {first.device}"
            )
    if first.dtype not in DTYPES:
        raise ValueError(f"{name}: features are {first.dtype}; supported: {DTYPES}")
    if len(spatial_scales) != len(features):
        raise ValueError(
            f"{name}: {len(spatial_scales)} spatial_scales for {len(features)} feature levels"
        )
    batch = first.shape[0]
    flat = boxes.dim() == 2 and boxes.shape[-1] == 4 and boxes.shape[0] % max(batch, 1) == 0
    if not (flat or (boxes.dim() == 3 and boxes.shape[0] == batch and boxes.shape[-1] == 4)):
        raise ValueError(
            f"{name}: boxes {tuple(boxes.shape)} must be [N, P, 4] or [N * P, 4] with N = "
            f"{batch} images"
        )
    if not boxes.is_floating_point():
        raise ValueError(f"{name}: boxes are {boxes.dtype}; pass floating-point boxes")
    if levels.shape != boxes.shape[:-1] or levels.is_floating_point() or levels.is_complex():
        raise ValueError(
            f"{name}: levels {tuple(levels.shape)} {levels.dtype} must be integers shaped as "
            f"the boxes' leading dimensions {tuple(boxes.shape[:-1])}"
        )
    if boxes.device != first.device or levels.device != first.device:
        raise ValueError(
            f"{name}: boxes on {boxes.device} and levels on {levels.device}; the features are "
            f"on {first.device}"
        )
    if pooled_height < 1 or pooled_width < 1:
        raise ValueError(f"{name}: output size {pooled_height} x {pooled_width}; need >= 1 x 1")


def _empty_result(features, boxes, pooled_height: int, pooled_width: int) -> torch.Tensor:
    first = features[0]
    count = boxes.shape[0] * boxes.shape[1] if boxes.dim() == 3 else boxes.shape[0]
    return first.new_empty((count, first.shape[1], pooled_height, pooled_width))


@torch.library.custom_op("d2bench::roi_align_cpu", mutates_args=(), device_types="cpu")
def roi_align_cpu(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """The CPU kernel of d2bench::roi_align (same contract): torchvision's roi_align per level
    on that level's boxes (found with nonzero: this op is opaque, nothing traces into it)."""
    from torchvision.ops import roi_align as torchvision_roi_align

    _check(features, boxes, levels, spatial_scales, pooled_height, pooled_width)
    first = features[0]
    batch, channels = first.shape[:2]
    boxes = boxes.reshape(-1, 4).to(torch.float32)
    count = boxes.shape[0]
    image = torch.arange(batch, dtype=torch.float32).repeat_interleave(count // max(batch, 1))
    rois = torch.cat([image[:, None], boxes], dim=1)
    levels = levels.reshape(-1).clamp(0, len(features) - 1)
    finite = torch.isfinite(boxes).all(dim=1)
    out = torch.zeros((count, channels, pooled_height, pooled_width), dtype=torch.float32)
    for level, (feature, scale) in enumerate(zip(features, spatial_scales, strict=True)):
        chosen = ((levels == level) & finite).nonzero()[:, 0]
        if len(chosen):
            out[chosen] = torchvision_roi_align(
                feature.to(torch.float32),
                rois[chosen],
                (pooled_height, pooled_width),
                scale,
                sampling_ratio,
                aligned,
            )
    return out.to(first.dtype)


@roi_align_cpu.register_fake
def _roi_align_cpu_fake(
    features, boxes, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned
):
    _check(features, boxes, levels, spatial_scales, pooled_height, pooled_width)
    return _empty_result(features, boxes, pooled_height, pooled_width)


@torch.library.triton_op("d2bench::roi_align", mutates_args=())
def roi_align(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """See the module docstring. Also the op's fake kernel (triton_op traces it with fake
    tensors): the output's shape follows from the shapes of features and boxes."""
    _check(features, boxes, levels, spatial_scales, pooled_height, pooled_width)
    args = (spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned)
    if features[0].device.type == "cuda":
        if roi_align_triton is None:
            raise RuntimeError("d2bench::roi_align on CUDA needs triton, which is not importable")
        return roi_align_triton(features, boxes, levels, *args)
    return torch.ops.d2bench.roi_align_cpu(features, boxes, levels, *args)
