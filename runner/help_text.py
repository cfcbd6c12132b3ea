"""The text of `python -m runner --help`: takes the composed config (Hydra renders its help
template, conf/config.yaml's `hydra.help.template`, through the `d2bench_help` resolver) and
returns the usage, the groups with their options, and every key a user sets with the value
this command line gives it and what it means, read from the key's comment in conf/config.yaml.
Keys that Hydra, the runner or the sweeper set (runner.config: SET_FOR_THE_USER) are not shown.

The text is a string.Template for Hydra: it keeps $APP_CONFIG_GROUPS and $FLAGS_HELP for Hydra
to fill, and doubles every other `$`.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config import CONF_DIR, SET_FOR_THE_USER, Composed, value_text

WIDTH = 100
KEY_LINE = re.compile(
    r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*?)\s*(?:#(?P<note>.*))?$"
)
COMMENT_LINE = re.compile(r"^ *#(?P<note>.*)$")


def key_meanings(text: str) -> dict[str, str]:
    """Dotted key -> its comment in a YAML file written as conf/config.yaml is: `key: value  #
    meaning`, continued on comment lines whose `#` stands in the same column."""
    meanings: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    last, column = None, -1  # the key whose comment a comment line may continue
    for line in text.splitlines():
        comment = COMMENT_LINE.match(line)
        if comment:
            if last is not None and line.index("#") == column:
                meanings[last] += " " + comment.group("note").strip()
            else:
                last = None
            continue
        found = KEY_LINE.match(line)
        last = None
        if found is None:
            continue
        indent = len(found.group("indent"))
        while parents and parents[-1][0] >= indent:
            parents.pop()
        name = ".".join([*(key for _, key in parents), found.group("key")])
        if not found.group("value").strip():
            parents.append((indent, found.group("key")))  # a mapping opens
        if found.group("note") is not None:
            meanings[name] = found.group("note").strip()
            last, column = name, line.index("#")
    return meanings


def set_for_the_user(schema: type = Composed, prefix: str = "") -> set[str]:
    """Dotted keys of the schema that carry SET_FOR_THE_USER (Hydra, the runner or the sweeper
    sets them)."""
    hints = typing.get_type_hints(schema)
    hidden = set()
    for field in dataclasses.fields(schema):
        if SET_FOR_THE_USER in field.metadata:
            hidden.add(f"{prefix}{field.name}")
        elif dataclasses.is_dataclass(hints[field.name]):
            hidden |= set_for_the_user(hints[field.name], f"{prefix}{field.name}.")
    return hidden


def shown_keys(root: DictConfig) -> list[str]:
    """The keys --help lists: those of the composed config that are no group's (the groups'
    own keys live in their option files), not hidden, in the config's order."""
    groups = {choice.split("@")[0] for choice in root.hydra.runtime.choices}
    hidden = set_for_the_user()
    keys = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            name = f"{prefix}{key}"
            if name in hidden or name == "hydra" or (not prefix and key in groups):
                continue
            if isinstance(node[key], DictConfig):
                walk(node[key], f"{name}.")
            else:
                keys.append(name)

    walk(root, "")
    return keys


def help_text(root: DictConfig, meanings_from: Path = CONF_DIR / "config.yaml") -> str:
    """The template Hydra fills for --help; see the module docstring. Keys in the order the
    file writes them."""
    meanings = key_meanings(meanings_from.read_text())
    order = {key: place for place, key in enumerate(meanings)}
    keys = sorted(shown_keys(root), key=lambda key: order.get(key, len(order)))
    settings = [
        (f"{key}={value_text(OmegaConf.select(root, key))}", meanings.get(key, "")) for key in keys
    ]
    column = max(len(setting) for setting, _ in settings) + 2
    lines = []
    for setting, meaning in settings:
        wrapped = textwrap.wrap(meaning, WIDTH - column) or [""]
        lines.append(f"{setting.ljust(column)}{wrapped[0]}".rstrip())
        lines += [" " * column + more for more in wrapped[1:]]
    described = "\n".join(lines).replace("$", "$$")
    return f"""python -m runner [group=option ...] [key=value ...]
One run: a model x precision x backend x shapes x batch, measured and recorded (result.csv).
--multirun with a list of values (backend=eager,torchscript) sweeps; sweep=seed runs a named one.

== Groups (group=option) ==
$APP_CONFIG_GROUPS
hydra/launcher=NAME: where a sweep's runs go (--hydra-help lists the launchers)

== Keys (key=value: the value this command line gives, and what it means) ==
{described}

Each group's option file sets keys of its own (model.score_thresh=0.3, backend.options.mode=...,
+model.arch_options.KEY=V): `--cfg job` prints them all, conf/<group>/<option>.yaml shows them.

== Flags ==
$FLAGS_HELP
"""
