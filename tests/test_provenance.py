"""Provenance, with real git and real files: the run fingerprint follows the content of the code
(two edits of one file, a new untracked module), and a row's git_sha names the commit the code
is, with what differs, also in a copy of the tree without `.git` or with a stale one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner import provenance
from runner.run.record import read_rows
from tests.helpers import REPO, SMALL_CPU_RUN, clean_environment

BACKEND = "runner/backends/eager.py"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def copy_code(to: Path) -> Path:
    """The code that runs (and nothing else), copied without caches."""
    to.mkdir()
    for name in provenance.CODE_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, to / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, to / name)
    return to


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository holding a copy of the code, committed."""
    root = copy_code(tmp_path / "checkout")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "code")
    return root


def test_a_clean_checkout_is_its_commit(checkout):
    assert provenance.git_sha(checkout) == git(checkout, "rev-parse", "HEAD")


def test_two_edits_of_a_tracked_file_are_two_fingerprints(checkout):
    clean = provenance.code_digest(checkout)
    path = checkout / BACKEND
    original = path.read_text()
    path.write_text(original + "\nSLOWER = 1\n")
    first = provenance.code_digest(checkout)
    first_sha = provenance.git_sha(checkout)
    path.write_text(original + "\nSLOWER = 2\n")
    second = provenance.code_digest(checkout)
    assert len({clean, first, second}) == 3
    head = git(checkout, "rev-parse", "HEAD")
    assert first_sha.startswith(f"{head}-dirty (code {first}: M {BACKEND}")
    assert provenance.git_sha(checkout) == f"{head}-dirty (code {second}: M {BACKEND})"


def test_an_untracked_module_changes_the_fingerprint_and_is_named(checkout):
    clean = provenance.code_digest(checkout)
    (checkout / "runner/backends/new_backend.py").write_text("import time\n")
    assert provenance.code_digest(checkout) != clean
    assert "A runner/backends/new_backend.py" in provenance.git_sha(checkout)


def test_caches_and_hidden_files_are_not_code(checkout):
    clean = provenance.code_digest(checkout)
    (checkout / "runner/__pycache__").mkdir(exist_ok=True)
    (checkout / "runner/__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    (checkout / "conf/.lock").write_text("")
    assert provenance.code_digest(checkout) == clean
    assert provenance.git_sha(checkout) == git(checkout, "rev-parse", "HEAD")


def test_a_copy_without_git_knows_its_commit_from_the_stamp(checkout, tmp_path):
    head = git(checkout, "rev-parse", "HEAD")
    provenance.stamp(checkout)
    copy = tmp_path / "travelled"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git"))
    assert provenance.git_sha(copy) == head
    (copy / BACKEND).write_text("changed on the far side\n")
    assert provenance.git_sha(copy).startswith(f"{head}-dirty (code ")
    assert provenance.git_sha(copy).endswith(f": M {BACKEND})")
    (copy / provenance.STAMP).unlink()
    assert provenance.git_sha(copy).startswith("unknown (code ")


def test_a_copy_with_a_stale_git_is_the_stamped_commit(checkout, tmp_path):
    old = git(checkout, "rev-parse", "HEAD")
    (checkout / BACKEND).write_text((checkout / BACKEND).read_text() + "\n# newer\n")
    git(checkout, "commit", "-q", "-am", "newer")
    new = git(checkout, "rev-parse", "HEAD")
    provenance.stamp(checkout)
    git(checkout, "reset", "-q", "--soft", old)  # .git now says `old`, the files are `new`
    assert provenance.git_sha(checkout) == new
    (checkout / provenance.STAMP).unlink()  # without the stamp: honest about the difference
    assert provenance.git_sha(checkout).startswith(f"{old}-dirty (code ")
    assert f"M {BACKEND}" in provenance.git_sha(checkout)


def test_a_git_repository_above_the_copy_is_not_its_git(checkout, tmp_path):
    """A copy placed inside some other repository must not take that repository's HEAD."""
    nested = copy_code(checkout / "nested")
    assert provenance.git_sha(nested).startswith("unknown (code ")


@pytest.mark.slow
def test_a_run_in_a_copy_without_git_records_the_commit_and_resumes_only_unchanged_code(
    checkout, tmp_path
):
    head = git(checkout, "rev-parse", "HEAD")
    provenance.stamp(checkout)
    copy = tmp_path / "travelled"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git"))
    env = {**clean_environment(), "PYTHONPATH": str(copy)}
    folder = tmp_path / "run"

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runner", *SMALL_CPU_RUN, f"hydra.run.dir={folder}"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    run()
    (row,) = read_rows(folder / "result.csv")
    assert row.git_sha == head
    assert "run: kept" in run()  # same code, same config: kept
    (copy / "runner/backends/new_backend.py").write_text("# a new, untracked module\n")
    assert "run: kept" not in run()  # other code: measured again
    (again,) = read_rows(folder / "result.csv")
    assert again.fingerprint != row.fingerprint
    assert again.git_sha.startswith(f"{head}-dirty (code ")
    assert again.git_sha.endswith(": A runner/backends/new_backend.py)")
