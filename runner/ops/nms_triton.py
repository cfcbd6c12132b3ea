"""The CUDA kernels of `d2bench::greedy_nms` (runner.ops.nms): greedy NMS over boxes already in
score order, in Triton.

    greedy_nms_triton(boxes [B, C, 4] fp32, valid [B, C] bool, iou_threshold, k)
        -> position [B, k] int64 (sorted positions of the first k kept boxes, 0 past the count),
           count [B] int64 (kept boxes, at most k)

Two kernels, no host sync, shapes fixed by B, C and k. Both are launched through
`torch.library.wrap_triton`, so that torch.export keeps the op whole and Inductor (torch.compile,
AOTInductor) compiles the kernels into what it makes; called eagerly, the op launches them
directly.
1. `_iou_mask_kernel` (parallel): bit j % 32 of word mask[b, i, j // 32] says box j > i has
   IoU > threshold with box i, computed with torchvision's formula in fp32: IEEE division and
   explicitly rounded additions (libdevice's add_rn / sub_rn, which no compiler contracts into an
   FMA), so it matches the torch path and torchvision's kernels bit for bit without depending on
   a launch option that not every Inductor version passes on. Under Triton's interpreter (CPU
   tests), which has no libdevice, plain operators do the same IEEE arithmetic (numpy never
   contracts). Blocks wholly below the diagonal are skipped and never read.
2. `_scan_kernel` (one program per batch row): walks 32-box tiles in score order, the removed
   bits of every word held in registers. A tile's own word is resolved serially (32 bit steps
   on scalars), then the rows of its kept boxes are OR-ed into the removed words of later tiles.
   It stops once k boxes are kept or no valid box is left, which is what keeps RetinaNet's
   top-100 and the box head cheap.
`runner.backends.static_graph.nms.batched_nms_topk` does the sorting and offsets (shared with
the torch path) and calls the op.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from triton.language.extra import libdevice

BITS = 32  # boxes per mask word and per scan tile
ROWS_PER_PROGRAM = 64  # mask kernel: rows of one program (one 32-column word each)
MAX_BOXES = 16384  # the scan holds one removed bit per box in registers: 512 words


@triton.jit
def _iou_mask_kernel(
    boxes_ptr,  # [B, C, 4] fp32, contiguous
    mask_ptr,  # [B, C, W] int32
    C,
    W,
    threshold,
    ROWS: tl.constexpr,
    BITS: tl.constexpr,
    ROUNDED: tl.constexpr,  # libdevice's explicitly rounded add/sub (False in the interpreter)
):
    row_block = tl.program_id(0)
    word = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    # only words that hold some column j > some row i of this block matter
    if word * BITS + BITS - 1 > row_block * ROWS:
        rows = row_block * ROWS + tl.arange(0, ROWS)
        bits = tl.arange(0, BITS)
        cols = word * BITS + bits
        row_in = rows < C
        col_in = cols < C
        base = boxes_ptr + batch * C * 4
        ax1 = tl.load(base + rows * 4 + 0, mask=row_in, other=0.0)
        ay1 = tl.load(base + rows * 4 + 1, mask=row_in, other=0.0)
        ax2 = tl.load(base + rows * 4 + 2, mask=row_in, other=0.0)
        ay2 = tl.load(base + rows * 4 + 3, mask=row_in, other=0.0)
        bx1 = tl.load(base + cols * 4 + 0, mask=col_in, other=0.0)
        by1 = tl.load(base + cols * 4 + 1, mask=col_in, other=0.0)
        bx2 = tl.load(base + cols * 4 + 2, mask=col_in, other=0.0)
        by2 = tl.load(base + cols * 4 + 3, mask=col_in, other=0.0)
        area_a = (ax2 - ax1) * (ay2 - ay1)
        area_b = (bx2 - bx1) * (by2 - by1)
        width = tl.minimum(ax2[:, None], bx2[None, :]) - tl.maximum(ax1[:, None], bx1[None, :])
        height = tl.minimum(ay2[:, None], by2[None, :]) - tl.maximum(ay1[:, None], by1[None, :])
        inter = tl.maximum(width, 0.0) * tl.maximum(height, 0.0)
        if ROUNDED:  # a product feeding an add could otherwise become one FMA (other rounding)
            union = libdevice.sub_rn(libdevice.add_rn(area_a[:, None], area_b[None, :]), inter)
        else:
            union = (area_a[:, None] + area_b[None, :]) - inter
        iou = tl.div_rn(inter, union)
        # compared in fp32, as the torch path does: Inductor passes a Python float as fp64 (eager
        # Triton as fp32), and fp32(t) > t for some thresholds (0.6)
        above = iou > tl.cast(threshold, tl.float32)
        hit = above & (cols[None, :] > rows[:, None]) & col_in[None, :]
        packed = tl.sum(hit.to(tl.int64) << bits[None, :].to(tl.int64), axis=1).to(tl.int32)
        tl.store(mask_ptr + batch * C * W + rows.to(tl.int64) * W + word, packed, mask=row_in)


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _scan_kernel(
    mask_ptr,  # [B, C, W] int32 from _iou_mask_kernel
    valid_ptr,  # [B, C] int8 (0/1)
    tiles_ptr,  # [B] int32: tiles holding any valid box (the scan stops there)
    position_ptr,  # [B, K] int64, zero-filled: sorted positions of the kept boxes
    count_ptr,  # [B] int64
    C,
    W,
    K,
    WORDS: tl.constexpr,  # >= W, a power of two
    BITS: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    masks = mask_ptr + batch * C * W
    words = tl.arange(0, WORDS)
    lanes = tl.arange(0, BITS)
    removed = tl.zeros([WORDS], dtype=tl.int32)
    tiles = tl.load(tiles_ptr + batch)
    count = tl.program_id(0) * 0  # an int32 scalar tensor, carried by the loop
    tile = tl.program_id(0) * 0
    while (tile < tiles) & (count < K):
        first = tile * BITS
        rows = first + lanes
        # independent of the serial chain below, so these loads go out first
        later = tl.load(
            masks + rows.to(tl.int64)[:, None] * W + words[None, :],
            mask=(rows < C)[:, None] & (words > tile)[None, :] & (words < W)[None, :],
            other=0,
        )
        valid = tl.load(valid_ptr + batch * C + rows, mask=rows < C, other=0).to(tl.int64)
        valid_bits = tl.sum(valid << lanes.to(tl.int64)).to(tl.int32)
        open_bits = valid_bits & ~tl.sum(tl.where(words == tile, removed, 0))
        # serial greedy inside the tile: box `bit` is kept iff still open at its turn, and then
        # closes the later boxes of its own word; a bit never changes after its turn, so the
        # open bits left at the end are the kept ones. No stores here: the 32 loads go out early.
        for bit in tl.static_range(BITS):
            row = first + bit
            own = tl.load(masks + row.to(tl.int64) * W + tile, mask=row < C, other=0)
            open_bits = tl.where(((open_bits >> bit) & 1) != 0, open_bits & ~own, open_bits)
        kept_rows = ((open_bits >> lanes) & 1) != 0
        slot = count + tl.cumsum(kept_rows.to(tl.int32), 0) - 1
        tl.store(position_ptr + batch * K + slot, rows.to(tl.int64), mask=kept_rows & (slot < K))
        count += tl.sum(kept_rows.to(tl.int32))
        removed = removed | tl.reduce(tl.where(kept_rows[:, None], later, 0), 0, _bit_or)
        tile += 1
    tl.store(count_ptr + batch, tl.minimum(count, K).to(tl.int64))


def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def greedy_nms_triton(
    boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes [B, C, 4] fp32 in score order (offset per category), valid [B, C] bool ->
    (position [B, k] int64 of the first k kept boxes in sorted order, count [B] int64).
    The body of the op's CUDA kernel; also what the interpreter tests call directly."""
    batch, c = valid.shape
    if c > MAX_BOXES:
        raise ValueError(
            f"{c} NMS candidates: the Triton scan holds at most {MAX_BOXES}; pass max_candidates"
        )
    words = triton.cdiv(c, BITS)
    boxes = boxes.contiguous()
    mask = torch.empty((batch, c, words), dtype=torch.int32, device=boxes.device)
    wrap_triton(_iou_mask_kernel)[(triton.cdiv(c, ROWS_PER_PROGRAM), words, batch)](
        boxes,
        mask,
        c,
        words,
        float(iou_threshold),
        ROWS=ROWS_PER_PROGRAM,
        BITS=BITS,
        ROUNDED=not interpreted(),
        num_warps=4,
    )
    # last valid position + 1, rounded up to tiles: the scan never walks the invalid tail
    span = torch.where(valid, torch.arange(1, c + 1, device=valid.device), 0).amax(-1)
    tiles = ((span + BITS - 1) // BITS).to(torch.int32)
    position = torch.zeros((batch, k), dtype=torch.int64, device=boxes.device)
    count = torch.empty(batch, dtype=torch.int64, device=boxes.device)
    wrap_triton(_scan_kernel)[(batch,)](
        mask,
        valid.to(torch.int8),
        tiles,
        position,
        count,
        c,
        words,
        k,
        WORDS=triton.next_power_of_2(words),
        BITS=BITS,
        num_warps=4 if words <= 128 else 8,  # the [32, WORDS] row tile stays in registers
    )
    return position, count
