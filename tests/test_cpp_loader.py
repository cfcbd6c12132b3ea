"""The C++ loader (cpp/load_package.cpp) on the CPU, for real: compiled against the libtorch in
the installed torch wheel, it loads a small package in the d2bench contract, reads its metadata,
runs the sample photo and writes the same detections as the package loaded in Python
(scripts/cpp_loader.py compares them and writes the CSV).

CMake's Torch package asks a CUDA-built wheel (PyPI's default) for the CUDA toolkit, which this
machine lacks; so the test compiles the same source with g++ directly, without its CUDA-graph
part (D2BENCH_CUDA unset). On a GPU machine cpp/CMakeLists.txt builds the whole program. The
small package selects with a top-k instead of NMS: a CPU package calls NMS's CPU kernel, a
Python op, which a process without Python cannot have (CUDA packages hold their NMS kernels).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from runner.backends.aot_package import build
from runner.backends.static_graph.outputs import Outputs
from runner.backends.static_graph.slots import Slots, compact
from tests.helpers import REPO, run_python

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here"),
]


class TopK(nn.Module):
    """Images -> slots.Slots: a strided conv scores a grid, the best 12 cells above 0.545 become
    boxes of three classes (compacted, valid first, as the rewrite's detections are)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=8, padding=1)

    def forward(self, *images):
        features = self.conv(torch.stack(images) / 255)
        width = features.shape[-1]
        scores = features[:, 0].flatten(1).sigmoid()
        top, index = scores.topk(12, dim=1)
        x, y = (index % width).float() * 8, (index // width).float() * 8
        boxes = torch.stack([x, y, x + 16, y + 16], -1)
        valid = top > 0.545
        exact = torch.ones(valid.shape[0], dtype=torch.bool, device=valid.device)
        return compact(Slots(boxes, top, index % 3, valid, exact))


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """cpp/load_package.cpp compiled and linked against the installed wheel's libtorch."""
    out = tmp_path_factory.mktemp("cpp") / "load_package"
    torch_dir = Path(torch.__file__).parent
    command = [
        shutil.which("g++") or "g++",
        "-std=c++20",
        "-O1",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        str(REPO / "cpp" / "load_package.cpp"),
        "-o",
        str(out),
        f"-L{torch_dir / 'lib'}",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
        "-Wl,--no-as-needed",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-ldl",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_cpp_loader_gives_pythons_detections(tmp_path, binary):
    outputs = Outputs(TopK().eval(), None).eval()
    spec = importlib.util.spec_from_file_location("cpp_loader", REPO / "scripts" / "cpp_loader.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    images = tuple(script.package_images({"d2bench.inputs": "2 x [3, 64, 96] float32"}))
    package = build.build(outputs, images, {"model": "topk"}, path=tmp_path / "topk.pt2")

    script = str(REPO / "scripts" / "cpp_loader.py")
    csv_path = str(tmp_path / "cpp.csv")
    arguments = ("--binary", str(binary), "--warmup", "2", "--iters", "5", "--csv", csv_path)
    done = run_python(script, *arguments, str(package.path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["loader"]: row for row in csv.DictReader((tmp_path / "cpp.csv").open())}
    assert set(rows) == {"cpp", "python"}
    cpp = rows["cpp"]
    with torch.no_grad():
        counts = outputs(*images)[3].tolist()
    assert cpp["counts"] == ",".join(map(str, counts)) and 0 < min(counts) < 12
    assert cpp["same_detections"] == "True" and float(cpp["box_max_diff"]) == 0.0
    assert float(cpp["score_max_diff"]) < 1e-6 and float(cpp["plain_ms_median"]) > 0
    assert cpp["graph_ms_median"] == "" and cpp["inputs"] == "2 x [3, 64, 96] float32"


def test_the_cpp_loader_refuses_a_file_of_the_wrong_size(tmp_path, binary):
    outputs = Outputs(TopK().eval(), None).eval()
    package = build.build(outputs, (torch.rand(3, 32, 32) * 255,), {}, path=tmp_path / "t.pt2")
    (tmp_path / "short.bin").write_bytes(b"\0" * 16)
    unpacked = tmp_path / "tmp"  # where the loader unpacks the package (TMPDIR)
    unpacked.mkdir()
    done = subprocess.run(
        [str(binary), str(package.path), str(tmp_path / "short.bin")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(unpacked)},
    )
    assert done.returncode == 2
    assert "16 bytes, need 12288 (1 x [3, 32, 32] float32)" in done.stderr
    assert list(unpacked.iterdir()) == [], "the refusal left the unpacked package behind"


class Pooled(TopK):
    """TopK whose scores come from torchvision's roi_align over its boxes: a package that calls
    `torchvision::roi_align` by name, as a detector's with static_graph's default pooling does."""

    def forward(self, *images):
        slots = super().forward(*images)
        features = self.conv(torch.stack(images) / 255)
        pooled = torchvision.ops.roi_align(features, list(slots.boxes.unbind(0)), (2, 2), 1 / 8)
        scores = pooled.mean(dim=(1, 2, 3)).view_as(slots.scores).sigmoid()
        return Slots(slots.boxes, scores, slots.classes, slots.valid, slots.exact)


def test_the_cpp_loader_asks_for_torchvision_where_the_package_calls_its_ops(tmp_path, binary):
    """The package says which ops outside torch it calls (d2bench.calls); one that calls
    torchvision's is refused up front without --torchvision, naming the op, rather than failing
    inside the C++ program."""
    outputs = Outputs(Pooled().eval(), None).eval()
    images = (torch.rand(3, 32, 32) * 255,)
    package = build.build(outputs, images, {}, path=tmp_path / "pooled.pt2")
    loaded, _, _ = build.load(package.path, torch.device("cpu"))
    assert loaded.get_metadata()["d2bench.calls"] == "torchvision::roi_align"
    script = str(REPO / "scripts" / "cpp_loader.py")
    arguments = ("--binary", str(binary), "--csv", str(tmp_path / "cpp.csv"), str(package.path))
    done = run_python(script, *arguments, timeout=600)
    assert done.returncode != 0 and not (tmp_path / "cpp.csv").exists()
    assert "it calls torchvision::roi_align" in done.stderr and "--torchvision" in done.stderr
