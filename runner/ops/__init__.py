"""Custom ops: d2bench's own kernels as `torch.library` ops, registered once when this package
is imported, and used both by the measured backends and by the packages they export.

    torch.ops.d2bench.greedy_nms       (nms.py) greedy NMS over score-ordered boxes: Triton on
                                       CUDA (triton_op), a plain-torch tile scan on the CPU
                                       (d2bench::greedy_nms_cpu), a fake kernel for export
    torch.ops.d2bench.roi_align        (roi_align.py) multi-level ROIAlign, each box read from its
                                       own level at the features' dtype, fp32 sums equal to
                                       torchvision's: Triton on CUDA (triton_op), torchvision
                                       per level on the CPU (d2bench::roi_align_cpu), a fake
                                       kernel for export

Each op has a CPU kernel, a fake (meta) kernel with fixed output shapes and, where it pays, a
Triton kernel launched through `torch.library.wrap_triton`, so that `torch.export` traces it
without touching data and Inductor (torch.compile, AOTInductor) compiles it into its output.
Nothing here imports detectron2 or a backend: a process that loads a package may import this.
"""

from runner.ops import nms, roi_align

__all__ = ["nms", "roi_align"]
