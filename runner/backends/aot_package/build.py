"""Build: takes the rewritten detector as Outputs (runner/backends/static_graph/outputs.py) and
example images of one size and batch, returns an AOTInductor package: one `.pt2` file that holds
the compiled forward, its kernels (the Triton NMS of runner.ops included) and its weights, and
that loads without detectron2 or d2bench's model code.

    export(outputs, images)                 torch.export (non-strict) -> ExportedProgram
    package_key(program, ...)               what makes two builds the same package (the cache)
    compile_package(program, path, meta)    AOTInductor -> path (written atomically)
    build(outputs, images, path | cache)    the three above, with a cache of packages by key
    load(path)                              aoti_load_package (single-threaded runner: the
                                            mode that a CUDA graph may capture)
    requirements(meta), snippet(path, meta) what loading it needs, and how, in words

One package serves one input size and batch, as a TensorRT engine serves one profile: the
rewrite's budgets and every tensor shape follow from the size, and a CUDA graph replays one
shape anyway, so `shapes=dynamic` makes one package per size rather than a graph with dynamic
dimensions (which would give up the fixed-shape kernels and the replay).

What a package needs at load time, in the loading process: the torch version it was built with
(AOTInductor's runtime is not promised across versions) and, on CUDA, a GPU of the same compute
capability (its kernels are compiled for it); torchvision's ops, where it calls one by name
(`torchvision::roi_align`, unless built with `roi_align: op`: `import torchvision`, or in C++
load torchvision's library); and for a CPU package the CPU kernels of d2bench's ops
(`import runner.ops`). The package's metadata (`get_metadata()`) records the contract, the sizes,
the ops outside torch it calls (`d2bench.calls`) and what built it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from runner import scratch
from runner.backends.aot_package import link
from runner.backends.static_graph.outputs import VERSION

log = logging.getLogger(__name__)

# runner/ops files whose kernels a package compiles (part of its cache key)
OPS_SOURCES = ("nms.py", "nms_triton.py", "roi_align.py", "roi_align_triton.py")


@dataclass
class Package:
    """A package on disk and what making it cost (None where it came from the cache)."""

    path: Path
    key: str
    size_mb: float
    export_s: float
    compile_s: float | None  # None: reused from the cache
    built_compile_s: float | None  # what the compile cost when the cached package was made
    runtime: str  # how its .so files get libstdc++: link.runtime ("shared" is the one that loads)


def export(outputs: torch.nn.Module, images: tuple[torch.Tensor, ...]):
    """The forward traced by torch.export (non-strict, no gradients): every shape static."""
    with torch.no_grad():
        return torch.export.export(outputs, tuple(images), strict=False)


def called_ops(program) -> list[str]:
    """The ops outside torch's own (aten, prims) that the exported graph calls, by name
    (`torchvision::roi_align`, `d2bench::greedy_nms`), submodules of higher-order ops included:
    what a loading process may have to register (requirements)."""
    names = set()
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            target = node.target
            if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
                if target.namespace not in ("aten", "prims", "prim"):
                    names.add(f"{target.namespace}::{target._schema.name.split('::')[-1]}")
    return sorted(names)


def _tensor_digest(hasher, tensors: dict) -> None:
    for name in sorted(tensors):
        value = tensors[name]
        hasher.update(name.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach()
            hasher.update(f"{value.dtype}{tuple(value.shape)}{value.stride()}".encode())
            hasher.update(value.contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
        else:
            hasher.update(repr(value).encode())


def package_key(program, device: torch.device, extra: dict) -> str:
    """24 hex digits naming what a package would hold: the exported graph, its weights and
    constants, the kernels' sources, torch's version, the GPU's kind and the flags that steer
    compilation (TF32, `extra`). Two builds with the same key make the same package."""
    from runner.precision import tf32_state

    hasher = hashlib.sha256()
    # every graph's code: an autocast region (precision=fp16) or another higher-order op holds
    # its ops in a submodule that the top graph's code only names
    for name, module in program.graph_module.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            hasher.update(f"{name}\n{module.code}".encode())
    _tensor_digest(hasher, dict(program.state_dict))
    _tensor_digest(hasher, dict(program.constants))
    ops = Path(__file__).resolve().parents[2] / "ops"
    for name in OPS_SOURCES:
        hasher.update((ops / name).read_bytes())
    hasher.update(link.COMPILER.read_bytes())  # how the package's C++ is linked
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else ""
    text = json.dumps(
        {
            "torch": torch.__version__,
            "device": f"{gpu} {capability}",
            "tf32": tf32_state(),
            "contract": VERSION,
            **extra,
        },
        sort_keys=True,
        default=str,
    )
    hasher.update(text.encode())
    return hasher.hexdigest()[:24]


def metadata(fields, images: tuple[torch.Tensor, ...], extra: dict) -> dict[str, str]:
    """What the package says about itself (strings, as AOTInductor stores them); `fields`: the
    Outputs' (outputs.Fields: its tuple's names, and what its detections are)."""
    device = images[0].device
    meta = {
        "d2bench.contract": VERSION,
        "d2bench.outputs": ",".join(fields.names),
        "d2bench.answers": fields.answers,
        "d2bench.inputs": f"{len(images)} x [3, {images[0].shape[-2]}, {images[0].shape[-1]}]"
        f" {str(images[0].dtype).replace('torch.', '')}",
        "d2bench.torch": torch.__version__,
        "d2bench.device": device.type,
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        meta["d2bench.gpu"] = torch.cuda.get_device_name(device)
        meta["d2bench.sm"] = f"sm_{major}{minor}"
    meta.update({f"d2bench.{k}": str(v) for k, v in extra.items()})
    return meta


def worker_environment() -> dict[str, str]:
    """The compile worker's environment: this process's without what only a loading process
    sets (LOADER_ENVIRONMENT: a build needs Inductor's pool and its CPU ISA probe), the pool's
    size from D2BENCH_COMPILE_THREADS where several builds share a machine, and this checkout
    on PYTHONPATH (the worker imports runner.ops)."""
    env = {k: v for k, v in os.environ.items() if k not in LOADER_ENVIRONMENT}
    if os.environ.get("D2BENCH_COMPILE_THREADS"):
        env["TORCHINDUCTOR_COMPILE_THREADS"] = os.environ["D2BENCH_COMPILE_THREADS"]
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def compile_package(program, path: Path, meta: dict[str, str]) -> Path:
    """AOTInductor's compile of `program` into `path`, in a process of its own
    (compile_worker.py says why): the program is saved next to `path` (torch.export.save), the
    worker compiles it with Inductor's usual pool of compile workers (D2BENCH_COMPILE_THREADS
    sets its size where several builds share a machine), and the package is written to a
    temporary name first and renamed, so that a reader never sees half a package."""
    import subprocess
    import sys
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.pt2")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".compile-") as work:
        saved, meta_file = Path(work) / "program.pt2", Path(work) / "metadata.json"
        torch.export.save(program, saved)
        meta_file.write_text(json.dumps(meta))
        worker = "runner.backends.aot_package.compile_worker"
        command = [sys.executable, "-m", worker, str(saved), str(partial), str(meta_file)]
        try:
            done = subprocess.run(command, env=worker_environment(), capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-20:])
                raise RuntimeError(f"AOTInductor's compile failed ({done.returncode}):\n{tail}")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def build(
    outputs: torch.nn.Module,
    images: tuple[torch.Tensor, ...],
    meta_extra: dict,
    *,
    path: Path | None = None,
    cache_dir: Path | None = None,
    reuse: bool = True,
) -> Package:
    """Export `outputs` at `images`, then compile it into `path`, or into `cache_dir` under its
    key (reusing a package already there when `reuse`). The forward must have run eagerly at
    this size before (anchors are made outside any trace: detector.Anchors)."""
    if (path is None) == (cache_dir is None):
        raise ValueError("build: give exactly one of path and cache_dir")
    started = time.perf_counter()
    log.info("exporting the rewritten forward at %s (torch.export)", _shapes(images))
    program = export(outputs, images)
    export_s = time.perf_counter() - started
    key = package_key(program, images[0].device, {"meta": meta_extra})
    record = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{key}.pt2"
        record = path.with_suffix(".json")
        if reuse and path.is_file() and record.is_file():
            built = json.loads(record.read_text())
            log.info("package %s: reused (built in %.1f s)", path, built["compile_s"])
            return Package(
                path, key, _mb(path), export_s, None, built["compile_s"], link.runtime(path)
            )
    called = ",".join(called_ops(program))
    meta = metadata(outputs.fields, images, {"key": key, "calls": called, **meta_extra})
    log.info("compiling the package with AOTInductor (tens of seconds on a GPU host)")
    started = time.perf_counter()
    compile_package(program, Path(path), meta)
    compile_s = time.perf_counter() - started
    runtime = link.runtime(Path(path))
    package = Package(Path(path), key, _mb(Path(path)), export_s, compile_s, compile_s, runtime)
    if runtime == "static":
        log.warning(
            "package %s carries a static libstdc++ of its own: on torch 2.11 such packages "
            "crashed at load (runner/backends/aot_package/link.py)",
            path,
        )
    if record is not None:
        text = json.dumps({**asdict(package), "path": str(path), "metadata": meta}, indent=1)
        record.write_text(text + "\n")
    log.info(
        "package %s: %.1f MB, export %.1f s, compile %.1f s, libstdc++ %s",
        path,
        package.size_mb,
        export_s,
        compile_s,
        runtime,
    )
    return package


# What a process that loads packages sets before torch starts: no pool of compile workers (on
# torch 2.11 a package crashed at load wherever that pool ran: compile_worker.py), and no build
# checks in Inductor's CPU ISA probe (cpu_isa_probe: on torch 2.11 it built and loaded a test
# program per ISA in fresh Pythons, about 40 s of every loading process; the loader only
# compares its answer with the package's and warns where they differ). A build's worker gets
# neither (compile_package): it compiles, so it probes as Inductor always does.
LOADER_ENVIRONMENT = {"TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_VEC_ISA_OK": "1"}


def load(path: Path, device: torch.device):
    """The package loaded as a user would (torch._inductor.aoti_load_package), with the
    single-threaded runner, the one a CUDA graph may capture; the seconds it took, and those of
    Inductor's CPU ISA probe before it (cpu_isa_probe). The process should have
    LOADER_ENVIRONMENT from its start; Inductor's setting is made here too, for a pool that has
    not been started yet. The loader unpacks the package's files (its .so,
    its kernels) into a folder of TMPDIR and removes it when the model is freed; a measuring
    child never frees it (it leaves with os._exit), so there they go into its scratch folder,
    which its parent removes (runner.scratch)."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1
    isa_probe_s = cpu_isa_probe()
    started = time.perf_counter()
    index = device.index if device.type == "cuda" and device.index is not None else -1
    with scratch.as_tmpdir():
        loaded = torch._inductor.aoti_load_package(
            str(path), run_single_threaded=True, device_index=index
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loaded, time.perf_counter() - started, isa_probe_s


def cpu_isa_probe() -> float:
    """Seconds Inductor's CPU ISA probe took in this process (0 once done: it is cached). The
    loader asks for it (the machine's description it compares with the package's): torch 2.11
    compiles a test program per ISA and loads each in a fresh Python that imports torch, which
    cost about 40 s of every load on the lent H100s (session 11). It is the process's, not the
    package's, so a load is reported without it and the probe beside it. Under
    LOADER_ENVIRONMENT (TORCHINDUCTOR_VEC_ISA_OK=1) it reads the CPU's flags and builds
    nothing."""
    from torch._inductor import cpu_vec_isa

    started = time.perf_counter()
    cpu_vec_isa.pick_vec_isa()
    return time.perf_counter() - started


# what a package made before `d2bench.calls` was recorded is taken to call: what its loading
# was said to need then
CALLS_BEFORE = "d2bench::greedy_nms,torchvision::roi_align"


def calls(meta: dict[str, str], namespace: str) -> list[str]:
    """The ops of `namespace` ("torchvision::") a package with this metadata calls (its
    d2bench.calls): what loading it needs (requirements, snippet, scripts/cpp_loader.py)."""
    named = meta.get("d2bench.calls", CALLS_BEFORE)
    return [name for name in named.split(",") if name.startswith(namespace)]


def requirements(meta: dict[str, str]) -> list[str]:
    """What a process needs to load a package with this metadata, one line each."""
    needs = [f"torch {meta['d2bench.torch']} (AOTInductor packages are built for one version)"]
    ours, theirs = calls(meta, "d2bench::"), calls(meta, "torchvision::")
    if meta.get("d2bench.device") == "cuda":
        needs.append(
            f"a CUDA GPU of compute capability {meta['d2bench.sm']} (built on "
            f"{meta['d2bench.gpu']}); neither Triton nor a compiler"
        )
    elif ours:
        needs.append(
            f"the CPU kernels of d2bench's ops ({', '.join(ours)}): `import runner.ops` before "
            "loading"
        )
    if theirs:
        needs.append(
            f"torchvision's ops, which the package calls by name ({', '.join(theirs)}): "
            "`import torchvision` (C++: load torchvision's library, libtorchvision or _C.so)"
        )
    else:
        needs.append("no torchvision: the package calls none of its ops")
    needs.append("no detectron2 and none of d2bench's model code")
    return needs


def snippet(path: Path, meta: dict[str, str]) -> str:
    """A short program that loads the package and runs one image (what the CLI prints)."""
    batch, shape = meta["d2bench.inputs"].split(" x ")
    _, height, width = (int(v) for v in shape.split("]")[0].strip("[").split(","))
    device = meta.get("d2bench.device", "cuda")
    imports = "import torch" + (", torchvision" if calls(meta, "torchvision::") else "")
    if device == "cpu" and calls(meta, "d2bench::"):
        imports += "\nimport runner.ops  # the CPU kernels of d2bench's ops"
    names = meta["d2bench.outputs"].replace(",", ", ")
    images = ", ".join(["image"] * int(batch))
    return f"""{imports}

model = torch._inductor.aoti_load_package("{path}")
# one float32 [3, {height}, {width}] tensor per image: BGR, 0-255, as detectron2 takes it
image = torch.rand(3, {height}, {width}, device="{device}") * 255
{names} = model({images})
n = int(counts[0])  # image 0's detections: the first n slots
print(boxes[0, :n], scores[0, :n], classes[0, :n])"""


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _shapes(images) -> str:
    return f"{len(images)} x {list(images[0].shape)}"
