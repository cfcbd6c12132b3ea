"""`python -m runner --help` shows the groups and every key a user sets, each with the value the
command line gives it and what it means (its comment in conf/config.yaml), and none of the keys
that Hydra, the runner or the sweeper set for the run (members, command, output_dir, ...)."""

from __future__ import annotations

import pytest

from runner.config import job_keys
from runner.help_text import key_meanings, set_for_the_user
from tests.helpers import CONF, option_files, run_runner

PLUMBING = ("members", "sweep_jobs", "sweep_started", "command", "output_dir", "backend_file")


def key_lines(output: str) -> dict[str, str]:
    """key -> the rest of its line, from the help's Keys section (continuation lines joined)."""
    section = output.split("== Keys", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
    found: dict[str, str] = {}
    last = None
    for line in section.splitlines():
        if line.startswith(" ") and last is not None:
            found[last] += " " + line.strip()
            continue
        setting, _, meaning = line.partition("  ")
        last = setting.split("=", 1)[0]
        found[last] = setting.split("=", 1)[1] + " | " + meaning.strip()
    return found


@pytest.fixture(scope="module")
def help_output() -> str:
    done = run_runner("model=tv_maskrcnn", "batch=2", "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_describes_every_key_it_shows_with_the_commands_value(help_output):
    keys = key_lines(help_output)
    assert {"batch", "device", "redo", "inputs.height", "bench.warmup", "bench.isolate"} <= set(
        keys
    )
    for key, text in keys.items():
        value, meaning = text.split(" | ", 1)
        assert meaning.strip(), f"{key} is shown without a meaning"
    assert keys["batch"].startswith("2 | images per call")
    assert keys["postprocess"].startswith("true |")  # the model's (tv_maskrcnn), resolved
    assert "measured again" in keys["redo"]  # the comment's continuation line too


def test_help_shows_no_plumbing_key(help_output):
    keys = key_lines(help_output)
    assert not set(PLUMBING) & set(keys), set(PLUMBING) & set(keys)
    for key in PLUMBING:
        assert f"{key}=" not in help_output and f"\n{key}:" not in help_output, key


def test_help_lists_each_groups_options_and_hydras_flags(help_output):
    for group in ("model", "precision", "backend", "shapes", "sweep"):
        line = next(x for x in help_output.splitlines() if x.startswith(f"{group}: "))
        assert set(line.split(": ", 1)[1].split(", ")) == {p.stem for p in option_files(group)}
    assert "--multirun" in help_output and "--cfg" in help_output
    assert "$APP_CONFIG_GROUPS" not in help_output and "$FLAGS_HELP" not in help_output


def test_the_hidden_keys_are_the_jobs_that_the_user_does_not_set():
    hidden = set_for_the_user()
    assert hidden == set(PLUMBING)
    assert hidden - {"backend_file"} == set(job_keys()) - {"redo"}


def test_the_meanings_come_from_the_comments_with_their_continuations():
    text = (
        "top: 1        # one\n"
        "box:\n"
        "  inner: 2    # two, which\n"
        "              # goes on\n"
        "  # a comment of its own\n"
        "  bare: 3\n"
        "after: 4\n"
        "              # not a continuation: after has no comment\n"
    )
    assert key_meanings(text) == {"top": "one", "box.inner": "two, which goes on"}
    meanings = key_meanings((CONF / "config.yaml").read_text())
    assert meanings["bench.gc"].endswith("(and off during the block)")
    assert meanings["batch"] == "images per call"
