"""The CUDA kernel of `d2bench::roi_align` (runner.ops.roi_align): multi-level ROIAlign in
Triton, each box read from its own level at the features' dtype, interpolated and averaged in
fp32.

    roi_align_triton(features [N, C, H_l, W_l] per level (fp32 | fp16 | bf16, any strides),
                     boxes [M, 4] fp32 (M = N * P, image i's boxes at i * P ...),
                     levels [M] int (clamped into [0, L)), spatial_scales [L],
                     pooled_height, pooled_width, sampling_ratio, aligned)
        -> [M, C, pooled_height, pooled_width] in the features' dtype

One program per (box, block of channels) holds a [channels, bins] tile of fp32 sums. It picks
its box's level (up to `GROUP` levels per launch, one launch per group of levels: one launch
for any detectron2 pyramid), reads that level's tensor through its strides (NCHW or channels
last, no copy, no cast of the level), and walks the box's sample grid as torchvision's kernels
do: the same sample positions, the same bilinear weights, the same order of the sums (per
sample w1*v1 + w2*v2 + w3*v3 + w4*v4 left to right, samples row by row, then one division by
the sample count). Every operation is fp32 with IEEE rounding, as torchvision's CPU kernel:
products and the sums they feed are PTX's explicitly rounded mul.rn / add.rn / sub.rn (inline
assembly: never contracted into an FMA, whatever launch options Inductor passes on, and,
unlike libdevice's _rn functions, which Triton links with flush-to-zero on, exact for
subnormals too), divisions are `div_rn`, and the result is rounded to the output dtype to
nearest even. Under Triton's interpreter (CPU tests), which runs no PTX, plain operators do
the same IEEE arithmetic (numpy never contracts); tests/test_roi_align.py also compiles the
kernel for sm_90 without a GPU and reads its PTX.

The sample grid of sampling_ratio <= 0 (adaptive: ceil(roi_height / pooled_height) rows per
bin, likewise columns) depends on the box: the program loops over its own box's grid with a
run-time bound, so every box gets exactly torchvision's samples and the output shape never
depends on the data. The cost follows the box as in torchvision; boxes clipped to the image
(detectron2 clips every box it pools) have at most ceil(H_l / pooled) + 1 rows per bin. A box
with a non-finite coordinate has an empty grid and pools zeros (torchvision's loop bound is
then undefined).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

GROUP = 4  # levels one launch can read (the kernel's pointer arguments)
TILE = 2048  # fp32 sums one program holds: channels x bins (bins rounded up to a power of two)


@triton.jit
def _rounded(a, b, INSTRUCTION: tl.constexpr):
    """One fp32 PTX instruction on a and b, each first rounded to fp32: an fp64 operand (a
    Python float under Inductor) would otherwise reach the instruction as its low 32 bits."""
    return tl.inline_asm_elementwise(
        INSTRUCTION + " $0, $1, $2;",
        "=f,f,f",
        [tl.cast(a, tl.float32), tl.cast(b, tl.float32)],
        dtype=tl.float32,
        is_pure=True,
        pack=1,
    )


@triton.jit
def _mul(a, b, ROUNDED: tl.constexpr):
    if ROUNDED:
        product = _rounded(a, b, "mul.rn.f32")
    else:
        product = a * b
    return product


@triton.jit
def _add(a, b, ROUNDED: tl.constexpr):
    if ROUNDED:
        total = _rounded(a, b, "add.rn.f32")
    else:
        total = a + b
    return total


@triton.jit
def _sub(a, b, ROUNDED: tl.constexpr):
    if ROUNDED:
        difference = _rounded(a, b, "sub.rn.f32")
    else:
        difference = a - b
    return difference


@triton.jit
def _ceil(x):
    """ceil(x) as an int32 (tl.ceil compiles to cvt.rpi.ftz: a subnormal x would give 0)."""
    whole = x.to(tl.int32)  # truncation toward zero: ceil for x <= 0
    return whole + (whole.to(tl.float32) < x).to(tl.int32)


@triton.jit
def _bf16_nearest_even(x):
    """fp32 -> bf16 rounded to nearest even with integer ops (finite x): for the interpreter,
    whose fp32 -> bf16 cast truncates; compiled, `.to(tl.bfloat16)` is cvt.rn.bf16.f32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _pick(index, a0, a1, a2, a3):
    """The level's value among the group's four (pointers or scalars)."""
    return tl.where(index == 0, a0, tl.where(index == 1, a1, tl.where(index == 2, a2, a3)))


@triton.jit
def _corner(position, size):
    """torchvision's bilinear_interpolate along one axis, for a position already known to lie
    in [-1, size]: (low index, high index, fraction of the high one)."""
    position = tl.where(position <= 0.0, 0.0, position)
    low = position.to(tl.int32)  # truncation = floor: position >= 0
    top = low >= size - 1
    low = tl.where(top, size - 1, low)
    high = tl.where(top, low, low + 1)
    position = tl.where(top, low.to(tl.float32), position)
    return low, high, position - low.to(tl.float32)


@triton.jit
def _roi_align_kernel(
    out_ptr,  # [M, C, PH, PW] in the features' dtype
    boxes_ptr,  # [M, 4] fp32, contiguous
    levels_ptr,  # [M] int
    f0,  # the group's level tensors (a group of fewer than four repeats its first)
    f1,
    f2,
    f3,
    height0,
    height1,
    height2,
    height3,
    width0,
    width1,
    width2,
    width3,
    sn0,  # strides (elements): image, channel, row, column
    sn1,
    sn2,
    sn3,
    sc0,
    sc1,
    sc2,
    sc3,
    sh0,
    sh1,
    sh2,
    sh3,
    sw0,
    sw1,
    sw2,
    sw3,
    scale0,
    scale1,
    scale2,
    scale3,
    C,
    P,  # boxes per image
    first,  # the group's first level
    last,  # the pyramid's last level (levels are clamped into [0, last])
    sampling_ratio,
    PH: tl.constexpr,
    PW: tl.constexpr,
    ALIGNED: tl.constexpr,
    LEVELS: tl.constexpr,  # levels in this group, 1 ..= 4
    BLOCK_C: tl.constexpr,
    BINS: tl.constexpr,  # PH * PW rounded up to a power of two
    ROUNDED: tl.constexpr,  # libdevice's explicitly rounded ops (False in the interpreter)
):
    box = tl.program_id(0)
    level = tl.load(levels_ptr + box).to(tl.int32)
    level = tl.minimum(tl.maximum(level, 0), last) - first
    if (level >= 0) & (level < LEVELS):
        base = _pick(level, f0, f1, f2, f3)
        height = _pick(level, height0, height1, height2, height3)
        width = _pick(level, width0, width1, width2, width3)
        stride_n = _pick(level, sn0, sn1, sn2, sn3)
        stride_c = _pick(level, sc0, sc1, sc2, sc3)
        stride_h = _pick(level, sh0, sh1, sh2, sh3)
        stride_w = _pick(level, sw0, sw1, sw2, sw3)
        scale = _pick(level, scale0, scale1, scale2, scale3)  # fp64 under Inductor: _rounded

        # the box on its level, as torchvision: start = coordinate * scale - offset
        offset = 0.5 if ALIGNED else 0.0
        start_w = _sub(_mul(tl.load(boxes_ptr + box * 4 + 0), scale, ROUNDED), offset, ROUNDED)
        start_h = _sub(_mul(tl.load(boxes_ptr + box * 4 + 1), scale, ROUNDED), offset, ROUNDED)
        end_w = _sub(_mul(tl.load(boxes_ptr + box * 4 + 2), scale, ROUNDED), offset, ROUNDED)
        end_h = _sub(_mul(tl.load(boxes_ptr + box * 4 + 3), scale, ROUNDED), offset, ROUNDED)
        roi_w = end_w - start_w
        roi_h = end_h - start_h
        finite = (tl.abs(roi_w) <= 3.4028234663852886e38) & (tl.abs(roi_h) <= 3.4028234663852886e38)
        if not ALIGNED:  # malformed boxes forced to 1 x 1
            roi_w = tl.maximum(roi_w, 1.0)
            roi_h = tl.maximum(roi_h, 1.0)
        roi_w = tl.where(finite, roi_w, 0.0)
        roi_h = tl.where(finite, roi_h, 0.0)
        bin_h = tl.div_rn(roi_h, tl.full([], PH, tl.float32))
        bin_w = tl.div_rn(roi_w, tl.full([], PW, tl.float32))
        grid_h = tl.where(sampling_ratio > 0, sampling_ratio, _ceil(bin_h))
        grid_w = tl.where(sampling_ratio > 0, sampling_ratio, _ceil(bin_w))
        grid_h = tl.where(finite, grid_h, 0)
        grid_w = tl.where(finite, grid_w, 0)
        count = tl.maximum(grid_h * grid_w, 1).to(tl.float32)
        grid_h_f = grid_h.to(tl.float32)
        grid_w_f = grid_w.to(tl.float32)
        height_f = height.to(tl.float32)
        width_f = width.to(tl.float32)

        channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        bins = tl.arange(0, BINS)
        channel_ok = channels < C
        bin_ok = bins < PH * PW
        plane = base + (box // P).to(tl.int64) * stride_n + channels[:, None] * stride_c
        y_first = _add(start_h, _mul((bins // PW).to(tl.float32), bin_h, ROUNDED), ROUNDED)
        x_first = _add(start_w, _mul((bins % PW).to(tl.float32), bin_w, ROUNDED), ROUNDED)
        acc = tl.zeros([BLOCK_C, BINS], dtype=tl.float32)
        for iy in range(0, grid_h):
            step_y = tl.div_rn(_mul(iy + 0.5, bin_h, ROUNDED), grid_h_f)
            y = _add(y_first, step_y, ROUNDED)
            y_in = (y >= -1.0) & (y <= height_f)
            y_low, y_high, ly = _corner(y, height)
            hy = 1.0 - ly
            for ix in range(0, grid_w):
                step_x = tl.div_rn(_mul(ix + 0.5, bin_w, ROUNDED), grid_w_f)
                x = _add(x_first, step_x, ROUNDED)
                inside = y_in & (x >= -1.0) & (x <= width_f)
                x_low, x_high, lx = _corner(x, width)
                hx = 1.0 - lx
                load = channel_ok[:, None] & (inside & bin_ok)[None, :]
                top = y_low * stride_h
                bottom = y_high * stride_h
                left = x_low * stride_w
                right = x_high * stride_w
                v1 = tl.load(plane + (top + left)[None, :], mask=load, other=0.0)
                v2 = tl.load(plane + (top + right)[None, :], mask=load, other=0.0)
                v3 = tl.load(plane + (bottom + left)[None, :], mask=load, other=0.0)
                v4 = tl.load(plane + (bottom + right)[None, :], mask=load, other=0.0)
                val = _add(
                    _add(
                        _add(
                            _mul(_mul(hy, hx, ROUNDED)[None, :], v1.to(tl.float32), ROUNDED),
                            _mul(_mul(hy, lx, ROUNDED)[None, :], v2.to(tl.float32), ROUNDED),
                            ROUNDED,
                        ),
                        _mul(_mul(ly, hx, ROUNDED)[None, :], v3.to(tl.float32), ROUNDED),
                        ROUNDED,
                    ),
                    _mul(_mul(ly, lx, ROUNDED)[None, :], v4.to(tl.float32), ROUNDED),
                    ROUNDED,
                )
                acc = tl.where(inside[None, :], _add(acc, val, ROUNDED), acc)
        pooled = tl.div_rn(acc, tl.zeros([BLOCK_C, BINS], dtype=tl.float32) + count)
        if ROUNDED or out_ptr.dtype.element_ty != tl.bfloat16:
            pooled = pooled.to(out_ptr.dtype.element_ty)  # round to nearest even
        else:
            pooled = _bf16_nearest_even(pooled)
        out = out_ptr + box.to(tl.int64) * C * (PH * PW) + channels[:, None] * (PH * PW)
        tl.store(
            out + bins[None, :],
            pooled,
            mask=channel_ok[:, None] & bin_ok[None, :],
        )


def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def tile(channels: int, pooled_height: int, pooled_width: int) -> tuple[int, int]:
    """(BLOCK_C, BINS) of one program: all the bins, as many channels as TILE allows."""
    bins = triton.next_power_of_2(pooled_height * pooled_width)
    return min(triton.next_power_of_2(channels), max(1, TILE // bins)), bins


def roi_align_triton(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """See the module docstring: the body of the op's CUDA kernel (runner.ops.roi_align checks
    the arguments), also what the interpreter tests call directly."""
    for index, level in enumerate(features):  # the kernel's offsets in an image are int32
        span = sum((level.shape[d] - 1) * level.stride(d) for d in (1, 2, 3))
        if span >= 2**31:
            raise ValueError(
                f"d2bench::roi_align: one image of features[{index}] {tuple(level.shape)} spans "
                "2**31 elements or more; the Triton kernel indexes an image with int32"
            )
    first = features[0]
    channels = first.shape[1]
    boxes = boxes.reshape(-1, 4).to(torch.float32).contiguous()
    levels = levels.reshape(-1).contiguous()
    count = boxes.shape[0]
    out = torch.empty(
        (count, channels, pooled_height, pooled_width), dtype=first.dtype, device=first.device
    )
    if out.numel() == 0:
        return out
    block_c, bins = tile(channels, pooled_height, pooled_width)
    per_image = count // first.shape[0]
    for start in range(0, len(features), GROUP):
        group = list(features[start : start + GROUP])
        scales = [float(s) for s in spatial_scales[start : start + GROUP]]
        size = len(group)
        group += [group[0]] * (GROUP - size)
        scales += [scales[0]] * (GROUP - size)
        wrap_triton(_roi_align_kernel)[(count, triton.cdiv(channels, block_c))](
            out,
            boxes,
            levels,
            *group,
            *(f.shape[2] for f in group),
            *(f.shape[3] for f in group),
            *(f.stride(0) for f in group),
            *(f.stride(1) for f in group),
            *(f.stride(2) for f in group),
            *(f.stride(3) for f in group),
            *scales,
            channels,
            per_image,
            start,
            len(features) - 1,
            sampling_ratio,
            PH=pooled_height,
            PW=pooled_width,
            ALIGNED=bool(aligned),
            LEVELS=size,
            BLOCK_C=block_c,
            BINS=bins,
            ROUNDED=not interpreted(),
            num_warps=4,
        )
    return out
