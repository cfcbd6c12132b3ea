"""`d2bench::greedy_nms`: greedy NMS over boxes already in score order, as a torch.library op.

    torch.ops.d2bench.greedy_nms(boxes [B, C, 4] fp32, valid [B, C] bool, iou_threshold, k)
        -> position [B, k] int64: sorted positions of the first k kept boxes (0 past the count)
           count [B] int64: kept boxes, at most k

A box is kept iff it is valid and no kept box before it has IoU > iou_threshold with it
(torchvision's formula: no +1, inter / (area_a + area_b - inter), fp32, IEEE rounding). The
caller sorts, offsets boxes per category and slices (runner.backends.static_graph.nms).

One op, three kernels, registered once (importing runner.ops):
- CUDA: `torch.library.triton_op` over the Triton kernels of runner/ops/nms_triton.py, launched
  through `wrap_triton`. torch.export keeps the op whole; Inductor (torch.compile and
  AOTInductor) compiles the kernels into what it makes, so an AOTInductor package holds them
  and needs neither Triton nor this module to run.
- CPU: `d2bench::greedy_nms_cpu`, the plain-torch tile scan (`greedy_nms_scan`), an opaque op.
  A CPU package calls it by name: the loading process imports runner.ops first (nothing of
  detectron2 or of the static_graph backend).
- Fake (meta): fixed shapes [B, k] and [B] from the inputs' shapes alone, so torch.export
  traces the op without touching data.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

SCAN_TILE = 64

try:  # Triton ships with the CUDA builds of torch; without it the op has no CUDA kernel
    from runner.ops.nms_triton import greedy_nms_triton
except ImportError as missing:  # pragma: no cover - every supported install has triton
    log.info("triton not importable (%s): d2bench::greedy_nms has no CUDA kernel", missing)
    greedy_nms_triton = None


def iou_above(rows: torch.Tensor, cols: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """rows [B, R, 4], cols [B, S, 4] -> [B, R, S] bool, IoU > threshold with torchvision's kernel
    formula in fp32: no +1, inter / (area_row + area_col - inter), each op rounded on its own."""
    ax1, ay1, ax2, ay2 = (t[:, :, None] for t in rows.unbind(-1))
    bx1, by1, bx2, by2 = (t[:, None, :] for t in cols.unbind(-1))
    area_rows = (ax2 - ax1) * (ay2 - ay1)
    area_cols = (bx2 - bx1) * (by2 - by1)
    width = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_min_(0)
    height = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_min_(0)
    inter = width.mul_(height)
    return inter / ((area_rows + area_cols) - inter) > iou_threshold


def greedy_nms_scan(
    boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, tile: int = SCAN_TILE
) -> torch.Tensor:
    """Greedy NMS over boxes [B, C, 4] already in score order -> keep [B, C] bool, exact.

    Tiles of `tile` boxes in score order: the tile's IoU rows against itself and every later box
    (never the C x C matrix), its own block resolved box by box, then its kept boxes' rows remove
    later boxes in one product. The same walk as the Triton kernel, in ~3 small ops per box: the
    CPU kernel (tens of ms at C = 5000), slow on a GPU (one launch per op).
    """
    c = valid.shape[1]
    removed = torch.zeros_like(valid)
    kept = []
    for start in range(0, c, tile):
        stop = min(start + tile, c)
        size = stop - start
        m = iou_above(boxes[:, start:stop], boxes[:, start:], iou_threshold)
        later = torch.ones(size, c - start, dtype=torch.bool, device=valid.device).triu_(1)
        m &= later
        open_ = valid[:, start:stop] & ~removed[:, start:stop]
        spared = ~m[:, :, :size]
        for row in range(size):  # a box still open at its turn is kept and closes what it hits
            open_ = open_ & (spared[:, row] | ~open_[:, row : row + 1])
        kept.append(open_)
        if stop < c:
            hit = torch.bmm(open_[:, None, :].to(torch.float32), m[:, :, size:].to(torch.float32))
            removed[:, stop:] |= hit[:, 0] > 0
    return torch.cat(kept, 1)


def first_k_positions(keep: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keep [B, C] bool -> (position [B, k] int64 of the first k True entries, 0 past the end;
    count [B] int64 = min(keep.sum, k)). A search in the running count: no data-dependent shape."""
    running = keep.cumsum(-1)
    wanted = torch.arange(1, k + 1, device=keep.device).expand(keep.shape[0], k).contiguous()
    position = torch.searchsorted(running, wanted)
    count = running[:, -1].clamp(max=k)
    position = torch.where(position < keep.shape[1], position, torch.zeros_like(position))
    return position, count


def _check(boxes: torch.Tensor, valid: torch.Tensor, k: int) -> None:
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"d2bench::greedy_nms: boxes {tuple(boxes.shape)} must be [B, C, 4] and valid "
            f"{tuple(valid.shape)} [B, C]"
        )
    if k < 0:
        raise ValueError(f"d2bench::greedy_nms: k={k}; must be >= 0")


def _empty_result(boxes: torch.Tensor, valid: torch.Tensor, k: int):
    batch = valid.shape[0]
    return (
        boxes.new_empty((batch, k), dtype=torch.int64),
        boxes.new_empty((batch,), dtype=torch.int64),
    )


@torch.library.custom_op("d2bench::greedy_nms_cpu", mutates_args=(), device_types="cpu")
def greedy_nms_cpu(
    boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU kernel of d2bench::greedy_nms (same contract): the tile scan."""
    _check(boxes, valid, k)
    keep = greedy_nms_scan(boxes.float(), valid.bool(), iou_threshold)
    return first_k_positions(keep, k)


@greedy_nms_cpu.register_fake
def _greedy_nms_cpu_fake(boxes, valid, iou_threshold, k):
    _check(boxes, valid, k)
    return _empty_result(boxes, valid, k)


@torch.library.triton_op("d2bench::greedy_nms", mutates_args=())
def greedy_nms(
    boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. Also the op's fake kernel (triton_op traces it with fake
    tensors): every shape below follows from B, C and k."""
    _check(boxes, valid, k)
    if boxes.device.type == "cuda":
        if greedy_nms_triton is None:
            raise RuntimeError("d2bench::greedy_nms on CUDA needs triton, which is not importable")
        return greedy_nms_triton(boxes, valid, iou_threshold, k)
    return torch.ops.d2bench.greedy_nms_cpu(boxes, valid, iou_threshold, k)
