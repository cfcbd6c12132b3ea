"""Packages (runner/backends/aot_package, `python -m runner.package`): made, cached, described,
and loaded where neither detectron2 nor d2bench's backends can be imported.

CPU, for real, in CI: the command's refusals (one line, exit 2, nothing written); a small
detector in the package contract (outputs.Outputs over static_graph's own selection and NMS)
built into a package, reused from the cache by key, and loaded in a blocked process by the very
snippet the command prints, with the in-process answers. detectron2-marked: the command on a
whole detector, and the package's detections in a blocked process equal to the in-process
rewrite's (on CUDA too where there is a GPU: `gpu`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from runner import scratch
from runner.backends.aot_package import build, link
from runner.backends.static_graph import slots as heads_slots
from runner.backends.static_graph.outputs import FIELDS, OPTIONAL, Outputs, slice_detections
from tests.helpers import REPO, clean_environment, have_cuda, run_module
from tests.test_exit_codes import assert_refused_in_one_line
from tests.test_ops import run_blocked

SMALL_D2 = ("device=cpu", "inputs.height=128", "inputs.width=160")
FEWER = "+model.arch_options.MODEL.RPN.POST_NMS_TOPK_TEST=100"


# --- the command's refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (("model=retinanet",), "out=FILE.pt2"),
        (("out=a.pt2", "out=b.pt2"), "out=FILE.pt2"),
        (("out=model.onnx",), "ends in .pt2"),
        (("out=/etc/hostname/model.pt2",), "cannot write there"),
        (("out=x.pt2", "model=tv_fasterrcnn_mobilenet", "device=cpu"), "not one"),
        (("out=x.pt2", "model=nope"), "model=nope"),
        (("out=x.pt2", "foo=1"), "foo"),
        (("out=x.pt2", "backend=eager"), "backend=aot_package"),
        (("out=x.pt2", "shapes=dynamic", "device=cpu"), "one input size"),
        (("out=x.pt2", "backend.options.reuse=maybe", "device=cpu"), "reuse"),
    ],
)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, args, expected):
    args = tuple(a.replace("out=x.pt2", f"out={tmp_path / 'x.pt2'}") for a in args)
    done = run_module("runner.package", *args, cwd=tmp_path, timeout=120)
    assert_refused_in_one_line(done, expected)
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_is_refused(tmp_path):
    done = run_module("runner.package", f"out={tmp_path}", cwd=tmp_path, timeout=120)
    assert_refused_in_one_line(done, "is a folder")


def test_agreement_matches_detections_as_sets_so_slots_that_trade_places_still_agree():
    """The package-vs-in-process check of the notes and `runner.package`: two near-tied
    detections in swapped slots (fp16 rounding in a compiled graph) give a large raw difference
    and F1 1.00; a detection moved away or a wrong class lowers F1."""
    from runner.backends.aot_package import agreement
    from runner.backends.static_graph.outputs import Fields

    boxes = torch.tensor([[[0.0, 0, 10, 10], [300, 300, 340, 330], [0, 0, 0, 0]]])
    scores = torch.tensor([[0.9000, 0.8999, 0.0]])
    classes = torch.tensor([[1, 2, 0]])
    counts, exact = torch.tensor([2]), torch.tensor([True])
    expected = (boxes, scores, classes, counts, exact)
    swapped = (boxes[:, [1, 0, 2]], scores[:, [1, 0, 2]], classes[:, [1, 0, 2]], counts, exact)
    said = agreement(expected, swapped, Fields())
    assert said.startswith("detections F1 1.00") and "largest raw difference 330" in said, said
    moved = boxes.clone()
    moved[0, 1] += 100.0
    assert agreement(expected, (moved, scores, classes, counts, exact), Fields()).startswith(
        "detections F1 0.50"
    )
    wrong = torch.tensor([[1, 3, 0]])
    assert "F1 0.50" in agreement(expected, (boxes, scores, wrong, counts, exact), Fields())
    none = (boxes, scores, classes, torch.tensor([0]), exact)
    assert agreement(none, none, Fields()).startswith("detections F1 1.00")


# --- the C++ runtime a package links ----------------------------------------------------------

REGEX_SOURCE = """
#include <regex>
extern "C" int device_index(const char* text) {
  std::cmatch match;
  return std::regex_match(text, match, std::regex("cuda:([0-9]+)")) ? std::stoi(match[1]) : -1;
}
"""


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++ (AOTInductor's compiler)")
@pytest.mark.parametrize(
    "static",
    [
        ("-static-libstdc++", "-static-libgcc"),  # the driver's flags
        ("-Wl,-Bstatic", "-l:libstdc++.a", "-Wl,-Bdynamic"),  # the archive, named
    ],
)
def test_the_package_compiler_links_the_shared_libstdcxx_where_asked_for_a_static_one(
    tmp_path, static
):
    """torch 2.11's Inductor linked wrapper.so with a static libstdc++ (link.py): the same
    request through link.COMPILER gives an object that needs libstdc++.so.6 and carries none of
    libstdc++'s code, and runtime() tells the two apart inside a package archive."""
    source = tmp_path / "regex.cpp"
    source.write_text(REGEX_SOURCE)
    for compiler, name in (("g++", "static.so"), (str(link.COMPILER), "shim.so")):
        command = [compiler, "-shared", "-fPIC", str(source), *static, "-o", str(tmp_path / name)]
        subprocess.run(command, check=True, timeout=120)
        with zipfile.ZipFile(tmp_path / f"{name}.pt2", "w") as archive:
            archive.write(tmp_path / name, f"data/aotinductor/model/{name}")
    assert link.runtime(tmp_path / "static.so.pt2") == "static"
    assert link.runtime(tmp_path / "shim.so.pt2") == "shared"


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++ (AOTInductor's compiler)")
def test_the_package_compiler_links_the_loaded_libstdcxx_where_the_toolchain_finds_only_the_archive(
    tmp_path,
):
    """The lent GPU image's g++ searches a library path with libstdc++.a and no libstdc++.so, so
    its own -lstdc++ links the archive (session 11). A folder holding only the archive, first on
    the library path, does the same here: the shim with -lstdc++ carries a static copy, and the
    shim with the libstdc++.so.6 this process has loaded (by path) carries none."""
    archive = subprocess.run(
        ["g++", "-print-file-name=libstdc++.a"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(archive).is_file():
        pytest.skip("this g++ has no libstdc++.a to stand in for the GPU image's toolchain")
    only_archive = tmp_path / "only-archive"
    only_archive.mkdir()
    (only_archive / "libstdc++.a").symlink_to(archive)
    loaded = link.loaded_libstdcxx()
    assert loaded is not None and Path(loaded).name.startswith("libstdc++.so")
    source = tmp_path / "regex.cpp"
    source.write_text(REGEX_SOURCE)
    for name, named in (("by-name", ""), ("by-path", loaded)):
        command = [str(link.COMPILER), "-shared", "-fPIC", str(source), f"-L{only_archive}"]
        env = {**os.environ, "D2BENCH_REAL_CXX": "g++", "D2BENCH_LIBSTDCXX": named}
        subprocess.run([*command, "-o", str(tmp_path / name)], env=env, check=True, timeout=120)
        with zipfile.ZipFile(tmp_path / f"{name}.pt2", "w") as package:
            package.write(tmp_path / name, f"data/aotinductor/model/{name}.so")
    assert link.runtime(tmp_path / "by-name.pt2") == "static"
    assert link.runtime(tmp_path / "by-path.pt2") == "shared"


# --- a small detector in the package contract, packaged for real ------------------------------


class TinyDetector(nn.Module):
    """Images -> slots.Slots, as detector.StaticDetector answers: a conv scores each pixel of a
    coarse grid, a box per pixel, static_graph's own selection (per-class NMS through
    d2bench::greedy_nms, best detections) and compaction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, *images):
        features = self.conv(torch.stack(images) / 255)
        n, _, height, width = features.shape
        scores = features[:, 0].flatten(1).sigmoid()
        size = 12 + 12 * features[:, 1].flatten(1).sigmoid()
        grid = dict(dtype=torch.float32, device=features.device)
        ys = (torch.arange(height, **grid) * 4).repeat_interleave(width)
        xs = (torch.arange(width, **grid) * 4).repeat(height)
        boxes = torch.stack([xs - size, ys - size, xs + size, ys + size], -1)
        classes = (features[:, 2].flatten(1) > 0).long()
        slots = heads_slots.select(boxes, scores, classes, scores > 0.5, 0.5, 40, 128)
        return heads_slots.compact(slots)


@pytest.mark.slow
def test_a_package_is_built_reused_described_and_loaded_by_its_snippet(tmp_path, monkeypatch):
    compiler_log = tmp_path / "cxx.log"
    monkeypatch.setenv("D2BENCH_CXX_LOG", str(compiler_log))  # link.COMPILER writes it
    outputs = Outputs(TinyDetector().eval(), None).eval()
    images = (torch.rand(3, 64, 80) * 255,)
    with torch.no_grad():
        expected = outputs(*images)
    assert [t.shape for t in expected[:4]] == [(1, 40, 4), (1, 40), (1, 40), (1,)]
    count = int(expected[FIELDS.index("counts")][0])
    assert 0 < count < 40, "the case keeps some boxes, and padded slots follow"

    meta_extra = {"model": "tiny", "precision": "fp32"}
    first = build.build(outputs, images, meta_extra, cache_dir=tmp_path / "cache")
    again = build.build(outputs, images, meta_extra, cache_dir=tmp_path / "cache")
    assert first.compile_s is not None and first.compile_s > 0, "the first build compiles"
    assert again.compile_s is None and again.key == first.key and again.path == first.path
    assert again.built_compile_s == pytest.approx(first.compile_s)
    assert first.runtime == again.runtime == "shared", "linked against the process's libstdc++"
    links = [line for line in compiler_log.read_text().splitlines() if " -shared" in line]
    assert links, "Inductor compiled and linked through link.COMPILER"
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["key"] == first.key and record["metadata"]["d2bench.model"] == "tiny"
    other = Outputs(TinyDetector().eval(), None).eval()
    other.detector.conv.bias.data += 1  # other weights: another package
    assert build.build(other, images, meta_extra, cache_dir=tmp_path / "cache").key != first.key

    unpacked = tmp_path / "scratch"  # a measuring child's scratch folder (runner.scratch)
    unpacked.mkdir()
    monkeypatch.setenv(scratch.ENV, str(unpacked))
    loaded, load_s, isa_probe_s = build.load(first.path, torch.device("cpu"))
    assert [p.name[:12] for p in unpacked.iterdir()] == ["aotinductor_"], "unpacked in scratch"
    meta = loaded.get_metadata()
    assert meta["d2bench.outputs"] == "boxes,scores,classes,counts,exact"
    assert meta["d2bench.inputs"] == "1 x [3, 64, 80] float32" and load_s >= 0 <= isa_probe_s
    got = loaded(*images)
    for want, have in zip(expected, got, strict=True):  # Inductor's fused conv epilogue: ulps
        if want.is_floating_point():
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-4)
        else:
            assert torch.equal(want, have)
    flat = slice_detections(got, [count])
    assert [len(t) for t in flat] == [count] * 3
    assert meta["d2bench.calls"] == "d2bench::greedy_nms", "the NMS op, by name, and no other"
    needs = build.requirements(meta)
    assert any("runner.ops" in line for line in needs)
    assert any(line.startswith("no torchvision") for line in needs)

    # the snippet the command prints, as printed, in a process without the model code
    torch.save({"image": images[0], "expected": expected}, tmp_path / "io.pt")
    snippet = build.snippet(first.path, meta)
    check = textwrap.dedent(
        f"""
        io = torch.load({str(tmp_path / "io.pt")!r})
        boxes, scores, classes, counts, exact = model(io["image"])
        assert torch.equal(counts, io["expected"][3]) and torch.equal(classes, io["expected"][2])
        torch.testing.assert_close(boxes, io["expected"][0], rtol=1e-5, atol=1e-4)
        assert bool(exact.all())
        print("snippet ran")
        """
    )
    done = run_blocked(snippet + "\n" + check)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("snippet ran")


# A compiler that asks for the static C++ runtime on every shared link, as Inductor's link
# command did on the GPU machine (torch 2.11), then calls $NEXT_CXX.
ASKS_STATIC = """#!/bin/sh
case " $* " in *" -shared "*) exec "$NEXT_CXX" "$@" -static-libstdc++ -static-libgcc ;; esac
exec "$NEXT_CXX" "$@"
"""

COMPILE_PROGRAM = """
import sys, torch, torchvision, runner.ops
program = torch.export.load(sys.argv[1])
with torch.no_grad():
    torch._inductor.aoti_compile_and_package(program, package_path=sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++ (AOTInductor's compiler)")
def test_a_static_libstdcxx_package_fails_at_load_and_the_compiler_shim_makes_it_load(tmp_path):
    """The GPU machine's failure, on the CPU: a package whose link asked for the static C++
    runtime fails when it is constructed (here std::bad_cast; SIGSEGV on the GPU machine: the
    loading process has libstdc++.so.6 already, and two copies disagree on the locale's facets).
    The same request through link.COMPILER gives a `shared` package that loads and answers as
    the model does."""
    outputs = Outputs(TinyDetector().eval(), None).eval()
    images = (torch.rand(3, 64, 80) * 255,)
    with torch.no_grad():
        expected = outputs(*images)
    torch.export.save(build.export(outputs, images), tmp_path / "program.pt2")
    torch.save({"image": images[0], "expected": expected}, tmp_path / "io.pt")
    asks = tmp_path / "asks-static"
    asks.write_text(ASKS_STATIC)
    asks.chmod(0o755)
    compiles = {}
    for name, after in (("static", "g++"), ("shim", str(link.COMPILER))):
        env = {"CXX": str(asks), "NEXT_CXX": after, "D2BENCH_REAL_CXX": "g++"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / f"cache-{name}")  # no shared .so
        command = [
            "-c",
            COMPILE_PROGRAM,
            str(tmp_path / "program.pt2"),
            str(tmp_path / f"{name}.pt2"),
        ]
        compiles[name] = subprocess.Popen(
            [sys.executable, *command],
            env={**clean_environment(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, process in compiles.items():
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, f"{name}: {err[-3000:]}"
    assert link.runtime(tmp_path / "static.pt2") == "static"
    assert link.runtime(tmp_path / "shim.pt2") == "shared"

    check = """
        io = torch.load({io!r})
        model = torch._inductor.aoti_load_package({package!r})
        print("loaded")
        got = model(io["image"])
        assert torch.equal(got[3], io["expected"][3]) and torch.equal(got[2], io["expected"][2])
        torch.testing.assert_close(got[0], io["expected"][0], rtol=1e-5, atol=1e-4)
        print("same detections")
        """
    loads = {}
    for name in ("static", "shim"):
        code = "import torch, torchvision, runner.ops\n" + textwrap.dedent(
            check.format(io=str(tmp_path / "io.pt"), package=str(tmp_path / f"{name}.pt2"))
        )
        loads[name] = run_blocked(code)
    static, shim = loads["static"], loads["shim"]
    assert static.returncode != 0 and "loaded" not in static.stdout, (
        "a static-libstdc++ package loaded: if this torch tolerates it, the shim may be moot"
    )
    assert shim.returncode == 0 and "same detections" in shim.stdout, shim.stderr[-3000:]


def test_build_takes_a_path_or_a_cache_not_both(tmp_path):
    outputs = Outputs(TinyDetector().eval(), None).eval()
    with pytest.raises(ValueError, match="exactly one"):
        build.build(
            outputs, (torch.rand(3, 32, 32),), {}, path=tmp_path / "a.pt2", cache_dir=tmp_path
        )


# --- whole detectors (detectron2) -----------------------------------------------------------


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_command_packages_a_detector_that_answers_without_detectron2(tmp_path, device):
    """`python -m runner.package` on Mask R-CNN FPN (masks included), then the package in a
    process without detectron2 or the backends: its detections equal the in-process rewrite's
    (the command's own check, repeated here across processes)."""
    if device == "cuda" and not have_cuda():
        pytest.skip("needs a CUDA device: torch.cuda.is_available() is False on this machine")
    out = tmp_path / "fpn.pt2"
    precision = "precision=fp16" if device == "cuda" else "precision=fp32"
    args = (f"out={out}", "model=mask_rcnn_fpn", f"device={device}", precision, FEWER)
    sizes = SMALL_D2[1:] if device == "cpu" else ()
    done = run_module("runner.package", *args, *sizes, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"package: {out}" in done.stdout and "largest raw difference" in done.stdout
    if device == "cpu":  # fp32: the same detections, as sets
        assert "detections F1 1.00" in done.stdout, done.stdout
    assert out.is_file() and "no detectron2" in done.stdout

    from runner.backends import static_graph, validate_options
    from runner.config import to_config
    from runner.run.measurement import build as build_run
    from tests.helpers import compose_config

    overrides = (*args[1:], *sizes, "backend=aot_package", "command=t", f"output_dir={tmp_path}")
    cfg = to_config(compose_config(*overrides))

    built = build_run(cfg, torch.device(device))
    outputs, _ = static_graph.rewrite(
        built.exported, cfg.precision, validate_options("aot_package", cfg.backend.options)
    )
    images = built.images.images["opt"]
    with torch.no_grad():
        expected = outputs(*images)
    torch.save(
        {"images": [i.cpu() for i in images], "expected": [t.cpu() for t in expected]},
        tmp_path / "io.pt",
    )
    code = textwrap.dedent(
        f"""
        import torch, torchvision
        import runner.ops
        io = torch.load({str(tmp_path / "io.pt")!r})
        model = torch._inductor.aoti_load_package({str(out)!r})
        got = model(*[i.to({device!r}) for i in io["images"]])
        want = io["expected"]
        n = int(want[3][0])
        assert n > 0 and torch.equal(got[3].cpu(), want[3]) and torch.equal(got[2].cpu(), want[2])
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-4, atol=1e-4)
        assert "detectron2" not in sys.modules
        print("same detections", n)
        """
    )
    done = run_blocked(code, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same detections" in done.stdout


# --- the docs and the README say what the command prints --------------------------------------

DOCS = REPO / "docs" / "packages.md"
EXAMPLE = {  # the metadata of the docs' example package (Mask R-CNN FPN, fp16, batch 1, CUDA)
    "d2bench.inputs": "1 x [3, 480, 640] float32",
    "d2bench.outputs": "boxes,scores,classes,counts,exact,masks",
    "d2bench.device": "cuda",
    "d2bench.calls": "d2bench::greedy_nms,torchvision::roi_align",
}


@pytest.mark.parametrize(
    "device, calls, torchvision, runner_ops",
    [
        ("cuda", "d2bench::greedy_nms,torchvision::roi_align", True, False),
        ("cuda", "d2bench::greedy_nms,d2bench::roi_align", False, False),  # roi_align: op
        ("cpu", "d2bench::greedy_nms", False, True),
        ("cpu", "", False, False),
        ("cuda", None, True, False),  # a package from before d2bench.calls: assume torchvision
        ("cpu", None, True, True),
    ],
)
def test_what_loading_needs_follows_the_ops_the_package_calls(
    device, calls, torchvision, runner_ops
):
    meta = {**EXAMPLE, "d2bench.device": device, "d2bench.torch": "2.11.0"}
    meta.update({"d2bench.sm": "sm_90", "d2bench.gpu": "NVIDIA H100"} if device == "cuda" else {})
    if calls is None:
        del meta["d2bench.calls"]
    else:
        meta["d2bench.calls"] = calls
    needs = build.requirements(meta)
    imports = build.snippet(Path("model.pt2"), meta).split("\n\n", 1)[0]
    assert any("`import torchvision`" in line for line in needs) == torchvision, needs
    assert any(line.startswith("no torchvision") for line in needs) != torchvision, needs
    assert ("torchvision" in imports) == torchvision, imports
    assert any("`import runner.ops`" in line for line in needs) == runner_ops, needs
    assert ("import runner.ops" in imports) == runner_ops, imports
    if calls and "torchvision::roi_align" in calls:
        assert any("(torchvision::roi_align)" in line for line in needs), "named"


def test_the_docs_show_the_snippet_the_command_prints():
    text = DOCS.read_text()
    block = text.split("## Load it in Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert block.strip() == build.snippet(Path("mask_rcnn_fpn_fp16.pt2"), EXAMPLE).strip()


def test_the_docs_name_every_output_of_the_contract():
    text = DOCS.read_text().split("## What it takes and returns", 1)[1].split("\n## ", 1)[0]
    for name in (*FIELDS, *(name for group in OPTIONAL for name in group)):
        assert f"`{name}" in text, name


def test_the_package_commands_of_the_readme_and_docs_pass_the_commands_checks(tmp_path):
    """Every `python -m runner.package` line shown, in the README or any page of docs/, composes
    (the command's own checks up to building, on this machine's device)."""
    import shlex

    from runner import package

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = [
        line.replace("\\\n", " ")
        for text in (path.read_text() for path in pages)
        for line in text.replace("\\\n    ", " ").splitlines()
        if line.startswith("python -m runner.package ")
    ]
    assert len(lines) >= 3, lines
    for line in lines:
        out, overrides = package.split_out(shlex.split(line)[3:])
        overrides = [o for o in overrides if not o.startswith("model.weights=")]
        cfg = package.compose([*overrides, "device=cpu"], tmp_path)
        assert cfg.backend.name == "aot_package" and out.suffix == ".pt2"


class _Autocast(nn.Module):
    """A forward whose ops sit in an autocast region, as Outputs runs them at fp16/bf16."""

    def __init__(self, squash):
        super().__init__()
        self.conv, self.squash = nn.Conv2d(3, 4, 3), squash

    def forward(self, image):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.squash(self.conv(image[None])) + 1  # the last op names the result


def test_the_package_key_sees_ops_inside_an_autocast_region():
    """At fp16 torch.export puts the autocast region's ops in a submodule that the top graph's
    code only names; on the H100 a detector's packages with torchvision's ROIAlign and with
    d2bench::roi_align got one key (so one could have been reused for the other). The key
    hashes every graph: the same module with another op inside the region gets another key."""
    image = torch.rand(3, 16, 16)
    keys = {}
    for squash in (torch.relu, torch.sigmoid):
        torch.manual_seed(0)
        program = build.export(_Autocast(squash).eval(), (image,))
        assert any(name for name, _ in program.graph_module.named_children()), "no submodule"
        keys[squash.__name__] = build.package_key(program, torch.device("cpu"), {})
    assert keys["relu"] != keys["sigmoid"]
