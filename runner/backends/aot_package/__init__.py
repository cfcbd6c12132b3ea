"""aot_package: static_graph's rewritten detector saved as an AOTInductor package and timed as a
user would run it: the package loaded back (torch._inductor.aoti_load_package) and each call
replayed inside a CUDA graph, the input copy and the output slicing in the timed call
(conf/backend/aot_package.yaml).

    optimize  the rewrite (static_graph.rewrite: same options, same weights) -> for each input
              size of the run, export + AOTInductor compile (build.py; one package per size and
              batch) -> load -> the package's outputs checked against the in-process forward's
              -> static_graph's Replay over the loaded packages, with no eager fallback (a
              package stands alone; calls whose exactness flag is off are counted)

The measuring process loads packages and never compiles (build.compile_package compiles in a
process of its own), so it starts with build.LOADER_ENVIRONMENT (`environment`): no pool of
compile workers and no build checks in Inductor's CPU ISA probe (build.py says why).
Packages are kept in `cache_dir` under a key of what they hold (build.package_key): a run whose
package exists reuses it (`reuse: true`), as Inductor's own cache serves torch.compile, and its
notes say so. optimize_s covers this run's export (always) and compile (where it built the
package); the notes carry the package's size (MB), what building it cost, the load time (s) and
the graph memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from runner.backends import _parts, register
from runner.backends.aot_package.build import LOADER_ENVIRONMENT
from runner.backends.static_graph import OPTIONS as STATIC_OPTIONS
from runner.backends.static_graph import check_together

log = logging.getLogger(__name__)

REWRITE = (
    "max_candidates",
    "select",
    "half_roi_align",
    "roi_align",
    "fold_bn",
    "half_weights",
    "keypoint_area",
    "fuse_levels",
    *_parts.TUNING,
)
OPTIONS = {
    **{name: STATIC_OPTIONS[name] for name in REWRITE},
    "graphs": (bool,),  # false: call the loaded package without CUDA graphs
    "cache_dir": (str,),  # where packages are kept, by key
    "reuse": (bool,),  # true: a package already in cache_dir for the same key is loaded
}


class ByShape:
    """images -> the loaded package of their shapes (one package per size and batch)."""

    def __init__(self):
        self.packages: dict = {}

    def __call__(self, *images: torch.Tensor):
        key = tuple(tuple(im.shape) for im in images)
        if key not in self.packages:
            raise ValueError(
                f"aot_package: no package for images {list(key)}; packaged: {list(self.packages)}"
            )
        return self.packages[key](*images)


@register(
    "aot_package",
    options=OPTIONS,
    owns_precision=True,
    environment=LOADER_ENVIRONMENT,  # the measuring process only loads packages
    combined=lambda options: check_together(options, "aot_package"),
)
def optimize(exported, inputs, precision, options):
    from runner.backends.aot_package import build
    from runner.backends.static_graph import _postprocess, rewrite
    from runner.backends.static_graph.capture import Replay

    outputs, notes = rewrite(exported, precision, options)
    heads = getattr(exported.model, "roi_heads", None)
    detector = type(exported.model).__name__ + (f"/{type(heads).__name__}" if heads else "")
    described = {"detector": detector, "postprocess": _postprocess(exported)}
    device = exported.example[0].device
    cache_dir = Path(options.get("cache_dir", "outputs/packages"))
    forward = ByShape()
    for shape, images in inputs.images.items():
        with torch.no_grad():
            expected = outputs(*images)  # also makes the anchors of this size, outside the trace
        package = build.build(
            outputs,
            images,
            {**described, "precision": precision.name, "shape": shape},
            cache_dir=cache_dir,
            reuse=options.get("reuse", True),
        )
        loaded, load_s, isa_probe_s = build.load(package.path, device)
        with torch.no_grad():
            agrees = agreement(expected, loaded(*images), outputs.fields)
        forward.packages[tuple(tuple(im.shape) for im in images)] = loaded
        made = (
            f"built: compile {package.compile_s:.1f} s"
            if package.compile_s is not None
            else f"reused (compile {package.built_compile_s:.1f} s when built)"
        )
        notes.append(
            f"package[{shape}] {package.path.name} {package.size_mb:.1f} MB {made}; "
            f"export {package.export_s:.1f} s; libstdc++ {package.runtime}; load {load_s:.2f} s "
            f"(CPU ISA probe before it {isa_probe_s:.1f} s); "
            f"package vs in-process: {agrees}"
        )
        log.info("aot_package: %s", notes[-1])
    graphs = options.get("graphs", True) and device.type == "cuda"
    return Replay(forward, outputs.fields, fallback=None, graphs=graphs, notes=notes)


MATCH_IOU = 0.7  # agreement(): a package's detection matches the in-process one's at this IoU


def agreement(expected: tuple, got, fields) -> str:
    """How a loaded package's Outputs agree with the in-process forward's, for the notes and
    `python -m runner.package`: the detections matched as sets (same class, IoU >= MATCH_IOU,
    greedy by score, as parity matches them), and the largest raw difference of any output. At
    fp16 Inductor's graph rounds differently from the uncompiled forward, so near-tied
    detections can trade slots: a large raw difference with F1 1.00 is that, not a wrong
    package."""
    raw = f"largest raw difference {_largest_difference(expected, got):.3g}"
    if fields.answers not in ("instances", "proposals"):
        return raw
    f1 = _detections_f1(expected, tuple(got), fields)
    return f"detections F1 {f1:.2f} (same class, IoU >= {MATCH_IOU}), {raw}"


def _detections_f1(expected: tuple, got: tuple, fields) -> float:
    from runner.exported import Detections, match

    matched = total = 0
    want = dict(zip(fields.names, expected, strict=True))
    have = dict(zip(fields.names, got, strict=True))
    for i in range(len(want["counts"])):
        sides = []
        for named in (want, have):
            n = int(named["counts"][i])
            sides.append(
                Detections(
                    named["boxes"][i, :n].float().cpu(),
                    named["scores"][i, :n].float().cpu(),
                    named["classes"][i, :n].cpu(),
                )
            )
        matched += len(match(sides[0], sides[1], MATCH_IOU))
        total += len(sides[0]) + len(sides[1])
    return 2 * matched / total if total else 1.0


def _largest_difference(expected: tuple, got) -> float:
    """The largest absolute difference between two Outputs tuples (inf where shapes or dtypes
    differ): the package against the forward it was made from."""
    largest = 0.0
    for want, have in zip(expected, got, strict=True):
        if want.shape != have.shape or want.dtype != have.dtype:
            return float("inf")
        if want.numel():
            largest = max(largest, float((want.double() - have.double()).abs().max()))
    return largest
