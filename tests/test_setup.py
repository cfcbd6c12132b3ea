"""What a new user meets before the first run: the tests' own subprocess environment, `make
setup` choosing the torch build, and the library warnings a run prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, SMALL_CPU_RUN, clean_environment, run_module, run_runner


def test_subprocesses_keep_packages_that_come_in_through_pythonpath(tmp_path, monkeypatch):
    """As on the GPU machine's wheel install: a package importable only through PYTHONPATH."""
    site = tmp_path / "site"
    (site / "only_on_pythonpath").mkdir(parents=True)
    (site / "only_on_pythonpath" / "__main__.py").write_text("print('found')\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    done = run_module("only_on_pythonpath", timeout=60)  # python -m only_on_pythonpath
    assert done.returncode == 0 and done.stdout == "found\n", done.stderr
    paths = clean_environment()["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(REPO), str(site)]


def make_setup_commands(tmp_path: Path, *make_args: str) -> str:
    """`make -n setup` (what it would run, nothing installed)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", *make_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def torch_line(commands: str) -> str:
    (line,) = [line for line in commands.splitlines() if "torch==" in line]
    return line


def test_make_setup_installs_the_pinned_torch_from_the_configured_index(tmp_path):
    """CI and this project's machines reach PyPI only: no other index by default."""
    line = torch_line(make_setup_commands(tmp_path))
    assert "torch==2.14.1 torchvision==0.29.1" in line and "--index-url" not in line


def test_make_setup_takes_pytorchs_cpu_index_when_asked(tmp_path):
    cpu = "--index-url https://download.pytorch.org/whl/cpu"
    assert cpu in torch_line(make_setup_commands(tmp_path, f"TORCH_INDEX={cpu}"))


@pytest.mark.slow
def test_a_torchscript_run_prints_no_library_warnings_a_user_cannot_act_on(tmp_path):
    done = run_runner(
        *SMALL_CPU_RUN, "backend=torchscript", f"hydra.run.dir={tmp_path / 'run'}", timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in ("TracerWarning", "is deprecated", "warnings.warn(", "meshgrid"):
        assert noise not in output, output


@pytest.mark.slow
@pytest.mark.detectron2
def test_a_detectron2_run_prints_no_fx_tracing_notice(tmp_path):
    """torch.fx logs a notice for detectron2's authors whenever its poolers ask is_fx_tracing():
    every detectron2 child printed it."""
    done = run_runner(
        "model=mask_rcnn_fpn",
        "device=cpu",
        "bench.warmup=0",
        "bench.iters=1",
        "bench.repeats=1",
        "bench.rewarm=0",
        "inputs.height=128",
        "inputs.width=160",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "parity: {" in output, output  # the model ran its ROI pooling (where torch.fx spoke)
    for noise in ("is_fx_tracing", "TracerWarning", "is deprecated", "warnings.warn("):
        assert noise not in output, output


def test_warnings_a_user_can_act_on_are_still_shown():
    script = (
        "import warnings\n"
        "from runner.library_noise import quiet_library_warnings\n"
        "quiet_library_warnings()\n"
        "warnings.warn('a warning about the run itself')\n"
        "import torch\n"
        "warnings.warn('`torch.jit.trace` is deprecated', FutureWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "a warning about the run itself" in done.stderr
    assert "torch.jit.trace" not in done.stderr


def test_setuptools_reads_pyproject_without_a_warning():
    """`make setup` installs the project with setuptools (77 or newer, as pyproject.toml's build
    requirements say): reading its metadata must not warn (a `license = {text = ...}` table
    made it warn three times per install)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribution = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert distribution.metadata.license_expression == "Apache-2.0"
