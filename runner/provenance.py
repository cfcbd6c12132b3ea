"""Provenance: which code a run measured. Takes the repository folder; returns the code's
fingerprint (`code_digest`, part of every run's fingerprint) and the commit it is, with what
differs from that commit (`git_sha`, the row's column).

The code that runs is every file under CODE_PATHS, tracked by git or not (a new backend module
counts), byte for byte; caches (`__pycache__`, `*.pyc`) and hidden files (locks, editor swap
files) are not code. Each file is named by its git blob id, so the working tree can be compared
with a commit without git itself.

Which commit: the candidates are the checkout's git HEAD (when `.git` belongs to this folder) and
the stamp `.d2bench-provenance.json` (written by `python -m runner.provenance stamp` before a
copy of the tree travels, for example to a lent GPU machine without `.git`, or with a stale
one). The candidate whose files differ least from the tree is the commit; the files that differ
are listed: `<sha>` when the tree is that commit, `<sha>-dirty (code <digest>: M a.py, A b.py)`
otherwise (M modified, A added, D deleted), `unknown (code <digest>)` without either.
`D2BENCH_GIT_SHA` set by the caller names the commit outright.

    python -m runner.provenance          # what a row made now would record
    python -m runner.provenance stamp    # write the stamp for HEAD (ship it with the tree)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("runner", "conf", "hydra_plugins", "pyproject.toml")
STAMP = ".d2bench-provenance.json"
LISTED = 6  # changed files named in git_sha; the rest are counted


@dataclass
class Commit:
    sha: str
    files: dict[str, str]  # path -> git blob id, for the files under CODE_PATHS
    source: str  # "git" or "stamp"


def blob_id(data: bytes) -> str:
    """git's id of a file's content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_code(relative: Path) -> bool:
    """Whether a file at `relative` (to the repository) is code, not a cache or hidden file."""
    return relative.suffix not in (".pyc", ".pyo") and not any(
        part == "__pycache__" or part.startswith(".") for part in relative.parts
    )


def code_files(root: Path = ROOT) -> dict[str, str]:
    """path (relative, '/'-separated) -> blob id of every file of the code that runs."""
    files = {}
    for name in CODE_PATHS:
        top = root / name
        paths = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for path in paths:
            relative = path.relative_to(root)
            if _is_code(relative) and path.is_file():
                files[relative.as_posix()] = blob_id(path.read_bytes())
    return files


def digest(files: dict[str, str]) -> str:
    text = "".join(f"{path}\0{blob}\n" for path, blob in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_digest(root: Path = ROOT) -> str:
    """16 hex digits naming the content of the code that runs (not its commit): two edits of
    one file, or a new untracked module, give different digests."""
    return digest(code_files(root))


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(root: Path = ROOT, rev: str = "HEAD") -> Commit | None:
    """`rev` of the git repository whose top folder is `root` (a .git of a folder above the
    copy, or none, gives None) with its files under CODE_PATHS."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return None
    sha = (_git(root, "rev-parse", "--verify", f"{rev}^{{commit}}") or "").strip()
    listing = _git(root, "ls-tree", "-r", "--full-tree", sha, "--", *CODE_PATHS) if sha else None
    if listing is None:
        return None
    files = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        _mode, kind, blob = meta.split()
        if kind == "blob" and _is_code(Path(path)):
            files[path] = blob
    return Commit(sha, files, "git")


def stamped_commit(root: Path = ROOT) -> Commit | None:
    try:
        data = json.loads((root / STAMP).read_text())
        return Commit(str(data["commit"]), dict(data["files"]), "stamp")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def changes(reference: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs from `reference`, as 'M path', 'A path', 'D path', sorted by path."""
    found = [
        ("M" if path in reference else "A", path)
        for path, blob in current.items()
        if reference.get(path) != blob
    ]
    found += [("D", path) for path in reference if path not in current]
    return [f"{kind} {path}" for kind, path in sorted(found, key=lambda item: item[1])]


def git_sha(root: Path = ROOT) -> str:
    """The commit the code is, with what differs from it (see the module's docstring)."""
    if os.environ.get("D2BENCH_GIT_SHA"):
        return os.environ["D2BENCH_GIT_SHA"]
    current = code_files(root)
    candidates = [c for c in (git_commit(root), stamped_commit(root)) if c is not None]
    if not candidates:
        return f"unknown (code {digest(current)})"
    # fewest differences wins; on a tie git's HEAD (listed first) does
    commit = min(candidates, key=lambda c: len(changes(c.files, current)))
    differ = changes(commit.files, current)
    if not differ:
        return commit.sha
    listed = ", ".join(differ[:LISTED])
    more = f", {len(differ) - LISTED} more" if len(differ) > LISTED else ""
    return f"{commit.sha}-dirty (code {digest(current)}: {listed}{more})"


def stamp(root: Path = ROOT) -> Path:
    """Write STAMP for git's HEAD into `root`: a copy of the tree then knows its commit."""
    commit = git_commit(root)
    if commit is None:
        raise RuntimeError(f"{root} is not the top of a git checkout: nothing to stamp")
    path = root / STAMP
    data = {"commit": commit.sha, "files": commit.files}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str]) -> int:
    if argv == ["stamp"]:
        try:
            path = stamp()
        except RuntimeError as error:
            sys.stderr.write(f"{error}\n")
            return 2
        print(f"{path}: {git_sha()}")
        return 0
    if argv:
        sys.stderr.write("usage: python -m runner.provenance [stamp]\n")
        return 2
    print(git_sha())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
