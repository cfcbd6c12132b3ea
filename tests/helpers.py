"""Plain helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

DETECTRON2_MISSING = "detectron2 is not installed (README: Install)"
# a whole run small enough for two CPU cores: torchvision's MobileNet Faster R-CNN, 3 timed calls
# in one repeat (tests of repeats ask for more)
SMALL_CPU_RUN = (
    "model=tv_fasterrcnn_mobilenet",
    "device=cpu",
    "bench.warmup=1",
    "bench.iters=3",
    "bench.repeats=1",
    "bench.rewarm=0",
    "inputs.height=160",
    "inputs.width=224",
)
CUDA_MISSING = "needs a CUDA device: torch.cuda.is_available() is False on this machine"


def option_files(group: str) -> list[Path]:
    """Every option file of a config group, found on disk so that new files are covered."""
    return sorted((CONF / group).glob("*.yaml"))


def config_groups() -> list[str]:
    """The config groups under conf/ (Hydra's own `hydra/` group excluded)."""
    return sorted(
        p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra" and option_files(p.name)
    )


def named_groups() -> list[str]:
    """Config groups whose option file fills a Config field that has a `name` (model, ...);
    backend_file is the backend group's file again, not a group of its own."""
    import dataclasses
    import typing

    from runner.config import Config

    hints = typing.get_type_hints(Config)
    return sorted(
        name
        for name, kind in hints.items()
        if dataclasses.is_dataclass(kind)
        and "name" in {f.name for f in dataclasses.fields(kind)}
        and (CONF / name).is_dir()
    )


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml composed with `overrides`, as Hydra composes it for `python -m runner`."""
    import hydra

    from runner.config import register_schema

    register_schema()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose(
            "config", overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def seed_variants() -> dict[str, dict]:
    """conf/sweep/seed.yaml's named variants: name -> {key: value}."""
    data = yaml.safe_load((CONF / "sweep" / "seed.yaml").read_text())
    return data["hydra"]["sweeper"]["variants"]


@functools.cache
def have_detectron2() -> bool:
    from runner.families.detectron2 import MissingDependency
    from runner.families.detectron2 import require as require_detectron2

    try:
        require_detectron2()
    except MissingDependency:
        return False
    return True


@functools.cache
def have_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def process_gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether process `pid` has ended (a zombie waiting for its parent to reap it counts as
    ended: it runs nothing and holds no memory), waiting up to wait_s for it to go."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def clean_environment() -> dict[str, str]:
    """This process's environment without what the runner itself sets for its jobs (D2BENCH_*,
    HYDRA_*), with the repository importable from any working directory: put in front of any
    PYTHONPATH already set (a machine whose packages come in through it keeps them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2BENCH_", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(
    *args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python ARGS` (this interpreter) in a real subprocess, in `clean_environment()` plus
    `env`; output captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**clean_environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_module(
    module: str, *args: str, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a real subprocess; output captured as text."""
    return run_python("-m", module, *args, cwd=cwd, timeout=timeout)


def run_runner(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in a real subprocess, from the repository root."""
    return run_module("runner", *args, timeout=timeout)


def skip_without_detectron2() -> None:
    """Skip the calling test, with the reason, where detectron2 cannot be imported."""
    import pytest

    if not have_detectron2():
        pytest.skip(DETECTRON2_MISSING)


def skip_without_cuda() -> None:
    """Skip the calling test, with the reason, where torch sees no CUDA device."""
    import pytest

    if not have_cuda():
        pytest.skip(CUDA_MISSING)


def assert_logit_layers_exist(model_file: Path) -> str:
    """Every `logit_layers` entry of a model file names a Conv/Linear of the built model (a
    misspelt one would be skipped by calibration silently). Returns the weights label."""
    import torch

    from runner.config import ModelConfig
    from runner.run import models

    cfg = ModelConfig(**yaml.safe_load(model_file.read_text()))
    model, label = models.build(cfg, torch.device("cpu"), seed=0)
    layers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    for entry in cfg.logit_layers:
        assert any(models._matches(name, [entry]) for name in layers), entry
    return label


def capture_sync_free(call):
    """`call()` once (compiles its kernels), then again and inside a CUDA graph's capture with
    CUDA's sync debug mode set to error, which raises on any host sync: the steady state must be
    sync-free. Returns the graph and the captured call's outputs (static buffers)."""
    import torch

    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return graph, outputs


# op targets of a traced graph that read the device on the host or make a data-dependent shape
# (`.item()` is the target "item"; "getitem" is indexing and allowed)
DATA_DEPENDENT = ("local_scalar", "nonzero", "masked_select")


def trace_sync_free(fn, *args):
    """`fn(*args)` traced whole by Dynamo (fullgraph, static shapes) and run: the CPU stand-in
    for capturing it in a CUDA graph. Fails where the graph holds a host read or a
    data-dependent shape (DATA_DEPENDENT, `.item()`); returns the traced call's answer."""
    import torch

    ops: list[str] = []

    def record(gm, example_inputs):
        ops.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=record, fullgraph=True, dynamic=False)
    with torch.no_grad():
        answer = compiled(*args)
    assert ops and not any(op == "item" or w in op for op in ops for w in DATA_DEPENDENT), ops
    return answer


def backend_and_eager(cfg, exported, images):
    """The run's backend optimized from `exported` and called on its `opt` images: (eager's
    decoded answer, the backend's decoded answer, the backend's callable)."""
    import torch

    from runner import backends

    opt = images.images["opt"]
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        options = backends.validate_options(cfg.backend.name, cfg.backend.options)
        fn = backends.get(cfg.backend.name)(exported, images, cfg.precision, options)
        output = exported.decode(fn(*opt), cfg.batch)
    return reference, output, fn


def ptx_for_sm90(
    kernel, signature: dict[str, str], constexprs: dict[str, object], divisible: tuple = ()
) -> dict:
    """`kernel` (a @triton.jit function) compiled by Triton for an H100 (sm_90) without a GPU
    (Triton's own ptxas): its asm ("ptx", "ttgir", "cubin", ...). `signature` types every
    argument that is not in `constexprs` ("*fp16", "i32", "fp32", ...), as the launcher would;
    `divisible` names the arguments the launcher found divisible by 16 (pointers aligned to 16
    bytes, integers), which it tells the compiler as Triton's launcher and Inductor do."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {name: "constexpr" if name in constexprs else signature[name] for name in names}
    source = ASTSource(
        kernel,
        signature,
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
        attrs={(names.index(name),): [["tt.divisibility", 16]] for name in divisible},
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm


def f64_uses(ptx: str) -> list[str]:
    """The PTX instructions that read a register holding an fp64 value (a kernel parameter typed
    .f64, or the result of an instruction typed .f64), as `opcode operands` lines."""
    params = set(re.findall(r"\.param \.f64 (\w+)", ptx))
    doubles: set[str] = set()
    uses = []
    for line in ptx.splitlines():
        found = re.match(r"\s*([a-z][\w.]*)\s+(%\w+)(.*?);", line)
        if not found:
            continue
        opcode, dest, rest = found.groups()
        sources = set(re.findall(r"%\w+", rest))
        if sources & doubles:
            uses.append(f"{opcode} {dest}{rest}")
        parts = opcode.split(".")
        made = parts[-2] if parts[0] == "cvt" else parts[-1]  # cvt.rn.f32.f64: makes an f32
        loaded = re.search(r"\[(\w+)\]", rest)
        if (made == "f64" and parts[0] != "setp") or (
            parts[0] == "ld" and loaded and loaded[1] in params
        ):
            doubles.add(dest)
    return uses
