"""Imports run one way: runner.run uses the model families and the backends, and neither they nor
what they share (runner.config, runner.precision, runner.exported, ...) imports runner.run back.
Read from the source with ast, so that an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

RUNNER = REPO / "runner"
# the modules above the run, which may use it: the entry points (python -m runner, and
# python -m runner.package, which builds a run's model to package it), the input checks
# (preflight asks the run's checkpoint loader) and the report (it reads the run's rows)
ABOVE_THE_RUN = ("__main__.py", "package.py", "preflight.py", "report")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Every module `path` imports, at the top or inside a function ("from runner import run"
    counts as runner.run; a relative import is resolved against the package of `path`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path, root).split(".")
                if path.stem != "__init__":
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_the_run(path: Path, root: Path = REPO) -> list[str]:
    names = imported_modules(path, root)
    return sorted(name for name in names if name == "runner.run" or name.startswith("runner.run."))


def below_the_run() -> list[Path]:
    """runner's modules outside runner/run and outside ABOVE_THE_RUN."""
    paths = []
    for path in sorted(RUNNER.rglob("*.py")):
        top = path.relative_to(RUNNER).parts[0]
        if top != "run" and top not in ABOVE_THE_RUN:
            paths.append(path)
    return paths


def test_the_families_the_backends_and_what_they_share_are_below_the_run():
    checked = {module_name(path) for path in below_the_run()}
    # the parts the issue named: every family and backend, and the shared modules
    assert {"runner.families.detectron2", "runner.families.torchvision"} <= checked
    assert {"runner.backends._parts", "runner.backends.tensorrt"} <= checked
    assert {"runner.backends.static_graph.detector", "runner.config"} <= checked
    assert {"runner.precision", "runner.exported"} <= checked


@pytest.mark.parametrize("path", below_the_run(), ids=module_name)
def test_no_module_below_the_run_imports_it(path):
    assert imports_the_run(path) == [], f"{module_name(path)} imports {imports_the_run(path)}"


def test_the_run_uses_the_families_and_the_backends():
    used = set().union(*(imported_modules(path) for path in (RUNNER / "run").rglob("*.py")))
    assert any(name.startswith("runner.families") or name == "runner.families" for name in used)
    assert any(name.startswith("runner.backends") for name in used)


@pytest.mark.parametrize(
    "source",
    [
        "from runner.run.export import wrap",
        "import runner.run.precision",
        "from runner import run",
        "def f():\n    from runner.run import models\n",
        "from ..run import models",
        "from .. import run",
    ],
)
def test_the_check_sees_every_form_of_import(tmp_path, source):
    module = tmp_path / "runner" / "families" / "module.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    assert imports_the_run(module, tmp_path), source
    module.write_text(source.replace("run", "config"))
    assert not imports_the_run(module, tmp_path), source


def test_nothing_uses_hydras_internals():
    """The sweeper and the command-line check use Hydra's public surface (plugins, compose)."""
    for path in [*RUNNER.rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]:
        internal = sorted(name for name in imported_modules(path) if "hydra._internal" in name)
        assert internal == [], f"{module_name(path)} imports {internal}"
