"""The README says what the code does: its Backends table lists every backend as a table row,
and every `python -m runner` command of its Usage passes the command-line check (including the
`+model.arch_options...` form a new user needs and reaches detectron2 as a dotted key)."""

from __future__ import annotations

import re
import shlex

import pytest

from runner.config import check_command_line, to_config
from runner.families.detectron2 import flat_options
from tests.helpers import REPO, option_files

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_backends_table_has_a_row_for_every_backend():
    text = section("Backends")
    table = text.split("| backend | what it does |", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert all(line.startswith("| ") for line in table), table
    listed = {re.match(r"\| `([a-z_]+)` \|", line).group(1) for line in table[1:]}
    assert listed == {path.stem for path in option_files("backend")}
    after = text.split("| backend | what it does |", 1)[1].split("\n\n", 1)[1]
    backends = {path.stem for path in option_files("backend")}
    stray = [line for line in after.splitlines() if re.match(r"\| `([a-z_]+)` \|", line)]
    stray = [line for line in stray if re.match(r"\| `([a-z_]+)`", line).group(1) in backends]
    assert not stray, f"rows outside the table (rendered as text): {stray}"


def usage_commands() -> list[list[str]]:
    block = section("Usage").split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("python -m runner "):
            commands.append(shlex.split(line)[3:])
    return commands


@pytest.mark.parametrize("arguments", usage_commands(), ids=" ".join)
def test_every_usage_command_passes_the_command_line_check(arguments):
    check_command_line(arguments)


def test_the_readme_shows_arch_options_with_a_plus_and_it_reaches_detectron2(compose):
    (arguments,) = [a for a in usage_commands() if any("arch_options" in x for x in a)]
    (option,) = [a for a in arguments if "arch_options" in a]
    assert option.startswith("+model.arch_options.")
    config = to_config(compose(*arguments))
    key, value = option.split("=", 1)
    assert flat_options(config.model.arch_options) == {
        key.removeprefix("+model.arch_options."): int(value)
    }


def test_the_configuration_tables_groups_list_every_option_file():
    """Each config group's row of the Configuration reference names exactly the files of
    conf/<group>/ (a new sweep or model is a new file; the table must not fall behind)."""
    from tests.helpers import config_groups

    table = section("Configuration reference").split("| group | options | |", 1)[1]
    rows = {}
    for line in table.split("\n\n", 1)[0].splitlines()[2:]:
        group, options = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows[group.strip("`")] = set(re.findall(r"`([A-Za-z0-9_]+)`", options))
    for group in config_groups():
        assert rows.get(group) == {path.stem for path in option_files(group)}, group
