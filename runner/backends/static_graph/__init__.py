"""static_graph: the detector rewritten into fixed-shape, sync-free tensor code and replayed as
one CUDA graph per input size and batch (conf/backend/static_graph.yaml).

Where the other backends leave the detection tail (top-k, NMS and its host sync, ROI heads on
a run-time box count, mask paste) running op by op, this one rewrites it: every tensor has a
shape fixed by the config and the input size, what eager would remove is masked, and the
detection count leaves the GPU once, at the end of the call. Parts, one file each:

    nms.py        sync-free batched NMS around the custom op d2bench::greedy_nms (runner.ops)
    order.py      orders without a full sort: a stable sort's prefix by one topk, a partition
    proposals.py  the RPN: per-level top-k, decode, clip, masks, NMS, post-NMS top-k
    pooling.py    multi-level ROIAlign without per-level nonzero; mask paste
    slots.py      fixed detection slots: selection (NMS, best detections) and compaction
    roi_heads.py  ROI box stages (standard, Cascade, C4's res5) by a table, and the mask head
    keypoints.py  the keypoint head and its heatmap decoding in a fixed pixel budget
    dense.py      RetinaNet's and FCOS's dense heads
    canvas.py     option fuse_levels: a head shared by the pyramid levels run once over all of
                  them, laid out in one canvas (RetinaNet's, FCOS's, the RPN's)
    semantic.py   the semantic segmentation head (SemanticSegmentor, Panoptic FPN)
    postprocess.py  detector_postprocess and sem_seg_postprocess at the input size: clip, mask
                  empty boxes, paste masks, crop and resize the semantic logits
    detector.py   the whole forward of a detectron2 model from those parts, chosen by tables:
                  detectors, RPN-only proposal networks, semantic segmentors, Panoptic FPN
    outputs.py    its answer as flat fixed-shape tensors at the run's precision (the contract
                  of the replay and of every package: runner.backends.aot_package)
    capture.py    CUDA graph capture and replay, output slicing, eager fallback, notes
    compiled.py   compile=true: the rewritten forward under torch.compile (once per input
                  size), Inductor's cache counts, and the compile that keeps the stage ranges

The export setting does not matter here: the rewrite replaces the exported module (traced or
scripted) with its own forward over the same weights.
"""

from __future__ import annotations

import copy
import logging

from runner.backends import Unsupported, _parts, register

log = logging.getLogger(__name__)

OPTIONS = {
    "compile": (bool,),  # torch.compile (Inductor) the rewritten forward inside the graph
    "mode": ("default", "max-autotune-no-cudagraphs"),  # Inductor mode when compile=true
    # compile=true: a second compile that keeps the stage ranges, for the row's stage columns
    "compile_stages": (bool,),
    # compile=true: Inductor compiles the NMS calls with the rest (one graph) instead of
    # running them as they are between graphs
    "compile_nms": (bool,),
    "graphs": (bool,),  # false: run the rewritten forward without CUDA graphs (debugging)
    "max_candidates": (int,),  # detection candidates entering the final NMS
    "select": ("sort", "topk"),  # a score order's prefix: full stable sort, or one packed topk
    "half_roi_align": (bool,),  # ROIAlign in fp16 on fp16 features (autocast runs it in fp32)
    "roi_align": ("torchvision", "op"),  # whose ROIAlign pools: torchvision's or d2bench::roi_align
    "fold_bn": (bool,),  # fold frozen batch norms into the convolutions before capture
    "half_weights": (bool,),  # conv and linear weights in the autocast dtype (fp16/bf16 runs)
    "keypoint_area": (int, float),  # upsampled keypoint-heatmap pixels per image, image areas
    "fuse_levels": (bool,),  # the heads shared by the levels run once over a canvas (canvas.py)
    **_parts.TUNING,
}


def check_together(options: dict, backend: str = "static_graph") -> None:
    """The options that each pass alone but not together (ValueError naming them): asked of
    static_graph's and the package backend's options before a run, and by the rewrite."""
    candidates = options.get("max_candidates", 2048)
    if candidates < 1:
        raise ValueError(f"backend={backend}: options.max_candidates={candidates}; need >= 1")
    if options.get("roi_align", "torchvision") == "op" and options.get("half_roi_align"):
        raise ValueError(
            f"backend={backend}: options.half_roi_align=true runs torchvision's ROIAlign in "
            "fp16; options.roi_align=op pools with d2bench::roi_align (fp32 sums of the fp16 "
            "features): choose one"
        )
    keypoint_area = options.get("keypoint_area", 8.0)
    if keypoint_area <= 0:
        raise ValueError(f"backend={backend}: options.keypoint_area={keypoint_area}; need > 0")
    for option, why in _NEEDS_COMPILE.items():
        if options.get(option) and not options.get("compile"):
            raise ValueError(f"backend={backend}: options.{option}=true {why}")


_NEEDS_COMPILE = {  # option -> what it does, which only compile=true has
    "compile_stages": "compiles a second copy that keeps the stage ranges, for compile=true; "
    "without compile the rows have their stages already",
    "compile_nms": "has Inductor compile the NMS with the rest, for compile=true; without "
    "compile nothing is compiled",
}


@register("static_graph", options=OPTIONS, owns_precision=True, combined=check_together)
def optimize(exported, inputs, precision, options):
    from runner.backends.static_graph.capture import Replay

    outputs, notes = rewrite(exported, precision, options)
    forward, stage_forward = outputs, outputs
    if options.get("compile"):
        from runner.backends.static_graph.compiled import compiled

        forward, stage_forward, compile_notes = compiled(
            outputs, inputs, options.get("mode", "default"), options.get("compile_stages")
        )
        notes.extend(compile_notes)
    graphs = options.get("graphs", True) and exported.example[0].device.type == "cuda"
    return Replay(
        forward,
        outputs.fields,
        fallback=at_precision(exported.module, precision),
        graphs=graphs,
        notes=notes,
        stage_forward=stage_forward,
    )


def rewrite(exported, precision, options) -> tuple:
    """The detector of `exported` rewritten (detector.StaticDetector) with the weight rewrites
    and tuning that `options` ask for, answering as outputs.Outputs at `precision`; and the
    notes that say what was done. Shared by static_graph and the package backend (aot_package),
    so both run the same rewrite. The exported module keeps its own weights."""
    from runner import families
    from runner.backends.static_graph.detector import (
        Budgets,
        StaticDetector,
        cast_weights,
        fold_frozen_batchnorm,
    )
    from runner.backends.static_graph.outputs import Outputs
    from runner.precision import torch_dtype

    if not families.get(exported.family).REWRITABLE:
        raise Unsupported(
            f"backend=static_graph rewrites detectron2 detectors; {type(exported.model).__name__}"
            " is not one"
        )
    check_together(options)
    candidates = options.get("max_candidates", 2048)
    roi_align = options.get("roi_align", "torchvision")
    notes = []
    model = exported.model
    if options.get("fold_bn") or options.get("half_weights") or options.get("fuse_levels"):
        # the rewrites change weights and heads in place, and the eager fallback (the exported
        # module) shares them: the rewritten forward gets a copy of its own
        model = copy.deepcopy(model)
    if options.get("fold_bn"):
        notes.append(f"fold_bn={fold_frozen_batchnorm(model)}")
    dtype = torch_dtype(precision.dtype) if precision.autocast else None
    if options.get("half_weights"):
        if dtype is not None:
            notes.append(f"half_weights={cast_weights(model, dtype)}")
        else:  # the option means "in the reduced precision"; fp32 has none to cast to
            notes.append(f"half_weights=n/a at {precision.name}")
    log.info("static_graph: %s", "; ".join(notes) or "no weight rewrites")
    _parts.tune(model, options)
    if options.get("fuse_levels"):
        from runner.backends.static_graph.canvas import fuse_levels

        notes.append(fuse_levels(model))  # read when the row is written: with its canvases
        log.info("static_graph: %s", notes[-1])
    keypoint_area = options.get("keypoint_area", 8.0)
    budgets = Budgets(
        max_candidates=candidates,
        select=options.get("select", "sort"),
        compile_nms=options.get("compile_nms", False),
        half_roi_align=options.get("half_roi_align", False),
        roi_align=roi_align,
        keypoint_area=float(keypoint_area),
    )
    detector = StaticDetector(model, _postprocess(exported), budgets).eval()
    return Outputs(detector, dtype).eval(), notes


def at_precision(module, precision):
    """`module` called at the run's precision (the eager fallback: the harness does not wrap
    the calls of a backend that owns the precision)."""
    from runner.precision import autocast

    def call(*images):
        with autocast(precision, images[0].device):
            return module(*images)

    return call


def _postprocess(exported) -> bool:
    """Whether the exported module post-processes (resized boxes, pasted masks)."""
    # the scripted path's wrapper (runner.families.detectron2._ScriptPath)
    inner = getattr(exported.module, "postprocess", None)
    if inner is not None:
        return bool(inner)
    inference = getattr(exported.module, "inference_func", None)  # TracingAdapter
    return bool(getattr(inference, "postprocess", False))
