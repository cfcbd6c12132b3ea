"""runner.ops: d2bench's custom ops as torch.library ops that export.

CPU, for real: the op's CPU kernel against torchvision's NMS, its fake kernel on the meta device
and under torch.library.opcheck, the op kept whole by torch.export, and a small module that uses
it (with torchvision's roi_align beside it) exported, compiled by AOTInductor into a package and
loaded in a fresh process in which detectron2 and d2bench's backends cannot be imported, giving
the in-process answers. The CUDA kernel (Triton) is checked against torchvision in
test_static_nms.py (its interpreter test on the CPU, its gpu tests on a GPU).
"""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

import runner.ops  # noqa: F401 - registers torch.ops.d2bench
from runner.backends.static_graph.nms import batched_nms_topk
from tests.helpers import run_python
from tests.test_static_nms import random_case

REPO = Path(__file__).resolve().parents[1]

# Run first in a fresh interpreter: makes `import detectron2` and `import runner.backends...`
# fail, as on a machine that has neither, whatever this one has.
BLOCK_MODEL_CODE = textwrap.dedent(
    """
    import builtins, sys
    _real_import = builtins.__import__
    def _blocked(name, *args, **kwargs):
        if name.split(".")[0] == "detectron2" or name.startswith("runner.backends"):
            raise ImportError(f"{name} is blocked in this process")
        return _real_import(name, *args, **kwargs)
    builtins.__import__ = _blocked
    """
)


def run_blocked(
    code: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where detectron2 and runner.backends cannot be imported
    (BLOCK_MODEL_CODE), set up as a process that loads packages is (build.LOADER_ENVIRONMENT),
    plus `env`. Its TMPDIR is a folder of its own, removed afterwards: with the import hook in
    place the interpreter's teardown does not free a loaded package, whose unpacked files
    (hundreds of MB for a detector) would stay in /tmp."""
    from runner.backends.aot_package import build

    with tempfile.TemporaryDirectory(prefix="d2bench-test-") as folder:
        env = {**build.LOADER_ENVIRONMENT, "TMPDIR": folder, **(env or {})}
        return run_python("-c", BLOCK_MODEL_CODE + code, env=env, timeout=timeout)


def sorted_case(seed: int, n: int = 200, batch: int = 2):
    """Boxes in score order and a valid mask: the op's inputs."""
    boxes, scores, _, valid = random_case(seed, n, 1, lead=(batch,))
    order = torch.sort(scores.masked_fill(~valid, -1.0), dim=-1, descending=True, stable=True)[1]
    return boxes.float().gather(1, order[..., None].expand(-1, -1, 4)), valid.gather(1, order)


def torchvision_first_k(boxes, valid, threshold, k):
    """Per row: positions of torchvision's kept boxes, in score order, the first k."""
    rows = []
    for b, v in zip(boxes, valid, strict=True):
        where = v.nonzero()[:, 0]
        scores = torch.arange(len(b), 0, -1, dtype=torch.float32)[v]  # already sorted
        rows.append(where[torchvision.ops.nms(b[v], scores, threshold)][:k].tolist())
    return rows


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 25, 400])
def test_cpu_kernel_keeps_what_torchvision_keeps(seed, k):
    boxes, valid = sorted_case(seed)
    position, count = torch.ops.d2bench.greedy_nms(boxes, valid, 0.5, k)
    assert position.shape == (2, k) and count.shape == (2,)
    assert position.dtype == count.dtype == torch.int64
    for row, want in enumerate(torchvision_first_k(boxes, valid, 0.5, k)):
        n = int(count[row])
        assert n == len(want) and position[row, :n].tolist() == want
        assert (position[row, n:] == 0).all(), "slots past the count hold 0"


def test_fake_kernel_gives_fixed_shapes_without_data():
    boxes, valid = sorted_case(0)
    position, count = torch.ops.d2bench.greedy_nms(boxes.to("meta"), valid.to("meta"), 0.5, 7)
    assert position.device.type == "meta" and position.shape == (2, 7) and count.shape == (2,)


def test_opcheck_schema_fake_and_dispatch():
    """torch.library.opcheck: the schema matches what the kernels do (no mutation, no aliasing),
    the fake kernel agrees with the real one, and the op survives AOTDispatch."""
    boxes, valid = sorted_case(1, n=70)
    for op in (torch.ops.d2bench.greedy_nms.default, torch.ops.d2bench.greedy_nms_cpu.default):
        torch.library.opcheck(op, (boxes, valid, 0.5, 10))


def test_bad_shapes_are_refused_with_the_shapes_named():
    boxes, valid = sorted_case(0)
    with pytest.raises(ValueError, match=r"must be \[B, C, 4\]"):
        torch.ops.d2bench.greedy_nms(boxes[..., :3], valid, 0.5, 3)
    with pytest.raises(ValueError, match="k=-1"):
        torch.ops.d2bench.greedy_nms(boxes, valid, 0.5, -1)


class Detect(torch.nn.Module):
    """A small detector-like module: a conv scores every pixel, a box per pixel, NMS through
    the op (batched_nms_topk: sort, offsets, the op), then torchvision's roi_align on the kept
    boxes. Fixed output shapes whatever the image holds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image):
        features = self.conv(image[None])
        height, width = image.shape[-2:]
        scores = features[:, 0].flatten(1).sigmoid()
        size = 3 + 6 * features[:, 1].flatten(1).sigmoid()[0]
        grid = dict(dtype=torch.float32, device=features.device)
        ys = torch.arange(height, **grid).repeat_interleave(width)
        xs = torch.arange(width, **grid).repeat(height)
        boxes = torch.stack([xs - size, ys - size, xs + size, ys + size], -1)[None]
        classes = (features[:, 2].flatten(1) > 0).long()
        index, kept, exact = batched_nms_topk(
            boxes, scores, classes, scores > 0.3, 0.5, 12, max_candidates=96
        )
        chosen = boxes[0].gather(0, index[0][:, None].expand(-1, 4))
        pooled = torchvision.ops.roi_align(features, [chosen], 2)
        return index, kept, exact, chosen, pooled


def test_export_keeps_the_op_whole_and_answers_the_same():
    module, image = Detect().eval(), torch.rand(3, 20, 24)
    with torch.no_grad():
        want = module(image)
        program = torch.export.export(module, (image,), strict=False)
        got = program.module()(image)
    targets = [str(node.target) for node in program.graph.nodes]
    assert "d2bench.greedy_nms.default" in targets and "torchvision.roi_align.default" in targets
    syncing = ("aten.nonzero", "aten.item", "_local_scalar_dense")  # data-dependent, host syncs
    assert not [t for t in targets if any(name in t for name in syncing)], targets
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert want[1].any(), "the case keeps some boxes"


@pytest.mark.slow
def test_aot_package_loads_and_answers_without_detectron2_or_the_backends(tmp_path):
    """AOTInductor compiles the exported module into a .pt2 (about 30 s on 2 cores); a fresh
    process in which detectron2 and runner.backends cannot be imported loads it (after
    `import runner.ops`, whose CPU kernel a CPU package calls) and gives the same answers."""
    module, image = Detect().eval(), torch.rand(3, 20, 24)
    with torch.no_grad():
        want = module(image)
        program = torch.export.export(module, (image,), strict=False)
        path = torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp_path / "detect.pt2")
        )
    torch.save({"image": image, "want": want}, tmp_path / "io.pt")
    code = textwrap.dedent(
        f"""
        import torch, torchvision
        import runner.ops
        io = torch.load({str(tmp_path / "io.pt")!r})
        got = torch._inductor.aoti_load_package({path!r})(io["image"])
        assert len(got) == len(io["want"])
        for a, b in zip(io["want"], got):
            assert a.dtype == b.dtype and a.shape == b.shape, (a.shape, b.shape)
            # integer and bool fields exactly; roi_align's sums may differ in the last bits (how
            # Inductor's C++ vectorizes them depends on the CPU: ulps of values near 0)
            if a.is_floating_point():
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)
        assert "detectron2" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("runner.backends")]
        print("same answers")
        """
    )
    done = run_blocked(code, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("same answers")


def test_the_blocking_preamble_blocks():
    """The preamble the package tests rely on does make those imports fail."""
    done = run_blocked("import runner.backends.static_graph\n", timeout=120)
    assert done.returncode != 0 and "is blocked in this process" in done.stderr
