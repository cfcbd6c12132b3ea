"""The test tiers and what each does to the machine: `make check` (the quick tier, no slow or
SLURM tests), `make test` (the README's full suite: nothing installed outside the project) and
`make test-all` (also the SLURM tier, which installs and starts SLURM's daemons: only when asked;
CI asks). Markers are strict: a misspelt marker is an error, not a test run in the wrong tier."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, clean_environment

README = (REPO / "README.md").read_text()


def make_commands(target: str) -> str:
    """What `make <target>` would run (nothing run, nothing installed)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", target, "VENV=.venv"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def pytest_line(target: str) -> str:
    (line,) = [x for x in make_commands(target).splitlines() if " -m pytest" in x]
    return line


def test_make_check_leaves_out_the_slow_and_the_slurm_tiers():
    line = pytest_line("check")
    assert '-m "not slow and not slurm"' in line and "--slurm" not in line


def test_make_test_runs_every_tier_but_the_one_that_installs_system_packages():
    line = pytest_line("test")
    assert " -m " not in line.split("pytest", 1)[1] and "--slurm" not in line


def test_make_test_all_asks_for_the_slurm_tier_and_ci_runs_it():
    assert "--slurm" in pytest_line("test-all")
    commands = [
        x.strip()
        for x in (REPO / ".ci" / "run").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    assert commands[-1] == "make test-all"


def test_the_readme_names_each_command_and_what_it_does_to_the_machine():
    quickstart = README.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    tests = README.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    for command in ("make check", "make test", "make test-all", "make demo"):
        assert f"{command} " in quickstart, command
    assert "apt" in quickstart and "apt" in tests  # what test-all installs, said up front
    for command in ("make check", "make test", "make test-all"):
        assert command in tests, command


def test_without_being_asked_the_slurm_tier_skips_saying_how_to_ask():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_slurm.py",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" not in done.stdout and " skipped" in done.stdout, done.stdout
    assert "make test-all" in done.stdout, done.stdout


def test_a_misspelt_marker_is_an_error(tmp_path):
    test = tmp_path / "test_marked.py"
    test.write_text("import pytest\n\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-q", str(test)],
        cwd=REPO,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout
    assert "'slwo' not found in `markers` configuration option" in done.stdout + done.stderr
