"""Sync-free, fixed-shape batched NMS: torchvision's `batched_nms(...)[:k]` on padded inputs.

    batched_nms_topk(boxes [..., N, 4], scores [..., N], idxs [..., N], valid [..., N],
                     iou_threshold, k, max_candidates=None, select="sort")
        -> index [..., k] int64 into N, kept [..., k] bool, exact [...] bool

For every leading index it gives what

    keep = torchvision.ops.batched_nms(boxes[valid].float(), scores[valid], idxs[valid], thr)[:k]

gives (detectron2's `batched_nms` is the same call with `.float()`): `index[..., :count]` are
the kept boxes in batched_nms's order, `kept` marks those slots, padded slots hold index 0.
Every shape is fixed by N, k and max_candidates, and nothing reads a value back to the host
(no `.item()`, `nonzero`, boolean-mask indexing), so the call can sit inside a CUDA graph.

What is mirrored, bit for bit:
- torchvision's coordinate trick (`_batched_nms_coordinate_trick`, the path it takes on CUDA below
  25000 boxes and under tracing): boxes + idxs * (max coordinate of the valid boxes + 1), in fp32;
- its sort: scores descending, stable (ties keep the lower input index first; torchvision >= 0.15
  sorts stably on CPU and CUDA); invalid entries sort last as -inf and never suppress or get kept;
- its IoU: no +1, `inter / (area_a + area_b - inter) > threshold` in fp32, IEEE rounding.

The greedy solve itself is the custom op `d2bench::greedy_nms` (runner.ops.nms), so that the
measured backend and an exported package run the same kernels. Two paths give the same
answers (`method=`):
- "op" (what "auto" takes): the op. On CUDA its Triton kernels: an IoU bitmask kernel and one
  program per batch element that scans 32-box tiles in score order, stopping once k boxes are
  kept; exact in one pass. On the CPU its tile scan (below). Under Triton's interpreter
  (TRITON_INTERPRET=1, tests), "triton" runs the op's Triton kernels on CPU tensors.
- "torch", the reference, on CPU and GPU, in plain torch. Its greedy solve (`solver=`) is either
  "scan": tiles of 64 boxes in score order, each resolved box by box against the removals of
  the earlier tiles; exact always; ~3 small ops per box, so the CPU's choice (tens of ms at
  5000 boxes) but launch-bound on a GPU (the op's CPU kernel); or
  "fixpoint": the full upper-triangular suppression matrix M, then
  `keep <- valid & ~any_{j<i}(keep_j & M[j, i])` run `rounds` times (a few large ops each). Its
  fixed point is unique and equals greedy NMS; the iterates bracket it (odd ones below, even
  ones above), so wherever two successive iterates agree the answer is proven. `exact` is True
  when they agree on every box up to the k-th kept one, False when `rounds` was too few (never
  wrong in silence); real RPN and box-head inputs settle in about 10 rounds. The GPU's choice.
"auto" takes the op, except where a solver is named or on CUDA without triton (the torch path).

`max_candidates` C: only the top-C valid boxes by score enter NMS (cost ~ C^2). Greedy NMS is
prefix-consistent (a box's fate depends only on higher-scored boxes), so the answer is still
exact when num_valid <= C or at least k boxes were kept among the candidates; `exact` says so,
computed on the device. `select` says how the candidates are taken in that order: "sort" (a
stable sort of the whole row, then its first C) or "topk" (order.stable_topk: one torch.topk
of keys that pack score and index; the same indices, ties included).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

import runner.ops  # noqa: F401 - registers torch.ops.d2bench
from runner.backends.static_graph.order import SELECTS, descending_prefix, valid_first
from runner.ops.nms import first_k_positions, greedy_nms_scan, iou_above

log = logging.getLogger(__name__)

METHODS = ("auto", "op", "torch", "triton")
SOLVERS = ("auto", "scan", "fixpoint")
DEFAULT_ROUNDS = 24


def batched_nms_topk(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    valid: torch.Tensor,
    iou_threshold: float,
    k: int,
    max_candidates: int | None = None,
    *,
    select: str = "sort",
    method: str = "auto",
    solver: str = "auto",
    rounds: int = DEFAULT_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-shape, sync-free equivalent of
         keep = torchvision.ops.batched_nms(boxes[valid], scores[valid], idxs[valid], thr)[:k]
    for every leading batch index. boxes [..., N, 4] (any float dtype; computed in fp32),
    scores [..., N], idxs [..., N] integer categories, valid [..., N] bool.

    Returns (index [..., k] int64 into N, kept [..., k] bool, exact [...] bool):
      index[..., j] for j < count are the kept boxes in batched_nms's order (descending score);
      kept marks those slots (count = kept.sum(-1)); padded slots have kept=False and index 0.
      exact is True where the result is provably identical to batched_nms's first k.

    max_candidates: only the top-`max_candidates` valid boxes by score enter NMS (cost ~
      max_candidates^2); exact stays True when num_valid <= max_candidates or at least k boxes
      were kept among the candidates (greedy NMS is prefix-consistent).
    select: how the candidates are taken in score order: "sort" (a stable sort of the row),
      "topk" (order.stable_topk), or "presorted", where the caller promises that each row's
      valid entries are in descending score order already (a sorted torch.topk's output,
      masked): they are taken first, where they stand, with no sort (order.valid_first). All
      three give the same candidates in the same order.
    method: "auto" (the op, except where `solver` is named or on CUDA without triton: torch),
      "op", "torch", "triton" (the op's Triton kernels: CUDA, or CPU under TRITON_INTERPRET=1).
    solver: the torch path's greedy solve: "scan" (exact, ~3 small ops per box: the CPU's
      choice), "fixpoint" (`rounds` large ops, exact=False where too few: the GPU's), "auto".
    rounds: fixed-point rounds of the "fixpoint" solver.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: allowed values are {METHODS}")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: allowed values are {SOLVERS}")
    if select not in (*SELECTS, "presorted"):
        raise ValueError(f"select={select!r}: allowed values are {(*SELECTS, 'presorted')}")
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: must be at least 1")
    lead, n = scores.shape[:-1], scores.shape[-1]
    if boxes.shape != (*lead, n, 4) or idxs.shape != scores.shape or valid.shape != scores.shape:
        raise ValueError(
            f"shapes: boxes {tuple(boxes.shape)} must be [..., N, 4] and scores "
            f"{tuple(scores.shape)}, idxs {tuple(idxs.shape)}, valid {tuple(valid.shape)} [..., N]"
        )
    device = scores.device
    c = n if max_candidates is None else max(0, min(n, max_candidates))
    if c == 0 or k == 0:  # shapes alone decide: nothing can be kept, nothing is lost
        exact = torch.ones(lead, dtype=torch.bool, device=device)
        if k > 0 and n > 0:  # no candidates at all: exact only where nothing was valid
            exact = ~valid.any(-1)
        return (
            torch.zeros((*lead, k), dtype=torch.int64, device=device),
            torch.zeros((*lead, k), dtype=torch.bool, device=device),
            exact,
        )
    on_cuda = device.type == "cuda"
    if method == "auto":  # a solver named is a request for the torch path
        op_runs = (not on_cuda or triton_available()) and solver == "auto"
        method = "op" if op_runs else "torch"
    if method == "triton" and not (triton_runs_on(device) and triton_available()):
        raise RuntimeError(
            f"method='triton' needs CUDA tensors (or TRITON_INTERPRET=1) and triton; got {device}"
        )

    flat = int(torch.Size(lead).numel())
    cand = sorted_candidates(
        boxes.reshape(flat, n, 4),
        scores.reshape(flat, n),
        idxs.reshape(flat, n),
        valid.reshape(flat, n),
        c,
        select,
    )
    if method == "op" or (method == "triton" and on_cuda):
        position, count = torch.ops.d2bench.greedy_nms(cand.boxes, cand.valid, iou_threshold, k)
        exact = (cand.num_valid <= c) | (count >= k)
    elif method == "triton":  # the op's Triton kernels on CPU tensors, in Triton's interpreter
        from torch._library.triton import set_wrap_triton_enabled

        from runner.ops.nms_triton import greedy_nms_triton

        with set_wrap_triton_enabled(False):
            position, count = greedy_nms_triton(cand.boxes, cand.valid, iou_threshold, k)
        exact = (cand.num_valid <= c) | (count >= k)
    else:
        if solver == "scan" or (solver == "auto" and not on_cuda):
            keep = greedy_nms_scan(cand.boxes, cand.valid, iou_threshold)
            exact = torch.ones_like(cand.num_valid, dtype=torch.bool)
        else:
            keep, exact = greedy_nms_fixpoint(cand.boxes, cand.valid, iou_threshold, k, rounds)
        exact = exact & ((cand.num_valid <= c) | (keep.sum(-1) >= k))
        position, count = first_k_positions(keep, k)
    index = cand.order.gather(1, position)
    kept = torch.arange(k, device=device) < count[:, None]
    index = torch.where(kept, index, torch.zeros_like(index))
    return index.reshape(*lead, k), kept.reshape(*lead, k), exact.reshape(lead)


# The same function as a compile boundary: a compiled caller (static_graph compile=true) stops
# its graph before it, runs it as it is, and goes on in a new graph; `batched_nms_topk` itself
# is traced into the caller's graph (static_graph's option compile_nms). torch.export traces
# through both.
batched_nms_topk_apart = torch.compiler.disable(batched_nms_topk)


def nms_call(compile_nms: bool):
    """batched_nms_topk where compiled callers compile it with their own code, else its
    compile boundary batched_nms_topk_apart."""
    return batched_nms_topk if compile_nms else batched_nms_topk_apart


@functools.cache
def triton_available() -> bool:
    """True where `import triton` works (the GPU machine); decided once per process."""
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        log.info("triton not importable (%s): static_graph NMS uses the torch path", error)
        return False
    return True


def triton_runs_on(device: torch.device) -> bool:
    """CUDA, or any device under Triton's interpreter (TRITON_INTERPRET=1, set before triton
    is imported): how the CPU tests run the Triton kernels for real."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


class Candidates:
    """The top-C entries of each row in torchvision's order: `order` [B, C] input indices,
    `boxes` [B, C, 4] fp32 offset boxes (coordinate trick), `valid` [B, C] bool,
    `num_valid` [B] int64 (valid entries of the whole row, candidates or not)."""

    def __init__(self, order, boxes, valid, num_valid):
        self.order, self.boxes, self.valid, self.num_valid = order, boxes, valid, num_valid


def sorted_candidates(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    valid: torch.Tensor,
    c: int,
    select: str = "sort",
) -> Candidates:
    """boxes [B, N, 4], scores/idxs/valid [B, N] -> the top-c of each row, sorted as torchvision's
    nms sorts (stable, descending; invalid last), with boxes offset per category exactly as
    `_batched_nms_coordinate_trick` offsets them (max over the row's valid boxes, in fp32).
    `select`: the first c taken from a stable sort of the row ("sort") or by order.stable_topk
    ("topk"), or, for rows whose valid entries are in descending order already ("presorted"),
    the valid ones first where they stand (order.valid_first): the same indices."""
    boxes = boxes.float()
    valid = valid.bool()
    if select == "presorted":
        order = valid_first(valid)[:, :c]
    else:
        order = descending_prefix(scores.masked_fill(~valid, float("-inf")), c, select)
    any_valid = valid.any(-1)
    top = boxes.masked_fill(~valid[..., None], float("-inf")).amax(dim=(-2, -1))
    top = torch.where(any_valid, top, torch.zeros_like(top))  # no valid box: any finite value
    offsets = idxs.to(boxes.dtype) * (top[:, None] + 1)
    shifted = boxes + offsets[..., None]
    return Candidates(
        order=order,
        boxes=shifted.gather(1, order[..., None].expand(-1, -1, 4)),
        valid=valid.gather(1, order),
        num_valid=valid.sum(-1),
    )


def suppression_matrix(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """boxes [B, C, 4] in score order -> M [B, C, C] bool, M[b, i, j] = j > i and
    IoU(box i, box j) > threshold (`iou_above`)."""
    c = boxes.shape[1]
    later = torch.ones(c, c, dtype=torch.bool, device=boxes.device).triu_(1)
    return iou_above(boxes, boxes, iou_threshold) & later


def greedy_nms_fixpoint(
    boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, k: int, rounds: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS over boxes [B, C, 4] already in score order -> (keep [B, C] bool, proven [B]).

    keep <- valid & ~any_{j<i}(keep_j & M[j, i]), `rounds` times from keep = valid. The map is
    antitone and its fixed point (greedy NMS) unique, so successive iterates lie on either side of
    it; where two agree, that box is decided. `proven`: they agree on every box up to and
    including the k-th kept one (or on all boxes), so keep's first k are greedy's first k.
    A few large ops per round: the GPU's torch path (real RPN and box-head inputs settle in
    about 10 rounds).
    """
    m = suppression_matrix(boxes, iou_threshold)  # rows of invalid boxes never count: keep <= valid
    # 0/1 products summed: fp16 counts exactly up to 2048 and stays > 0 beyond; CPU lacks fast fp16
    weights = m.to(torch.float16 if boxes.is_cuda else torch.float32)
    keep, previous = valid, valid
    for _ in range(rounds):
        previous = keep
        hit = torch.bmm(keep[:, None, :].to(weights.dtype), weights)[:, 0] > 0
        keep = valid & ~hit
    agreed = torch.cumprod((keep == previous).to(torch.int32), dim=-1).bool()  # decided prefix
    proven = agreed[:, -1] | ((keep & agreed).sum(-1) >= k)
    return keep, proven
