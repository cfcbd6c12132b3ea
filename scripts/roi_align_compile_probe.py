"""Why Inductor's compile of d2bench::roi_align answers differently from the op (issue 21;
docs/kernels.md). On an H100 (sessions 10 and 11) `torch.compile` of the op failed its
same-bits test, and a Mask R-CNN FPN package made with `roi_align: op` found 0 detections,
while the op itself, eager and replayed in a CUDA graph, equals torchvision. This compiles the
op alone on the GPU, in the cases the tests use, and says how the answers differ (everywhere
or in some boxes; which level), what Inductor believes the Triton kernel writes, and keeps the
code Inductor generated:

    PYTHONPATH=. python scripts/roi_align_compile_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import runner.ops  # noqa: E402, F401 - registers d2bench::roi_align
from runner.ops import roi_align_triton  # noqa: E402


def describe(name: str, want: torch.Tensor, got: torch.Tensor, levels: torch.Tensor) -> None:
    want, got = want.float().cpu(), got.float().cpu()
    same = (want == got) | (want.isnan() & got.isnan())
    per_box = same.flatten(1).all(dim=1)
    print(
        f"{name}: shape {tuple(got.shape)} equal {bool(same.all())}; max |diff| "
        f"{float((want - got).abs().nan_to_num(float('inf')).max()):.4g}; elements differing "
        f"{int((~same).sum())}/{same.numel()}; boxes equal {int(per_box.sum())}/{len(per_box)}; "
        f"nan {int(got.isnan().sum())}; zeros {int((got == 0).sum())} (reference "
        f"{int((want == 0).sum())})",
        flush=True,
    )
    flat = levels.reshape(-1).cpu()
    for level in flat.unique().tolist():
        chosen = flat == level
        print(f"    level {level}: boxes equal {int(per_box[chosen].sum())}/{int(chosen.sum())}")


def mutations(captured: list) -> None:
    """What Inductor's analysis of the kernel's TTIR says it writes, for the first launch."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    kernel, args, kwargs = captured[0]
    named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
    for function in ("identify_accessed_tensors", "identify_mutated_tensors"):
        if hasattr(wrap, function):
            try:
                found = getattr(wrap, function)(kernel, named, {})
            except TypeError:
                found = getattr(wrap, function)(kernel, named)
            print(f"{function}: {found}", flush=True)
            return
    print("no mutation analysis found in torch._higher_order_ops.triton_kernel_wrap")


def capture_launches() -> list:
    """Record every launch of the op's kernel (eager), passing it on unchanged."""
    captured = []
    real = roi_align_triton.wrap_triton

    def recording(kernel):
        launcher = real(kernel)

        class Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    captured.append((kernel, args, kwargs))
                    return launcher[grid](*args, **kwargs)

                return launch

        return Grid()

    roi_align_triton.wrap_triton = recording
    return captured


def compiled_case(out: Path, name: str, function, inputs, levels) -> None:
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with torch.no_grad():
        want = function(*inputs)
        try:
            got, code = run_and_get_code(torch.compile(function, fullgraph=True), *inputs)
        except Exception:  # noqa: BLE001 - a probe: say what failed and go on
            print(f"{name}: compile failed\n{traceback.format_exc()[-3000:]}", flush=True)
            return
    (out / f"compiled_{name}.py").write_text("\n\n# ---- next\n\n".join(code))
    describe(name, want, got, levels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("torch", torch.__version__, "on", torch.cuda.get_device_name(), flush=True)
    from tests.test_roi_align import TwoLevels, cases, on_cuda, two_level_inputs

    op = torch.ops.d2bench.roi_align
    import torch._inductor.config as inductor_config

    # levels Inductor computes itself (as an FPN's are), at Mask R-CNN FPN's 480 x 640 sizes:
    # one image of the third level spans 30 x 40 = 1200 elements per channel, a stride above
    # Inductor's padding threshold (1024) that its comprehensive padding may round up to a
    # multiple of 64 fp16 elements, while the kernel's strides are the ones traced
    g = torch.Generator().manual_seed(0)
    sizes = ((120, 160), (60, 80), (30, 40), (15, 20))
    raw = [torch.randn(1, 16, h, w, generator=g).half().cuda() for h, w in sizes]
    corner = torch.rand(1, 64, 2, generator=g) * torch.tensor([600.0, 440.0])
    boxes = torch.cat([corner, corner + 8 + torch.rand(1, 64, 2, generator=g) * 200], -1).cuda()
    levels = torch.randint(0, 4, (1, 64), generator=g).cuda()

    def computed(r0, r1, r2, r3, boxes, levels):
        pyramid = [r * 1.0 + 0.0 for r in (r0, r1, r2, r3)]
        return op(pyramid, boxes, levels, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 7, 7, 0, True)

    compiled_case(args.out, "computed_fp16", computed, (*raw, boxes, levels), levels)
    with inductor_config.patch(comprehensive_padding=False):
        compiled_case(args.out, "computed_fp16_no_padding", computed, (*raw, boxes, levels), levels)

    captured = capture_launches()
    for index in (1, 0, 2):  # fp32 aligned sampling 2; fp32 aligned adaptive; fp32 not aligned
        case = cases()[index]
        features, boxes, levels, *rest = on_cuda(case)
        op(features, boxes, levels, *rest)
        if index == 1:
            mutations(captured)

        def pool(f0, f1, f2, f3, boxes, levels, rest=tuple(rest)):
            return op([f0, f1, f2, f3], boxes, levels, *rest) * 1.0

        compiled_case(args.out, f"four_levels_{index}", pool, (*features, boxes, levels), levels)

    fine, boxes = (t.cuda() for t in two_level_inputs())
    module = TwoLevels().eval()
    with torch.no_grad():
        levels = module(fine, boxes)[1]

    def two(fine, boxes):
        return module(fine, boxes)[0]

    compiled_case(args.out, "two_levels", two, (fine, boxes), levels)
    # the same with Inductor's comprehensive padding off
    with inductor_config.patch(comprehensive_padding=False):
        compiled_case(args.out, "two_levels_no_padding", two, (fine, boxes), levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
