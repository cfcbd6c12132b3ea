"""runner.ops.roi_align (`d2bench::roi_align`) against torchvision's roi_align and detectron2's
ROIPooler.

The oracle is torchvision's fp32 kernel run box by box on the box's own level and image, the
level upcast to fp32, the result rounded to the features' dtype: what detectron2's ROIPooler
computes under autocast. The op must equal it bit for bit.

CPU, for real: the op's CPU kernel over fp32, fp16 and bf16 pyramids, aligned or not, sampling
ratio 0 (adaptive) and 2, with boxes on every level, at the right and bottom edges and the
corners, empty, inverted, sub-pixel, partly and wholly outside the image, levels out of range,
two images; the Triton kernel on the same cases through Triton's interpreter (a subprocess with
TRITON_INTERPRET=1), and compiled for an H100 (sm_90) with Triton's own ptxas to check that its
arithmetic is IEEE fp32 with no contraction and no flush to zero; the fake kernel, opcheck,
torch.export keeping the op whole, and a module that uses it compiled by AOTInductor and loaded
in a fresh process. detectron2-marked: its ROIPooler, and static_graph with `roi_align: op`
against static_graph with torchvision's ROIAlign on seed variants. `gpu`-marked: the CUDA kernel
against torchvision's CPU kernel (bit for bit) and CUDA kernel (within a stated bound), inside
a CUDA graph, and a CUDA package loaded where neither torchvision nor runner can be imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import runner.ops  # noqa: F401 - registers torch.ops.d2bench
from tests.helpers import capture_sync_free, f64_uses, ptx_for_sm90, run_python
from tests.test_ops import run_blocked

REPO = Path(__file__).resolve().parents[1]
TRITON_MISSING = "triton is not importable here (it ships with CUDA builds of torch)"
HEIGHT, WIDTH = 100, 152  # the image; levels at strides 4 .. 32 are 25x38, 13x19, 7x10, 4x5
STRIDES = (4, 8, 16, 32)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pyramid(seed, dtype, batch=2, channels=6, strides=STRIDES, channels_last=False):
    """Feature levels [batch, channels, ceil(H / s), ceil(W / s)] of random values in `dtype`,
    and their spatial scales."""
    g = torch.Generator().manual_seed(seed)
    levels = []
    for stride in strides:
        shape = (batch, channels, -(-HEIGHT // stride), -(-WIDTH // stride))
        level = (torch.randn(shape, generator=g) * 3).to(dtype)
        levels.append(level.to(memory_format=torch.channels_last) if channels_last else level)
    return levels, [1.0 / s for s in strides]


def special_boxes(width=float(WIDTH), height=float(HEIGHT)):
    """(box in image pixels, level) for the cases at the edges of ROIAlign's arithmetic."""
    w, h = width, height
    return [
        ([0, 0, w, h], 3),  # the whole image on the top level
        ([0, 0, w, h], 0),  # ... and on the finest: the largest adaptive grid (6 x 4 per bin)
        ([w - 3, h - 5, w, h], 0),  # the bottom-right corner
        ([w - 3, h - 5, w, h], 3),
        ([0, 0, 4, 4], 0),  # top-left
        ([w - 4, 0, w, 4], 1),  # top-right
        ([0, h - 4, 4, h], 2),  # bottom-left
        ([w - 30, 10, w, 60], 1),  # touching the right edge
        ([10, h - 20, 70, h], 2),  # touching the bottom edge
        ([10, 10, 10, 10], 0),  # empty
        ([30, 20, 10, 5], 1),  # inverted (x2 < x1, y2 < y1)
        ([5, 5, 5.3, 5.2], 0),  # sub-pixel
        ([w, h, w, h], 3),  # a point on the far corner
        ([-15, -8, 20, 30], 1),  # partly outside, top-left
        ([w - 10, h - 10, w + 25, h + 30], 2),  # partly outside, bottom-right
        ([w + 50, h + 50, w + 80, h + 90], 0),  # wholly outside
        ([-90, -90, -50, -40], 3),
        ([20, 20, 60, 50], -1),  # levels out of range are clamped
        ([20, 20, 60, 50], 7),
    ]


def boxes_case(seed, batch=2, random_per_image=12, levels=len(STRIDES), pooled=7):
    """boxes [batch, P, 4] fp32 and levels [batch, P] int64: the special boxes in every image,
    then random boxes sized to their level (1 to 3 samples per bin side), some partly outside."""
    g = torch.Generator().manual_seed(seed)
    special = special_boxes()
    boxes = torch.empty(batch, len(special) + random_per_image, 4)
    level = torch.empty(batch, len(special) + random_per_image, dtype=torch.int64)
    for image in range(batch):
        boxes[image, : len(special)] = torch.tensor([b for b, _ in special])
        level[image, : len(special)] = torch.tensor([lv for _, lv in special])
        chosen = torch.randint(0, levels, (random_per_image,), generator=g)
        stride = (2.0 ** (chosen + 2)).float()  # image pixels per level pixel
        side = (torch.rand(random_per_image, 2, generator=g) * 2.5 * pooled + 0.3) * stride[:, None]
        centre = (torch.rand(random_per_image, 2, generator=g) * 1.2 - 0.1) * torch.tensor(
            [WIDTH, HEIGHT]
        )
        boxes[image, len(special) :] = torch.cat([centre - side / 2, centre + side / 2], dim=1)
        level[image, len(special) :] = chosen
    return boxes, level


def torchvision_per_box(features, boxes, levels, scales, size, sampling_ratio, aligned):
    """The oracle: torchvision's fp32 roi_align of each box alone, on its (clamped) level and its
    image, the level upcast to fp32; rounded to the features' dtype."""
    batch = features[0].shape[0]
    flat = boxes.reshape(-1, 4).to(torch.float32)
    chosen = levels.reshape(-1).clamp(0, len(features) - 1)
    per_image = flat.shape[0] // batch
    pooled = []
    for index, (box, level) in enumerate(zip(flat, chosen.tolist(), strict=True)):
        image = index // per_image
        level_map = features[level][image : image + 1].to(torch.float32)
        pooled.append(
            torchvision.ops.roi_align(
                level_map, [box[None]], size, scales[level], sampling_ratio, aligned
            )
        )
    if not pooled:
        channels = features[0].shape[1]
        return features[0].new_empty((0, channels, *size))
    return torch.cat(pooled).to(features[0].dtype)


def op(features, boxes, levels, scales, size, sampling_ratio, aligned):
    return torch.ops.d2bench.roi_align(
        features, boxes, levels, scales, size[0], size[1], sampling_ratio, aligned
    )


def cases():
    """(name, features, boxes, levels, scales, size, sampling_ratio, aligned) for every
    comparison: dtypes x aligned x sampling ratio, then channels last, a fifth level (two
    launches of the Triton kernel), the mask pooler's 14 x 14 over more channels than one
    program holds, a non-square output, [N * P, 4] boxes and no boxes at all."""
    found = []
    for d, (dtype_name, dtype) in enumerate(DTYPES.items()):
        for aligned in (True, False):
            for sampling in (0, 2):
                seed = 10 * d + 2 * aligned + sampling
                features, scales = pyramid(seed, dtype)
                boxes, levels = boxes_case(seed)
                name = f"{dtype_name} aligned={aligned} sampling={sampling}"
                found.append((name, features, boxes, levels, scales, (7, 7), sampling, aligned))
    features, scales = pyramid(50, torch.float16, channels_last=True)
    boxes, levels = boxes_case(50)
    found.append(("fp16 channels_last", features, boxes, levels, scales, (7, 7), 0, True))
    features, scales = pyramid(51, torch.float32, strides=(*STRIDES, 64))
    boxes, levels = boxes_case(51, levels=5)
    found.append(("five levels", features, boxes, levels, scales, (7, 7), 0, True))
    features, scales = pyramid(52, torch.float16, channels=20)
    boxes, levels = boxes_case(52, random_per_image=4, pooled=14)
    found.append(("14x14, 20 channels", features, boxes, levels, scales, (14, 14), 0, True))
    features, scales = pyramid(53, torch.float32)
    boxes, levels = boxes_case(53)
    found.append(("5x3 output", features, boxes, levels, scales, (5, 3), 2, False))
    found.append(
        (
            "[N*P, 4] boxes",
            features,
            boxes.reshape(-1, 4),
            levels.reshape(-1),
            scales,
            (7, 7),
            0,
            True,
        )
    )
    found.append(("no boxes", features, boxes[:, :0], levels[:, :0], scales, (7, 7), 0, True))
    return found


# --- the CPU kernel -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_cpu_kernel_equals_torchvision_box_by_box(case):
    _, features, boxes, levels, scales, size, sampling, aligned = case
    got = op(features, boxes, levels, scales, size, sampling, aligned)
    want = torchvision_per_box(features, boxes, levels, scales, size, sampling, aligned)
    assert got.dtype == features[0].dtype and got.shape == want.shape
    assert torch.equal(got, want), float((got.float() - want.float()).abs().max())


def test_the_cases_cover_every_level_and_every_edge():
    """The case is what the docstring says: boxes on every level of each image, boxes with
    samples past the right and bottom edge of their level and outside the image."""
    boxes, levels = boxes_case(0)
    for image in range(2):
        assert set(levels[image].clamp(0, 3).tolist()) == {0, 1, 2, 3}
    assert (boxes[..., 2] >= WIDTH).any() and (boxes[..., 3] >= HEIGHT).any()
    assert (boxes[..., :2] < 0).any()
    assert ((boxes[..., 2] <= boxes[..., 0]) & (boxes[..., 3] <= boxes[..., 1])).any()


def test_non_finite_boxes_pool_zeros():
    features, scales = pyramid(3, torch.float32)
    boxes = torch.tensor([[[float("nan"), 1, 5, 5], [0, 0, float("inf"), 10], [2, 2, 30, 30]]])
    boxes = boxes.expand(2, 3, 4)
    levels = torch.zeros(2, 3, dtype=torch.int64)
    got = op(features, boxes, levels, scales, (7, 7), 0, True)
    assert (got.view(2, 3, -1)[:, :2] == 0).all()
    want = torchvision_per_box(features, boxes[:, 2:], levels[:, 2:], scales, (7, 7), 0, True)
    assert torch.equal(got.view(2, 3, 6, 7, 7)[:, 2], want.view(2, 6, 7, 7))


def test_fake_kernel_gives_the_shape_without_data():
    features, scales = pyramid(0, torch.float16)
    boxes, levels = boxes_case(0)
    meta = [f.to("meta") for f in features]
    got = op(meta, boxes.to("meta"), levels.to("meta"), scales, (14, 14), 0, True)
    assert got.device.type == "meta" and got.dtype == torch.float16
    assert got.shape == (boxes.shape[0] * boxes.shape[1], 6, 14, 14)


def test_opcheck_schema_fake_and_dispatch():
    """torch.library.opcheck: the schema matches what the kernels do (no mutation, no aliasing),
    the fake kernel agrees with the real one, and the op survives AOTDispatch."""
    features, scales = pyramid(1, torch.float16, channels=3)
    boxes, levels = boxes_case(1, random_per_image=3)
    args = (features, boxes, levels, scales, 7, 7, 0, True)
    for which in (torch.ops.d2bench.roi_align.default, torch.ops.d2bench.roi_align_cpu.default):
        torch.library.opcheck(which, args)


def test_bad_arguments_are_refused_with_the_argument_named():
    features, scales = pyramid(0, torch.float32)
    boxes, levels = boxes_case(0)
    bad = [
        (([], boxes, levels, [], 7, 7), "features is empty"),
        ((features, boxes[..., :3], levels, scales, 7, 7), r"must be \[N, P, 4\]"),
        ((features, boxes[:1], levels[:1], scales, 7, 7), r"must be \[N, P, 4\]"),
        ((features, boxes, levels.float(), scales, 7, 7), "levels"),
        ((features, boxes, levels, scales[:2], 7, 7), "2 spatial_scales for 4"),
        ((features, boxes, levels, scales, 0, 7), "output size 0 x 7"),
        (([features[0], features[1].half()], boxes, levels, scales[:2], 7, 7), "features.1."),
        (([features[0], features[1][:1]], boxes, levels, scales[:2], 7, 7), "features.1."),
        (([f.double() for f in features], boxes, levels, scales, 7, 7), "supported"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            torch.ops.d2bench.roi_align(*args, 0, True)


# --- the Triton kernel on the CPU: the interpreter, and compiled for sm_90 ----------------------


def triton_failures() -> list[str]:
    """Run in a TRITON_INTERPRET=1 process: the Triton kernel on every case against the oracle
    and against the CPU kernel; returns what disagreed."""
    from runner.ops.roi_align_triton import roi_align_triton

    failures = []
    for name, features, boxes, levels, scales, size, sampling, aligned in cases():
        got = roi_align_triton(features, boxes, levels, scales, *size, sampling, aligned)
        want = torchvision_per_box(features, boxes, levels, scales, size, sampling, aligned)
        cpu = op(features, boxes, levels, scales, size, sampling, aligned)
        if got.dtype != want.dtype or got.shape != want.shape:
            failures.append(f"{name}: {got.dtype} {tuple(got.shape)}, want {tuple(want.shape)}")
        elif not torch.equal(got, want):
            largest = float((got.float() - want.float()).abs().max())
            failures.append(f"{name}: differs from torchvision by up to {largest}")
        elif not torch.equal(got, cpu):
            failures.append(f"{name}: differs from the CPU kernel")
    return failures


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
def test_triton_kernel_in_the_interpreter_equals_torchvision_bit_for_bit():
    code = "from tests.test_roi_align import triton_failures; print(triton_failures())"
    done = run_python("-W", "ignore", "-c", code, env={"TRITON_INTERPRET": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def compiled_for_sm90(
    dtype: str, aligned: bool, ones: bool = False, floats: str = "fp32", nhwc: bool = False
) -> dict:
    """The CUDA kernel compiled by Triton for an H100 (sm_90) without a GPU (Triton's own
    ptxas): its PTX and cubin, as Inductor would compile it (ROUNDED on). `ones`: with the
    integer arguments a launch may pass as 1 (column and channel strides, boxes per image,
    channels, sampling ratio) made constants, as Triton's launcher specializes them. `floats`:
    the type the launcher gives the Python-float arguments (the scales): fp32 from eager Triton,
    fp64 from Inductor (torch/_inductor/codegen/triton_utils.py, signature_of). `nhwc`: as a
    launch on channels-last levels specializes it: every channel stride 1 (a constant), the
    pointers, the other strides and C divisible by 16."""
    from runner.ops.roi_align_triton import _roi_align_kernel

    names = _roi_align_kernel.arg_names
    constexprs = dict(PH=7, PW=7, ALIGNED=aligned, LEVELS=4, BLOCK_C=32, BINS=64, ROUNDED=True)
    if ones:
        specialized = [n for n in names if re.fullmatch(r"s[wc]\d", n)]
        constexprs.update({n: 1 for n in (*specialized, "P", "C", "sampling_ratio")})
    divisible = ()
    if nhwc:
        constexprs.update({n: 1 for n in names if re.fullmatch(r"sc\d", n)})
        divisible = [
            n for n in names if re.fullmatch(r"out_ptr|boxes_ptr|levels_ptr|f\d|s[nhw]\d|C", n)
        ]
    signature = {}
    for name in names:
        if name == "out_ptr" or re.fullmatch(r"f\d", name):
            signature[name] = f"*{dtype}"
        elif name == "boxes_ptr":
            signature[name] = "*fp32"
        elif name == "levels_ptr":
            signature[name] = "*i64"
        elif name.startswith("scale"):
            signature[name] = floats
        else:
            signature[name] = "i32"
    return ptx_for_sm90(_roi_align_kernel, signature, constexprs, divisible)


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
@pytest.mark.parametrize(
    "dtype, aligned, ones",
    [("fp16", True, False), ("fp32", False, False), ("bf16", True, False), ("fp16", False, True)],
)
def test_cuda_kernel_compiles_for_sm90_with_ieee_fp32_arithmetic(dtype, aligned, ones):
    """The path the interpreter cannot run (ROUNDED: inline PTX) compiles for an H100, and its
    fp32 arithmetic is what makes it equal torchvision's CPU kernel: every multiply, add and
    subtract explicitly rounded (.rn: never contracted into an FMA, whatever Inductor passes as
    enable_fp_fusion), IEEE divisions (div.rn), nothing flushing subnormals to zero (libdevice's
    _rn functions and tl.ceil would: Triton compiles them with ftz on), and the output rounded
    to nearest even (cvt.rn) where it is half or bfloat16."""
    asm = compiled_for_sm90(dtype, aligned, ones)
    ptx = asm["ptx"]
    float_ops = re.findall(r"\b(fma|mul|add|sub|div)((?:\.[a-z0-9]+)*)\.f32\b", ptx)
    assert float_ops, "no fp32 arithmetic found in the PTX"
    assert not [op for op in float_ops if op[0] == "fma"], "an fp32 fma in the PTX"
    assert all(op[1] == ".rn" for op in float_ops if op[0] in ("mul", "div")), float_ops
    assert {op[0] for op in float_ops if op[1] == ".rn"} >= {"mul", "add", "sub", "div"}
    assert [line.strip() for line in ptx.splitlines() if ".ftz" in line] == []
    if dtype != "fp32":
        half = dtype.replace("fp", "f")
        assert re.search(rf"cvt\.rn\.{half}(x2)?\.f32", ptx), "no rounding to nearest"
        assert not re.search(rf"cvt\.(rz|rm|rp)\.{half}", ptx), "a directed rounding"
    assert asm["cubin"], "ptxas made no cubin"


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
@pytest.mark.parametrize("floats", ["fp32", "fp64"])
def test_cuda_kernel_rounds_the_scales_to_fp32_however_the_launcher_types_them(floats):
    """Eager Triton passes a Python float as fp32, Inductor (torch.compile, AOTInductor) as fp64.
    An fp64 scale that reached the fp32 inline PTX was its low 32 bits: 0 for every FPN scale,
    so every box pooled zeros when compiled (session 11's Mask R-CNN FPN package found no
    detections). The only things the kernel may do with an fp64 value are select it and round
    it to fp32."""
    ptx = compiled_for_sm90("fp16", True, floats=floats)["ptx"]
    uses = f64_uses(ptx)
    assert [use for use in uses if not use.startswith(("selp.f64", "cvt.rn.f32.f64"))] == []
    assert bool(uses) == (floats == "fp64")


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_cuda_kernel_reads_channels_last_levels_with_16_byte_loads(dtype):
    """static_graph's convolutions run channels last (channels_last: true), so its levels have
    channel stride 1. Compiled for an H100 with that stride a constant, the kernel's lanes run
    along the channels and every load of a level is one 16-byte vector: a warp reads whole
    sectors rather than one element per lane, as with NCHW levels (scalar loads)."""

    def level_loads(**nhwc) -> Counter:
        ptx = compiled_for_sm90(dtype, True, **nhwc)["ptx"]
        loads = Counter(re.findall(r"ld\.global((?:\.[a-z0-9]+)*)", ptx))
        return loads - Counter({".b32": 4, ".b64": 1})  # a box's 4 coordinates, its level

    vectors = level_loads(nhwc=True)
    assert set(vectors) == {".v4.b32"} and vectors[".v4.b32"] >= 4, vectors  # >= 1 per corner
    scalars = level_loads()
    assert set(scalars) == {".b32" if dtype == "fp32" else ".b16"}, "NCHW: element by element"


INDUCTOR_ACCESSES_CODE = textwrap.dedent(
    """
    import json, torch, triton
    from triton.backends.compiler import GPUTarget
    from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors
    from runner.ops import roi_align_triton
    from tests.test_roi_align import boxes_case, pyramid

    class H100:  # no GPU here: the target Inductor would read from the CUDA driver
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(H100())
    features, scales = pyramid(0, torch.float16)
    boxes, levels = boxes_case(0)
    out = torch.empty(boxes.shape[0] * boxes.shape[1], 6, 7, 7, dtype=torch.float16)
    values = [out, boxes.reshape(-1, 4), levels.reshape(-1), *features]
    for dims in ((2,), (3,)):
        values += [f.shape[d] for f in features for d in dims]
    values += [f.stride(d) for d in range(4) for f in features]
    values += [*scales, 6, boxes.shape[1], 0, 3, 0]
    kernel = roi_align_triton._roi_align_kernel
    kwargs = dict(zip(kernel.arg_names, values))
    kwargs.update(PH=7, PW=7, ALIGNED=True, LEVELS=4, BLOCK_C=8, BINS=64, ROUNDED=True)
    accesses = identify_accessed_tensors(kernel, kwargs, {}).read_writes
    names = [sorted(d.name for d in found) for found in (accesses.writes, accesses.reads)]
    print(json.dumps(names))
    """
)


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
def test_inductor_sees_the_kernel_write_only_its_output():
    """Inductor decides from the kernel's TTIR which tensors it writes, and copies whatever it
    cannot prove untouched: the pyramid must read as read-only (no copy of the features in a
    compiled graph or package), the output as the only write. Run as for an H100 target."""
    done = run_python("-W", "ignore", "-c", INDUCTOR_ACCESSES_CODE)
    assert done.returncode == 0, done.stderr[-3000:]
    writes, reads = json.loads(done.stdout.strip().splitlines()[-1])
    assert writes == ["out_ptr"]
    assert reads == ["boxes_ptr", "f0", "f1", "f2", "f3", "levels_ptr"]


# --- export, AOTInductor, a fresh process -------------------------------------------------------


class TwoLevels(torch.nn.Module):
    """A small module around the op: the coarse level is every other pixel of the fine one (a
    strided view: the op reads it through its strides), each box goes to a level by its size,
    the op pools them. Exact arithmetic around the op, so that a compiled module must give the
    same bits. Fixed output shapes."""

    def forward(self, fine, boxes):
        coarse = fine[..., ::2, ::2] * 0.5
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        levels = (area > 64.0).long()
        scales = [1.0, 0.5]
        pooled = torch.ops.d2bench.roi_align([fine, coarse], boxes, levels, scales, 3, 3, 0, True)
        return pooled, levels


def two_level_inputs():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(2, 9, 2, generator=g) * torch.tensor([24.0, 20.0])
    size = torch.rand(2, 9, 2, generator=g) * 16
    return torch.randn(2, 4, 20, 24, generator=g), torch.cat([corner, corner + size], dim=-1)


def test_export_keeps_the_op_whole_and_answers_the_same():
    module, (fine, boxes) = TwoLevels().eval(), two_level_inputs()
    with torch.no_grad():
        want = module(fine, boxes)
        program = torch.export.export(module, (fine, boxes), strict=False)
        got = program.module()(fine, boxes)
    targets = [str(node.target) for node in program.graph.nodes]
    assert "d2bench.roi_align.default" in targets, targets
    assert not [t for t in targets if "torchvision" in t], targets
    syncing = ("aten.nonzero", "aten.item", "_local_scalar_dense")
    assert not [t for t in targets if any(name in t for name in syncing)], targets
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert set(want[1].flatten().tolist()) == {0, 1}, "both levels pool some box"


@pytest.mark.slow
def test_aot_package_loads_and_answers_without_detectron2_or_the_backends(tmp_path):
    """AOTInductor compiles the exported module into a .pt2; a fresh process in which
    detectron2 and runner.backends cannot be imported loads it (after `import runner.ops`,
    whose CPU kernel a CPU package calls by name) and gives the same answers, bit for bit."""
    module, (fine, boxes) = TwoLevels().eval(), two_level_inputs()
    with torch.no_grad():
        want = module(fine, boxes)
        program = torch.export.export(module, (fine, boxes), strict=False)
        path = torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp_path / "pool.pt2")
        )
    torch.save({"fine": fine, "boxes": boxes, "want": want}, tmp_path / "io.pt")
    code = textwrap.dedent(
        f"""
        import torch
        import runner.ops
        io = torch.load({str(tmp_path / "io.pt")!r})
        got = torch._inductor.aoti_load_package({path!r})(io["fine"], io["boxes"])
        assert len(got) == len(io["want"])
        for a, b in zip(io["want"], got):
            assert a.dtype == b.dtype and a.shape == b.shape, (a.shape, b.shape)
            assert torch.equal(a, b), float((a.float() - b.float()).abs().max())
        assert "detectron2" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("runner.backends")]
        print("same answers")
        """
    )
    done = run_blocked(code, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("same answers")


def test_a_packages_cache_key_covers_every_kernel_source_in_runner_ops():
    """aot_package reuses a cached package by key; the key hashes runner/ops' sources, so a
    changed kernel (this op's included) builds a new package instead of loading a stale one."""
    from runner.backends.aot_package import build

    sources = {p.name for p in (REPO / "runner" / "ops").glob("*.py")} - {"__init__.py"}
    assert set(build.OPS_SOURCES) == sources


# --- detectron2: its ROIPooler, and static_graph with `roi_align: op` ---------------------------


class Recorder(TorchDispatchMode):
    """The names of the ops dispatched while it is on (a custom op counts once, as a whole)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.detectron2
@pytest.mark.parametrize("sampling", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_pool_with_op_equals_detectron2s_pooler_bit_for_bit(dtype, aligned, sampling):
    """static_graph's pooling through the op against detectron2's ROIPooler (which gathers
    each level's boxes with nonzero and pools them level by level), on fp32 features, and on
    fp16 and bf16 ones under autocast as a detectron2 model runs at those precisions (the
    pooler rounds the boxes to the features' dtype, torchvision's autocast wrapper pools in
    fp32): boxes of every level, on the image's right and bottom edge and corners, empty, two
    images, level sizes that are not powers of two. Equal, not close."""
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    from runner.backends.static_graph.pooling import box_levels, pool

    torch.manual_seed(0)
    height, width = 470, 630  # strides 4..32: 118x158, 59x79, 30x40, 15x20
    features = [
        torch.randn(2, 8, -(-height // s), -(-width // s)).to(DTYPES[dtype]) for s in STRIDES
    ]
    pooler_type = "ROIAlignV2" if aligned else "ROIAlign"
    pooler = ROIPooler((7, 7), tuple(1 / s for s in STRIDES), sampling, pooler_type)
    corners = torch.rand(2, 60, 2) * torch.tensor([width, height])
    sizes = torch.rand(2, 60, 2) ** 2 * torch.tensor([width, height])
    boxes = torch.cat([corners, corners + sizes], dim=2)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    for slot, (box, _) in enumerate(special_boxes(float(width), float(height))[:13]):
        boxes[slot % 2, 2 + slot] = torch.tensor(box, dtype=torch.float32)
    autocast = torch.autocast("cpu", dtype=DTYPES[dtype], enabled=dtype != "fp32")
    with autocast:
        expected = pooler(features, [Boxes(b) for b in boxes])
        recorder = Recorder()
        with recorder:
            got = pool(pooler, features, boxes, op=True)
    assert "d2bench.roi_align.default" in recorder.seen
    assert "torchvision.roi_align.default" not in recorder.seen, recorder.seen
    assert got.dtype == expected.dtype == DTYPES[dtype] and got.shape == expected.shape
    assert torch.equal(got, expected), float((got.float() - expected.float()).abs().max())
    levels_used = {int(v) for v in box_levels(pooler, boxes.reshape(-1, 4))}
    assert levels_used == {0, 1, 2, 3}, levels_used


def static_graph_both_ways(make_config, name: str, **options):
    """A seed variant, small, on the CPU at fp32: the eager module's detections, and static_graph's
    with torchvision's ROIAlign and with the op (same exported model, same input), each with the
    ops it dispatched."""
    from runner import backends
    from runner.run import measurement
    from tests.test_detectron2 import FEWER_PROPOSALS, SMALL, variant_overrides

    cfg = make_config(*variant_overrides(name), *SMALL, "backend=static_graph")
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    exported, images, _ = measurement.build(cfg, torch.device("cpu"))
    opt = images.images["opt"]
    answers = {}
    with torch.no_grad():
        answers["eager"] = (exported.decode(exported.module(*opt), cfg.batch), None, None)
        for roi_align in ("torchvision", "op"):
            chosen = {**cfg.backend.options, **options, "roi_align": roi_align}
            fn = backends.get("static_graph")(
                exported, images, cfg.precision, backends.validate_options("static_graph", chosen)
            )
            recorder = Recorder()
            with recorder:
                raw = fn(*opt)
            answers[roi_align] = (exported.decode(raw, cfg.batch), recorder.seen, fn.notes())
    return cfg, answers


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("name", ["MaskRCNNFPN_b2", "MaskRCNNC4", "CascadeRCNN"])
def test_static_graph_with_the_op_detects_what_it_detects_with_torchvision(make_config, name):
    """static_graph with `roi_align: op` against static_graph with torchvision's ROIAlign and
    against the eager model: the same detections (boxes, scores, classes, masks), where every
    pooler went through the op: FPN's box and mask poolers over two images, C4's one level
    (res5 for boxes and masks), the three cascade stages."""
    from runner.run import parity
    from tests.test_detectron2 import assert_same_detections

    cfg, answers = static_graph_both_ways(make_config, name)
    reference = answers["eager"][0]
    assert all(len(d) > 0 for d in reference), "no detections: the comparison would prove nothing"
    with_op, seen, notes = answers["op"]
    assert "fallback_calls=0/1" in notes, notes  # the rewrite answered itself
    assert "torchvision.roi_align.default" not in seen and "d2bench.roi_align.default" in seen
    assert "torchvision.roi_align.default" in answers["torchvision"][1]
    for other in (reference, answers["torchvision"][0]):
        figures = parity.compare(other, with_op, cfg.bench.match_iou)
        assert_same_detections(other, figures)
        for a, b in zip(other, with_op, strict=True):  # the same detections in the same order
            assert torch.equal(a.classes, b.classes)


def test_the_option_is_declared_with_its_values_for_both_backends():
    """`roi_align` is static_graph's option (torchvision | op), taken by aot_package as a
    rewrite option; conf/ defaults it to torchvision in both."""
    from runner import backends
    from tests.helpers import CONF

    for backend in ("static_graph", "aot_package"):
        assert backends.validate_options(backend, {"roi_align": "op"}) == {"roi_align": "op"}
        with pytest.raises(ValueError, match="options.roi_align='stacked'"):
            backends.validate_options(backend, {"roi_align": "stacked"})
        text = (CONF / "backend" / f"{backend}.yaml").read_text()
        assert re.search(r"^  roi_align: torchvision\b", text, re.MULTILINE), backend


def test_half_roi_align_with_the_op_is_refused_naming_both():
    """half_roi_align asks torchvision's kernel to pool in fp16; the op pools in fp32 sums:
    asking for both is refused with the options, before a run (static_graph's and the
    package's), naming both options."""
    from runner import backends

    for backend in ("static_graph", "aot_package"):
        chosen = {"roi_align": "op", "half_roi_align": True}
        with pytest.raises(ValueError, match=f"backend={backend}: .*half_roi_align=true.*op"):
            backends.validate_options(backend, chosen)
        backends.validate_options(backend, {"roi_align": "op"})  # each alone passes
        backends.validate_options(backend, {"half_roi_align": True})


# --- CUDA: the Triton kernel against torchvision's kernels, graphs, compile, packages -------------


def on_cuda(case):
    name, features, boxes, levels, scales, size, sampling, aligned = case
    return (
        [f.cuda() for f in features],  # keeps channels last
        boxes.cuda(),
        levels.cuda(),
        scales,
        size,
        sampling,
        aligned,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_gpu_kernel_equals_torchvisions_cpu_kernel_bit_for_bit(case):
    """The op on CUDA (the Triton kernel) against the oracle on the CPU: the claim of
    roi_align_triton.py (torchvision's arithmetic, explicitly rounded) on the real compiler."""
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    name, features, boxes, levels, scales, size, sampling, aligned = case
    got = op(*on_cuda(case)).cpu()
    want = torchvision_per_box(features, boxes, levels, scales, size, sampling, aligned)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), (name, float((got.float() - want.float()).abs().max()))


def fma_bound(features) -> float:
    """How far torchvision's CUDA kernel may sit from its CPU kernel (and so from the op) in
    fp32: nvcc contracts its sample position (start + ph * bin) and its bilinear sum into FMAs,
    moving a position by about an ulp of the level's extent E and a sum by a few ulps of the
    largest value A. A value moves by at most the slope (2A per pixel) times the position's
    change plus the sums': 2**-23 * A * (2 * 2E + 8), taken twice over."""
    extent = max(max(f.shape[-2:]) for f in features) + 1
    largest = max(float(f.float().abs().max()) for f in features)
    return 2.0**-22 * largest * (4 * extent + 8)


@pytest.mark.gpu
@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_gpu_kernel_against_torchvisions_cuda_kernel_within_its_fma_bound(case):
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    name, features, *_ = case
    cuda = on_cuda(case)
    got = op(*cuda).float()
    upcast = [f.float() for f in cuda[0]]
    want = torchvision_per_box(upcast, *cuda[1:])  # torchvision's CUDA kernel, fp32 out
    assert got.shape == want.shape
    # the op rounds half and bfloat16 outputs to nearest: half an ulp of the value on top
    # (and half of fp16's smallest subnormal)
    unit = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
    rounding = unit[features[0].dtype] * (want.abs() + fma_bound(features))
    tiny = 2.0**-25 if features[0].dtype == torch.float16 else 0.0
    allowed = fma_bound(features) + rounding + tiny
    difference = (got - want).abs()
    assert (difference <= allowed).all(), (name, float(difference.max()), fma_bound(features))


@pytest.mark.gpu
def test_gpu_op_is_sync_free_and_replays_in_a_cuda_graph_with_new_boxes():
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    features, scales = pyramid(7, torch.float16, channels_last=True)
    cuda = [f.cuda() for f in features]
    boxes, levels = boxes_case(7)
    static_boxes, static_levels = boxes.cuda(), levels.cuda()

    def call():
        return op(cuda, static_boxes, static_levels, scales, (7, 7), 0, True)

    graph, pooled = capture_sync_free(call)
    for seed in (8, 9):
        boxes, levels = boxes_case(seed)
        static_boxes.copy_(boxes)
        static_levels.copy_(levels)
        graph.replay()
        want = torchvision_per_box(features, boxes, levels, scales, (7, 7), 0, True)
        assert torch.equal(pooled.cpu(), want), seed


@pytest.mark.gpu
def test_gpu_torch_compile_compiles_the_kernel_into_its_graph_with_the_same_bits():
    """What static_graph compile=true does: Inductor traces the op into its graph and compiles
    the Triton kernel with its own launch options (fullgraph: no break around the op)."""
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    case = cases()[1]  # fp32, aligned, sampling 2
    cuda = on_cuda(case)
    features, rest = cuda[0], cuda[1:]

    def pool(f0, f1, f2, f3, boxes, levels):
        return op([f0, f1, f2, f3], boxes, levels, *rest[2:]) * 1.0

    torch._dynamo.reset()
    compiled = torch.compile(pool, fullgraph=True)
    got = compiled(*features, *rest[:2])
    assert torch.equal(got, op(*cuda))


BLOCK_ALL_CODE = textwrap.dedent(
    """
    import builtins, sys
    _real_import = builtins.__import__
    def _blocked(name, *args, **kwargs):
        if name.split(".")[0] in ("detectron2", "torchvision", "runner"):
            raise ImportError(f"{name} is blocked in this process")
        return _real_import(name, *args, **kwargs)
    builtins.__import__ = _blocked
    """
)


def run_without_torchvision(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where torchvision, detectron2 and runner cannot be
    imported, set up as a process that loads packages is (build.LOADER_ENVIRONMENT)."""
    from runner.backends.aot_package import build

    return run_python("-c", BLOCK_ALL_CODE + code, env=build.LOADER_ENVIRONMENT, timeout=timeout)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_package_pools_where_neither_torchvision_nor_runner_can_be_imported(tmp_path):
    """On CUDA AOTInductor compiles the op's Triton kernel into the package: a process that can
    import neither torchvision nor runner (as a C++ process has neither) loads it and pools
    the same bits."""
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    fine, boxes = (t.cuda() for t in two_level_inputs())
    module = TwoLevels().eval()
    with torch.no_grad():
        want = module(fine, boxes)
        program = torch.export.export(module, (fine, boxes), strict=False)
        path = torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp_path / "pool.pt2")
        )
    torch.save(
        {"fine": fine.cpu(), "boxes": boxes.cpu(), "want": [t.cpu() for t in want]},
        tmp_path / "io.pt",
    )
    code = textwrap.dedent(
        f"""
        import torch
        io = torch.load({str(tmp_path / "io.pt")!r})
        package = torch._inductor.aoti_load_package({path!r})
        got = package(io["fine"].cuda(), io["boxes"].cuda())
        for a, b in zip(io["want"], got):
            assert a.dtype == b.dtype and a.shape == b.shape, (a.shape, b.shape)
            assert torch.equal(a, b.cpu()), float((a.float() - b.cpu().float()).abs().max())
        assert not [m for m in sys.modules if m.split(".")[0] in ("torchvision", "runner")]
        print("same answers")
        """
    )
    done = run_without_torchvision(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("same answers")


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["MaskRCNNFPN", "MaskRCNNFPN_b2", "MaskRCNNC4", "CascadeRCNN"])
def test_gpu_static_graph_with_the_op_replays_and_detects_as_eager(make_config, name, precision):
    """static_graph `roi_align: op` on CUDA, replayed as a CUDA graph: the detections of the
    eager model at the same precision, and of static_graph with torchvision's ROIAlign."""
    from runner import backends
    from runner.run import measurement, parity
    from tests.test_detectron2 import variant_overrides

    cfg = make_config(*variant_overrides(name), "device=cuda", f"precision={precision}")
    exported, images, _ = measurement.build(cfg, torch.device("cuda", 0))
    opt = images.images["opt"]
    answers = {}
    with torch.no_grad():
        for roi_align in ("torchvision", "op"):
            chosen = {**cfg.backend.options, "roi_align": roi_align}
            fn = backends.get("static_graph")(
                exported, images, cfg.precision, backends.validate_options("static_graph", chosen)
            )
            first = exported.decode(fn(*opt), cfg.batch)  # captures
            answers[roi_align] = exported.decode(fn(*opt), cfg.batch)
            assert "graphs=1" in fn.notes() and "fallback_calls=0/2" in fn.notes(), fn.notes()
            replayed = parity.compare(first, answers[roi_align], cfg.bench.match_iou)
            assert replayed.match_f1 == 1.0
        from runner.precision import autocast

        with autocast(cfg.precision, opt[0].device):
            reference = exported.decode(exported.module(*opt), cfg.batch)
    for other in (reference, answers["torchvision"]):
        figures = parity.compare(other, answers["op"], cfg.bench.match_iou)
        if precision == "fp32":
            assert parity.verdict(figures, cfg.precision) == [], figures
        else:  # fp16 rounding can reorder ties at the top-k and NMS cut-offs
            assert figures.match_f1 > 0.95, figures


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
def test_gpu_detector_package_with_the_op_runs_without_torchvision(tmp_path):
    """`python -m runner.package` of Mask R-CNN FPN at fp16 with `roi_align: op`: the package
    calls no torchvision op, so a process that can import neither torchvision, detectron2 nor
    runner (as the C++ loader) loads it and gives the in-process rewrite's detections."""
    from runner.backends import static_graph, validate_options
    from runner.config import to_config
    from runner.run.measurement import build as build_run
    from tests.helpers import compose_config, run_module

    out = tmp_path / "fpn.pt2"
    fewer = "+model.arch_options.MODEL.RPN.POST_NMS_TOPK_TEST=100"
    args = ("model=mask_rcnn_fpn", "device=cuda", "precision=fp16", fewer)
    args = (*args, "backend.options.roi_align=op")
    done = run_module("runner.package", f"out={out}", *args, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()

    overrides = (*args, "backend=aot_package", "command=t", f"output_dir={tmp_path}")
    cfg = to_config(compose_config(*overrides))
    built = build_run(cfg, torch.device("cuda"))
    options = validate_options("aot_package", cfg.backend.options)
    assert options["roi_align"] == "op"
    outputs, _ = static_graph.rewrite(built.exported, cfg.precision, options)
    images = built.images.images["opt"]
    with torch.no_grad():
        expected = outputs(*images)
    torch.save(
        {"images": [i.cpu() for i in images], "expected": [t.cpu() for t in expected]},
        tmp_path / "io.pt",
    )
    code = textwrap.dedent(
        f"""
        import torch
        io = torch.load({str(tmp_path / "io.pt")!r})
        got = torch._inductor.aoti_load_package({str(out)!r})(*[i.cuda() for i in io["images"]])
        want = io["expected"]
        n = int(want[3][0])
        assert n > 0 and torch.equal(got[3].cpu(), want[3]) and torch.equal(got[2].cpu(), want[2])
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-4, atol=1e-4)
        assert not [m for m in sys.modules if m.split(".")[0] in ("torchvision", "runner")]
        print("same detections", n)
        """
    )
    done = run_without_torchvision(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same detections" in done.stdout
