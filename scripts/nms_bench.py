"""static_graph NMS against torchvision's batched_nms at detectron2's sizes: same answers, and time.

    PYTHONPATH=. python scripts/nms_bench.py [--device cuda] [--scale 1.0] [--repeats 50]

Workloads (a 480x640 image, synthetic but shaped like the models' tensors, seeded):
  rpn_b1, rpn_b2  RPN proposals: [B, 5 levels x 1000] boxes, idxs = level (levels with fewer
                  anchors padded invalid), IoU 0.7, k = 1000 (post_nms_topk)
  box_head        Fast R-CNN inference: 1000 proposals x 80 classes flattened (valid = score >
                  0.05), top 2000 candidates, IoU 0.5, k = 100
  retinanet       5 levels x top 1000 (anchor, class) pairs, 80 classes, IoU 0.5, k = 100
For each it checks equality with torchvision on the device (every row; `exact` rows must match,
`MISMATCH` otherwise), then times: torchvision's batched_nms on the compacted inputs as eager calls
it (wall time, synchronized), and ours per path both as eager calls and as a CUDA graph replay
(the static_graph backend's case). Median ms over --repeats calls. Prints a Markdown table to
stdout and, where $OUT is set, to $OUT/nms_bench.txt. --scale shrinks every size (the CPU test
runs 0.1). Finishes in well under a minute on an H200.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_coordinate_trick

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runner.backends.static_graph.nms import batched_nms_topk, triton_available  # noqa: E402

HEIGHT, WIDTH = 480, 640
STRIDES = (4, 8, 16, 32, 64)  # RPN: P2-P6
RETINA_STRIDES = (8, 16, 32, 64, 128)  # RetinaNet: P3-P7


@dataclass
class Workload:
    name: str
    inputs: tuple  # boxes [B, N, 4], scores [B, N], idxs [B, N], valid [B, N]
    threshold: float
    k: int
    budget: int | None


def objects(g, count=12):
    """Ground-truth-like boxes (x1, y1, x2, y2) and classes the synthetic scores gather around."""
    centre = torch.rand(count, 2, generator=g) * torch.tensor([WIDTH, HEIGHT])
    size = torch.rand(count, 2, generator=g) * 220 + 24
    return torch.cat([centre - size / 2, centre + size / 2], -1), torch.randint(0, 80, (count,))


def iou_to(boxes, targets):
    return torchvision.ops.box_iou(boxes, targets).amax(-1)


def level_anchors(stride, g):
    """Anchors of one FPN level (3 aspect ratios), jittered the way box deltas move them."""
    ys, xs = torch.meshgrid(
        torch.arange(stride / 2, HEIGHT, stride),
        torch.arange(stride / 2, WIDTH, stride),
        indexing="ij",
    )
    centre = torch.stack([xs.flatten(), ys.flatten()], -1).repeat_interleave(3, 0)
    ratio = torch.tensor([0.5, 1.0, 2.0]).repeat(len(centre) // 3)
    size = stride * 8 * torch.stack([ratio.rsqrt(), ratio.sqrt()], -1)
    centre = centre + torch.randn(centre.shape, generator=g) * size * 0.1
    size = size * torch.exp(torch.randn(size.shape, generator=g) * 0.1)
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    return boxes.clamp(min=0).minimum(torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT]))


def rpn(g, batch, per_level):
    rows = []
    for _ in range(batch):
        truth, _ = objects(g)
        parts = []
        for level, stride in enumerate(STRIDES):
            boxes = level_anchors(stride, g)
            score = iou_to(boxes, truth) * 4 + torch.randn(len(boxes), generator=g)
            top = score.topk(min(per_level, len(score)))
            pad = per_level - len(top.indices)
            valid = torch.ones(per_level, dtype=torch.bool)
            valid[len(top.indices) :] = False
            wide = (boxes[:, 2:] - boxes[:, :2]).amin(-1) > 0  # detectron2's min_box_size=0
            valid[: len(top.indices)] &= wide[top.indices]
            parts.append(
                (
                    torch.cat([boxes[top.indices], torch.zeros(pad, 4)]),
                    torch.cat([top.values, torch.full((pad,), -1e4)]),
                    torch.full((per_level,), level),
                    valid,
                )
            )
        rows.append([torch.cat(p) for p in zip(*parts, strict=True)])
    return tuple(torch.stack(p) for p in zip(*rows, strict=True))


def box_head(g, proposals):
    truth, classes = objects(g)
    pick = torch.randint(0, len(truth), (proposals,), generator=g)
    base = truth[pick]
    size = base[:, 2:] - base[:, :2]
    base = base + torch.randn(proposals, 4, generator=g) * size.repeat(1, 2) * 0.15
    boxes = (
        base[:, None, :] + torch.randn(proposals, 80, 4, generator=g) * 3
    )  # per-class regression
    quality = iou_to(base, truth)
    logits = torch.randn(proposals, 81, generator=g)
    logits[torch.arange(proposals), classes[pick]] += quality * 8
    logits[:, 80] += 2  # background
    scores = logits.softmax(-1)[:, :80]
    idxs = torch.arange(80).expand(proposals, 80)
    return (
        boxes.reshape(1, -1, 4),
        scores.reshape(1, -1),
        idxs.reshape(1, -1),
        scores.reshape(1, -1) > 0.05,
    )


def retinanet(g, per_level):
    truth, classes = objects(g)
    parts = []
    for stride in RETINA_STRIDES:
        boxes = level_anchors(stride, g)
        logits = torch.randn(len(boxes), 80, generator=g) - 4
        overlap = torchvision.ops.box_iou(boxes, truth)
        best, which = overlap.max(-1)
        logits[torch.arange(len(boxes)), classes[which]] += best * 8
        scores = logits.sigmoid().flatten()
        top = scores.topk(min(per_level, len(scores)))
        pad = per_level - len(top.indices)
        valid = torch.cat([top.values > 0.05, torch.zeros(pad, dtype=torch.bool)])
        parts.append(
            (
                torch.cat([boxes[top.indices // 80], torch.zeros(pad, 4)]),
                torch.cat([top.values, torch.zeros(pad)]),
                torch.cat([top.indices % 80, torch.zeros(pad, dtype=torch.long)]),
                valid,
            )
        )
    return tuple(torch.cat(p)[None] for p in zip(*parts, strict=True))


def workloads(device, seed=0, scale=1.0, only=None):
    """The four workloads on `device`, generated on the CPU from `seed` (same data everywhere)."""
    g = torch.Generator().manual_seed(seed)
    per = max(4, int(1000 * scale))
    made = [
        Workload("rpn_b1", rpn(g, 1, per), 0.7, per, None),
        Workload("rpn_b2", rpn(g, 2, per), 0.7, per, None),
        Workload("box_head", box_head(g, per), 0.5, 100, max(8, int(2000 * scale))),
        Workload("retinanet", retinanet(g, per), 0.5, 100, None),
    ]
    for load in made:
        load.inputs = tuple(t.to(device) for t in load.inputs)
    return [w for w in made if only in (None, w.name)]


def torchvision_rows(load):
    """torchvision's answer per row: the calls eager detectron2 makes (compacted inputs)."""
    boxes, scores, idxs, valid = load.inputs
    answers = []
    for b, s, i, v in zip(boxes, scores, idxs, valid, strict=True):
        where, b = v.nonzero()[:, 0], b[v].float()
        limit = 100_000 if b.is_cuda else 4000  # beyond: per-class loops; the trick is ours
        nms = torchvision.ops.batched_nms if b.numel() <= limit else _batched_nms_coordinate_trick
        answers.append(where[nms(b, s[v], i[v], load.threshold)][: load.k].tolist())
    return answers


def verdict(load, method):
    """'ok' (every exact row equal), 'inexact N' (rows flagged, never wrong), or 'MISMATCH'."""
    index, kept, exact = batched_nms_topk(
        *load.inputs, load.threshold, load.k, load.budget, method=method
    )
    inexact = 0
    for row, want in enumerate(torchvision_rows(load)):
        if not exact[row]:
            inexact += 1
        elif index[row][kept[row]].tolist() != want:
            return "MISMATCH"
    return "ok" if not inexact else f"ok, {inexact} row(s) exact=False"


def median_ms(call, repeats, sync):
    call()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def graph_ms(call, repeats):
    """Median time of one CUDA graph replay of `call`, by CUDA events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    methods = ["torch"] + (["triton"] if cuda and triton_available() else [])
    lines = [
        f"static_graph NMS vs torchvision {torchvision.__version__}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name(device) if cuda else 'cpu'}, scale {args.scale}, "
        f"median of {args.repeats} calls (ms; eager = synchronized wall time, graph = CUDA events)",
        "",
        "| workload | boxes | k | budget | torchvision eager | "
        + " | ".join(f"{m} eager | {m} graph" if cuda else f"{m} eager" for m in methods)
        + " | answers |",
        "|---|---|---:|---:|---:|" + "---:|" * (len(methods) * (2 if cuda else 1)) + "---|",
    ]
    failed = False
    for load in workloads(device, scale=args.scale):
        boxes, scores, idxs, valid = load.inputs
        answers = "; ".join(f"{m}: {verdict(load, m)}" for m in methods)
        failed |= "MISMATCH" in answers
        compact = [(b[v].float(), s[v], i[v]) for b, s, i, v in zip(*load.inputs, strict=True)]

        def theirs(compact=compact, load=load):
            for b, s, i in compact:
                torchvision.ops.batched_nms(b, s, i, load.threshold)[: load.k]

        cells = [f"{median_ms(theirs, args.repeats, sync):.3f}"]
        for method in methods:

            def ours(method=method, load=load):
                return batched_nms_topk(
                    *load.inputs, load.threshold, load.k, load.budget, method=method
                )

            cells.append(f"{median_ms(ours, args.repeats, sync):.3f}")
            if cuda:
                cells.append(f"{graph_ms(ours, args.repeats):.3f}")
        shape = "x".join(str(d) for d in scores.shape) + f" ({int(valid.sum())} valid)"
        lines.append(
            f"| {load.name} | {shape} | {load.k} | {load.budget or '-'} | "
            + " | ".join(cells)
            + f" | {answers} |"
        )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "nms_bench.txt").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
