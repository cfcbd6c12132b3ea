"""The README and docs/ say what the code does: the Backends table of docs/backends.md lists
every backend as a table row, the Configuration reference of docs/configuration.md names every
option file of every group, every `python -m runner` command of the README's Usage and of any
page's shell blocks passes the command-line check (including the `+model.arch_options...` form
a new user needs and reaches detectron2 as a dotted key), the docs index lists every page, and
every link to a file of the checkout leads to one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from runner.config import check_command_line, to_config
from runner.families.detectron2 import flat_options
from tests.helpers import REPO, option_files

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def section(title: str, text: str = README, level: str = "##") -> str:
    """The text under the heading `title` at `level`, up to the next heading of that level."""
    return text.split(f"\n{level} {title}\n", 1)[1].split(f"\n{level} ", 1)[0]


def page(name: str) -> str:
    return (DOCS / name).read_text()


def pages() -> list[Path]:
    """Every Markdown page of the README and docs/."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_backends_table_has_a_row_for_every_backend():
    text = page("backends.md")
    table = text.split("| backend | what it does |", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert all(line.startswith("| ") for line in table), table
    listed = {re.match(r"\| `([a-z_]+)` \|", line).group(1) for line in table[1:]}
    assert listed == {path.stem for path in option_files("backend")}
    after = text.split("| backend | what it does |", 1)[1].split("\n\n", 1)[1]
    backends = {path.stem for path in option_files("backend")}
    stray = [line for line in after.splitlines() if re.match(r"\| `([a-z_]+)` \|", line)]
    stray = [line for line in stray if re.match(r"\| `([a-z_]+)`", line).group(1) in backends]
    assert not stray, f"rows outside the table (rendered as text): {stray}"


def test_the_static_graph_options_table_names_every_option_of_its_file():
    import yaml

    text = page("backends.md").split("## static_graph: the whole call as one graph", 1)[1]
    table = text.split("| option | default | |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    listed = {re.match(r"\| `([a-z_]+)` \|", line).group(1): line.split(" | ")[1] for line in table}
    options = yaml.safe_load((REPO / "conf" / "backend" / "static_graph.yaml").read_text())
    written = {key: str(value).lower() for key, value in options["options"].items()}
    assert listed == written


def runner_commands(block: str) -> list[list[str]]:
    """The arguments of each `python -m runner ...` line of a shell block (comments dropped,
    backslash continuations joined)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("python -m runner "):
            commands.append(shlex.split(line)[3:])
    return commands


def usage_commands() -> list[list[str]]:
    return runner_commands(section("Usage").split("```bash", 1)[1].split("```", 1)[0])


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def page_commands() -> list[tuple[str, list[str]]]:
    """(page, arguments) of every `python -m runner` run command in the pages' shell blocks."""
    return [
        (path.name, arguments)
        for path in pages()
        for block in shell_blocks(path.read_text())
        for arguments in runner_commands(block)
    ]


@pytest.mark.parametrize("arguments", usage_commands(), ids=" ".join)
def test_every_usage_command_passes_the_command_line_check(arguments):
    check_command_line(arguments)


@pytest.mark.parametrize(
    "arguments",
    [a for _, a in page_commands()],
    ids=[f"{p}: {' '.join(a)}" for p, a in page_commands()],
)
def test_every_run_command_of_the_docs_passes_the_command_line_check(arguments):
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

    table = page("configuration.md").split("| group | options | |", 1)[1]
    rows = {}
    for line in table.split("\n\n", 1)[0].splitlines()[2:]:
        group, options = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows[group.strip("`")] = set(re.findall(r"`([A-Za-z0-9_]+)`", options))
    for group in config_groups():
        assert rows.get(group) == {path.stem for path in option_files(group)}, group


def test_the_docs_index_lists_every_page_once():
    index = page("README.md")
    linked = re.findall(r"^- \[[^]]+\]\(([^)#]+)\)", index, flags=re.MULTILINE)
    assert sorted(linked) == sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")


def links(path: Path) -> list[str]:
    """The targets of the page's Markdown links and images that name a file of the checkout
    (no scheme, no bare anchor), without their anchor."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    found = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#", 1)[0] for t in found if "://" not in t and not t.startswith("#")]


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_to_a_file_of_the_checkout_leads_to_one(path):
    missing = [target for target in links(path) if not (path.parent / target).exists()]
    assert not missing, missing
