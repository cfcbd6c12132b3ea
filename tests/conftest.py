"""Fixtures: configs composed from conf/ as `python -m runner` would (without Hydra's runtime, so
the Job's output_dir and command are given explicitly), and the markers' skips.

`detectron2` and `gpu` tests skip with a stated reason where their dependency is missing; the
skip is decided here, from the markers, so a test module only has to carry the marker
(tests.helpers.skip_without_detectron2 / skip_without_cuda do the same from inside a test).
`slurm` tests run only when asked with --slurm (`make test-all`, what CI runs): they install
SLURM's packages with apt and start its daemons. The `zoo` test, the whole model-zoo walk
(about two hours on a CPU), runs only when asked with --zoo.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from omegaconf import DictConfig

from runner.config import Config, Job, split, to_config
from tests.helpers import (
    CUDA_MISSING,
    DETECTRON2_MISSING,
    compose_config,
    have_cuda,
    have_detectron2,
)

SLURM_NOT_ASKED = (
    "the SLURM tier installs SLURM's packages with apt and starts its daemons: it runs only "
    "when asked, with `make test-all` (pytest --slurm)"
)
ZOO_NOT_ASKED = (
    "the whole model-zoo walk takes about two hours on a CPU: it runs only when asked, with "
    "pytest --zoo"
)
# tiers that run only when asked: marker -> (option, help, the skip's reason)
ASKED = {
    "slurm": (
        "--slurm",
        "run the `slurm` tier too: as root it installs slurmctld, slurmd, slurm-client and "
        "munge with apt and starts them (scripts/slurm/cluster.sh); make test-all",
        SLURM_NOT_ASKED,
    ),
    "zoo": ("--zoo", "run the whole model-zoo walk too (tests/test_zoo.py)", ZOO_NOT_ASKED),
}


def pytest_addoption(parser):
    for option, help_text, _ in ASKED.values():
        parser.addoption(option, action="store_true", help=help_text)


def pytest_collection_modifyitems(config, items):
    """Tests marked `detectron2` or `gpu` skip, with the reason, where that is missing (the
    check runs only when such a test is collected: importing detectron2 takes seconds); tests
    marked `slurm` or `zoo` skip unless --slurm or --zoo asks for them (ASKED)."""
    for item in items:
        for marker, (option, _, reason) in ASKED.items():
            if item.get_closest_marker(marker) and not config.getoption(option):
                item.add_marker(pytest.mark.skip(reason=reason))
        if item.get_closest_marker("detectron2") and not have_detectron2():
            item.add_marker(pytest.mark.skip(reason=DETECTRON2_MISSING))
        if item.get_closest_marker("gpu") and not have_cuda():
            item.add_marker(pytest.mark.skip(reason=CUDA_MISSING))


@pytest.fixture
def compose(tmp_path) -> Callable[..., DictConfig]:
    """compose(*overrides) -> DictConfig; output_dir defaults to a fresh folder under tmp_path
    and command to 'pytest' (compose() has no Hydra runtime to fill them)."""

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        defaults = []
        if "output_dir" not in given:
            defaults.append(f"output_dir={tmp_path / 'run'}")
        if "command" not in given:
            defaults.append("command=pytest")
        return compose_config(*defaults, *overrides, return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def make_config(compose) -> Callable[..., Config]:
    """make_config(*overrides) -> validated Config (runner.config.to_config of compose(...))."""

    def _make(*overrides: str) -> Config:
        return to_config(compose(*overrides))

    return _make


@pytest.fixture
def make_run(compose) -> Callable[..., tuple[Config, Job]]:
    """make_run(*overrides) -> (Config, Job) (runner.config.split of compose(...)): what
    runner.run.bench.run takes."""

    def _make(*overrides: str) -> tuple[Config, Job]:
        return split(compose(*overrides))

    return _make


@pytest.fixture
def restore_logging():
    """Put the root logger back as it was: inline runs reconfigure logging for the child."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
