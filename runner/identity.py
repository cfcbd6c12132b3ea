"""A run's identity, in one place: which Row columns say what a run measured, so that two rows
that differ in any of them are two runs that the report never merges; their values for a
Config; the line that names a run in the logs; and the fingerprint of what it measures.

Takes a Config (and for `recorded`, its Job); returns column values, a line, 12 hex digits.
Everything else reads the columns from here, when it runs: the member's rows (runner.run.member),
what an error row keeps (runner.run.steps), what the report merges and pairs rows by
(runner.report.identity). The fingerprint hashes the measured Config whole; where and why a run
is made (runner.config.Job: folder, command, redo, the sweep's session) is outside it, as it is
outside a sweep's folder names, by being no part of the Config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NamedTuple

from runner.config import Config, Job, options_text, value_text


class Column(NamedTuple):
    """One identity column of the Row, and its value for a Config (None: the run states it)."""

    name: str
    of_config: Callable[[Config], Any] | None


def arch_options_text(options: dict) -> str:
    return " ".join(f"{key}={value_text(options[key])}" for key in sorted(options))


def thresholds_text(cfg: Config) -> str:
    m = cfg.model
    return f"score={m.score_thresh:g} nms={m.nms_thresh:g} detections={m.detections_per_image}"


def timing_options_text(cfg: Config) -> str:
    return f"gc={cfg.bench.gc} pin_cpus={value_text(cfg.bench.pin_cpus)}"


# What a run measured: rows that differ in any of these columns are never merged.
IDENTITY: tuple[Column, ...] = (
    Column("model", lambda cfg: cfg.model.name),
    Column("variant", lambda cfg: cfg.variant or ""),
    Column("export", lambda cfg: cfg.export),
    Column("batch", lambda cfg: cfg.batch),
    Column("postprocess", lambda cfg: cfg.postprocess),
    Column("precision", lambda cfg: cfg.precision.name),
    Column("backend", lambda cfg: cfg.backend.name),
    Column("backend_options", options_text),  # those that differ from the backend's file
    Column("shapes", lambda cfg: cfg.shapes.name),
    Column("image_hw", lambda cfg: f"{cfg.inputs.height}x{cfg.inputs.width}"),
    Column("image", lambda cfg: cfg.inputs.image or ""),
    Column("arch_options", lambda cfg: arch_options_text(cfg.model.arch_options)),
    Column("thresholds", thresholds_text),
    Column("seed", lambda cfg: cfg.seed),
    Column("weights", None),  # the child states it: the checkpoint's digest, or the seeded init
    Column("warmup", lambda cfg: cfg.bench.warmup),
    Column("iters", lambda cfg: cfg.bench.iters),
    Column("rewarm", lambda cfg: cfg.bench.rewarm),
    Column("timing_options", timing_options_text),
    # the accuracy pass's data (runner.accuracy): the child states it, with the annotation
    # file's digest; "" without a dataset
    Column("accuracy_dataset", None),
)
# What else every row says of its run, error rows too, and never a reason to keep two rows
# apart: where and how it ran (the report tells machines apart by their GPU or CPU), and which
# block of which session the row is.
CIRCUMSTANCES = ("device", "repeats", "command", "output_dir", "repeat", "session", "fingerprint")


def identity_columns() -> tuple[str, ...]:
    """The names of the IDENTITY columns, in order."""
    return tuple(column.name for column in IDENTITY)


def identity(cfg: Config) -> dict[str, Any]:
    """The identity columns a Config gives (all but those the run states)."""
    return {c.name: c.of_config(cfg) for c in IDENTITY if c.of_config is not None}


def recorded(cfg: Config, job: Job) -> dict[str, Any]:
    """Every Row column a run's Config and Job give before it runs: its identity, the device,
    the repeats asked for, the command and the folder."""
    where = {"device": cfg.device, "repeats": cfg.bench.repeats}
    return {**identity(cfg), **where, "command": job.command, "output_dir": job.output_dir}


def kept_columns() -> tuple[str, ...]:
    """What an error row keeps of a run's fields: its identity and its circumstances."""
    return (*identity_columns(), *CIRCUMSTANCES)


def describe(cfg: Config, members: list[str] | tuple[str, ...] = ()) -> str:
    """One line naming a run (or, with the sweeper's `members`, a session of backends)."""
    options = options_text(cfg)
    backend = (
        f"backends={','.join(spec.split()[0].split('=', 1)[1] for spec in members)}"
        if members
        else f"backend={cfg.backend.name}{f'[{options}]' if options else ''}"
    )
    return (
        f"{cfg.variant or cfg.model.name} export={cfg.export} batch={cfg.batch} "
        f"precision={cfg.precision.name} {backend} shapes={cfg.shapes.name}"
    )


def fingerprint(cfg: Config, code_version: str) -> str:
    """12 hex digits naming what a run measures: its resolved Config (the Job is no part of it)
    and the code that measures it."""
    text = json.dumps(asdict(cfg), sort_keys=True, default=str) + code_version
    return hashlib.sha256(text.encode()).hexdigest()[:12]
