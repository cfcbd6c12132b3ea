"""Backends: the registry, option checking, and what each backend does on a CPU (a small
module for the TorchScript backend; `unsupported` for those that need CUDA or absent packages)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch
import yaml
from torch import nn

from runner import backends, families
from runner.backends import Unsupported, check_options
from runner.config import PrecisionConfig
from runner.exported import Exported, Layout
from runner.run.inputs import InputSet
from tests.helpers import REPO, option_files

FP32 = PrecisionConfig(name="fp32")


def test_registry_lists_the_backends():
    names = backends.names()
    assert {"eager", "torchscript"} <= set(names)
    assert names == sorted(names)


def test_every_backend_file_has_a_registered_backend():
    names = set(backends.names())
    for path in option_files("backend"):
        assert path.stem in names, f"conf/backend/{path.name} names no registered backend"


def test_get_returns_the_optimize_function():
    from runner.backends import eager

    assert backends.get("eager") is eager.optimize


def test_get_unknown_names_the_registered_ones():
    with pytest.raises(KeyError) as error:
        backends.get("nope")
    message = str(error.value)
    assert "nope" in message
    for name in ("eager", "torchscript"):
        assert name in message


def test_registering_a_name_twice_is_refused():
    def another(exported, inputs, precision, options):
        return exported.module

    with pytest.raises(ValueError, match="twice"):
        backends.register("eager")(another)
    assert backends.get("eager") is not another


def test_version_names_what_does_the_work():
    assert backends.version("eager") == f"torch {torch.__version__}"
    assert backends.version("torchscript").startswith("torch ")
    with pytest.raises(KeyError):
        backends.version("nope")


@pytest.mark.parametrize("name", ["tensorrt", "torch_blade"])
def test_version_of_an_absent_package_is_empty(name):
    if name not in backends.names():
        pytest.skip(f"backend {name} is not registered in this version")
    module = {"tensorrt": "torch_tensorrt", "torch_blade": "torch_blade"}[name]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    assert backends.version(name) == ""


# ---- check_options ---------------------------------------------------------------------------

ALLOWED = {
    "freeze": (bool,),
    "mode": ("default", "max-autotune"),
    "dynamic": (bool, None),
    "min_block_size": (int,),
    "ratio": (float,),
}


def test_check_options_accepts_allowed_values():
    options = {"freeze": True, "mode": "max-autotune", "dynamic": None, "min_block_size": 3}
    assert check_options("b", options, ALLOWED) == options
    assert check_options("b", {}, ALLOWED) == {}
    assert check_options("b", {"dynamic": False, "ratio": 0.5}, ALLOWED)


def test_check_options_rejects_unknown_keys_naming_them_and_the_allowed_ones():
    with pytest.raises(ValueError) as error:
        check_options("b", {"frezee": True}, ALLOWED)
    message = str(error.value)
    assert "backend=b" in message and "frezee" in message
    for key in ALLOWED:
        assert key in message


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("freeze", 1, "bool"),
        ("freeze", "true", "bool"),
        ("mode", "fast", "'default', 'max-autotune'"),
        ("min_block_size", "5", "int"),
        ("min_block_size", 2.0, "int"),
        ("dynamic", "null", "bool, None"),
    ],
)
def test_check_options_rejects_wrong_values_naming_field_and_choices(key, value, shown):
    with pytest.raises(ValueError) as error:
        check_options("b", {key: value}, ALLOWED)
    message = str(error.value)
    assert f"options.{key}={value!r}" in message
    assert shown in message


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_an_int(value):
    with pytest.raises(ValueError, match="min_block_size"):
        check_options("b", {"min_block_size": value}, ALLOWED)


def test_a_value_must_have_the_choices_type():
    with pytest.raises(ValueError):
        check_options("b", {"level": True}, {"level": (1, 2)})  # True == 1, but not an int 1
    assert check_options("b", {"level": 1}, {"level": (1, 2)}) == {"level": 1}


# ---- the backends themselves, on a small module ----------------------------------------------


class TinyDetector(nn.Module):
    """Shaped like a detector for the backends: a `backbone` and flat tensor outputs."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, *images):
        flat = []
        for image in images:
            score = self.head(self.backbone(image[None])).flatten()[:3]
            boxes = torch.stack([score, score, score + 1, score + 1], dim=1)
            flat += [boxes, score.sigmoid(), torch.zeros(3, dtype=torch.int64)]
        return tuple(flat)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyDetector().eval()
    example = (torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    exported = Exported(
        module=model,
        model=model,
        method="trace",
        example=example,
        make_torchscript=lambda: torch.jit.trace(model, example, check_trace=False),
        layout=Layout("torchvision", ("boxes", "scores", "labels")),
    )
    return exported, InputSet({"opt": example})


def test_eager_returns_the_module_and_takes_no_options(tiny):
    exported, inputs = tiny
    assert backends.get("eager")(exported, inputs, FP32, {}) is exported.module
    with pytest.raises(ValueError, match="backend=eager"):
        backends.validate_options("eager", {"freeze": True})


@pytest.mark.parametrize("freeze", [False, True])
def test_torchscript_gives_the_same_outputs(tiny, freeze):
    exported, inputs = tiny
    fn = backends.get("torchscript")(exported, inputs, FP32, {"freeze": freeze})
    assert isinstance(fn, torch.jit.ScriptModule)
    with torch.no_grad():
        expected = exported.module(*inputs.images["opt"])
        got = fn(*inputs.images["opt"])
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    decoded = exported.decode(got, batch=2)
    assert len(decoded) == 2 and len(decoded[0]) == 3


def test_torchscript_declares_its_options():
    assert backends.validate_options("torchscript", {"freeze": True}) == {"freeze": True}
    with pytest.raises(ValueError, match="options.freeze=1"):
        backends.validate_options("torchscript", {"freeze": 1})


@pytest.mark.parametrize("name", ["cudagraphs", "compiled_graphs"])
def test_cuda_graph_backends_are_unsupported_on_the_cpu(tiny, name):
    if name not in backends.names():
        pytest.skip(f"backend {name} is not registered in this version")
    exported, inputs = tiny
    with pytest.raises(Unsupported, match="cuda"):
        backends.get(name)(exported, inputs, FP32, {})


@pytest.mark.parametrize(
    "name, module, hint",
    [("tensorrt", "torch_tensorrt", "pip install"), ("torch_blade", "torch_blade", "BladeDISC")],
)
def test_backends_of_absent_packages_are_unsupported_saying_how_to_get_them(
    tiny, name, module, hint
):
    if name not in backends.names():
        pytest.skip(f"backend {name} is not registered in this version")
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    exported, inputs = tiny
    with pytest.raises(Unsupported) as reason:
        backends.get(name)(exported, inputs, FP32, {})
    assert hint in str(reason.value)
    assert module in str(reason.value)


@pytest.mark.parametrize(
    "name, module, hint",
    [("tensorrt", "torch_tensorrt", "pip install"), ("torch_blade", "torch_blade", "BladeDISC")],
)
def test_missing_says_why_without_importing(name, module, hint):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    reason = backends.missing(name)
    assert reason is not None and hint in reason and f"module {module} not found" in reason


@pytest.mark.parametrize("name", ["eager", "torchscript", "inductor", "cudagraphs"])
def test_missing_is_none_for_backends_of_torch_alone(name):
    assert backends.missing(name) is None


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_refuses_an_unknown_option(name):
    with pytest.raises(ValueError, match=f"backend={name}: unknown option"):
        backends.validate_options(name, {"no_such_option": 1})


@pytest.mark.parametrize("path", option_files("backend"), ids=lambda p: p.stem)
def test_every_backend_file_sets_options_its_backend_declares(path):
    options = yaml.safe_load(path.read_text()).get("options") or {}
    assert backends.validate_options(path.stem, options) == options


def test_validate_options_of_an_unknown_backend():
    with pytest.raises(KeyError, match="nope"):
        backends.validate_options("nope", {})


def test_static_parts_of_a_detector(tiny):
    parts = pytest.importorskip("runner.backends._parts")
    exported, _ = tiny
    model = exported.model
    heads = families.get(exported.family).STATIC_HEADS
    assert [(p, n) for p, n in parts.static_parts(model, "backbone")] == [(model, "backbone")]
    both = parts.static_parts(model, "backbone+heads", heads)
    assert [(p, n) for p, n in both] == [(model, "backbone"), (model, "head")]
    with pytest.raises(Unsupported):
        parts.static_parts(nn.Linear(2, 2), "backbone")


@pytest.mark.slow
def test_inductor_compiles_the_backbone_and_keeps_the_answers(tiny):
    if "inductor" not in backends.names():
        pytest.skip("backend inductor is not registered in this version")
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("Inductor on the CPU needs a C++ compiler (g++) and none is on PATH")
    exported, inputs = tiny
    images = inputs.images["opt"]
    with torch.no_grad():
        expected = exported.module(*images)
    fn = backends.get("inductor")(exported, inputs, FP32, {"scope": "backbone"})
    assert type(exported.model.backbone).__name__ == "OptimizedModule"
    assert isinstance(exported.model.head, nn.Conv2d)  # scope=backbone leaves the heads
    with torch.no_grad():
        got = fn(*images)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_backend_names_the_environment_its_measuring_process_needs(monkeypatch):
    """aot_package's children start without Inductor's compile-worker pool (a loaded package
    crashed beside it on torch 2.11); the parent adds the variable to that child only."""
    from runner.backends.aot_package import build

    assert backends.environment("aot_package") == build.LOADER_ENVIRONMENT
    assert backends.environment("eager") == {}
    backends.environment("aot_package")["X"] = "1"  # a copy: the registry is not changed
    assert "X" not in backends.environment("aot_package")


def test_a_package_build_runs_without_what_only_a_loading_process_sets(monkeypatch):
    """The measuring child loads with LOADER_ENVIRONMENT (no compile pool, no build checks in
    the CPU ISA probe), but the worker it starts to compile a package gets neither: a build
    needs both. D2BENCH_COMPILE_THREADS sizes the worker's pool."""
    from runner.backends.aot_package import build

    for name, value in build.LOADER_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("D2BENCH_COMPILE_THREADS", raising=False)
    env = build.worker_environment()
    assert not set(build.LOADER_ENVIRONMENT) & set(env)
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    monkeypatch.setenv("D2BENCH_COMPILE_THREADS", "3")
    assert build.worker_environment()["TORCHINDUCTOR_COMPILE_THREADS"] == "3"
    assert "TORCHINDUCTOR_VEC_ISA_OK" not in build.worker_environment()
