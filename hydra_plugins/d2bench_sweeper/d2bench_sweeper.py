"""The d2bench sweeper, a Hydra `Sweeper` (its public plugin interface): the cartesian product of
`params` and command-line sweeps, as Hydra's basic sweeper makes it, times an optional list of
named `variants`, each a point in config space; for example the seed's seven detectron2
variants. After every job has run it prints one summary line and exits non-zero if any run
failed, so a sweep never hides a failure and never stops at the first.

    hydra.sweeper.variants: {Name: {key: value, ...}, ...}   # each job gets variant=Name too
    variant=A,B on the command line runs only those variants.
    hydra.sweeper.backends: ["backend=X", "backend=Y backend.options.k=v", ...]
                            # backend points (with options) every job is run with

Jobs that differ only in their backend (`backend=...`, `backend.options.*`) form one session:
the sweeper launches one job for them, the first one's overrides plus `members=[...]` (each
member's backend overrides), and that job measures them together, backends taking turns block
by block (runner.run.bench), each in its own folder as if launched alone. A launcher therefore
runs sessions: local_gpus one session per GPU, slurm one job per session.
"""

import collections
import itertools
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import filter_overrides
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from runner.config import is_backend_override, value_text
from runner.config import override_key as _key
from runner.preflight import refusal, refuse, refused_sweep
from runner.run.progress import show_jobs_as

log = logging.getLogger(__name__)


@dataclass
class D2benchSweeperConf:
    _target_: str = "hydra_plugins.d2bench_sweeper.d2bench_sweeper.D2benchSweeper"
    max_batch_size: Any = None
    params: Any = None
    variants: Any = None
    backends: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="d2bench", node=D2benchSweeperConf)


def sessions(jobs: list[list[str]]) -> list[list[list[str]]]:
    """Jobs grouped by everything but their backend overrides, in first-seen order."""
    groups: dict[tuple, list[list[str]]] = {}
    for job in jobs:
        shared = tuple(sorted(o for o in job if not is_backend_override(o)))
        groups.setdefault(shared, []).append(job)
    return list(groups.values())


def quoted(text: str) -> str:
    """`text` as one quoted value of a Hydra override: its quotes escaped, and the backslashes
    that stand before a quote or at the end (Hydra keeps any other backslash as it is)."""
    doubled = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + doubled.replace("'", "\\'") + "'"


def job_text(members: list[list[str]]) -> str:
    """What the log shows of the job launched for a session: the overrides its members share,
    then each member's backend overrides after a `|` (a job alone: its overrides). The keys the
    sweeper adds for the job (`members`, `command`, `sweep_jobs`, `sweep_started`) are left out."""
    if len(members) == 1:
        return " ".join(members[0])
    shared = [o for o in members[0] if not is_backend_override(o)]
    specs = [" ".join(o for o in job if is_backend_override(o)) for job in members]
    return " | ".join([" ".join(shared), *specs])


def session_job(members: list[list[str]]) -> list[str]:
    """The one job launched for a session: the first member's overrides, plus every member's
    backend overrides under `members` (a job alone is launched as it is)."""
    if len(members) == 1:
        return list(members[0])
    specs = [" ".join(o for o in job if is_backend_override(o)) for job in members]
    listed = ",".join(f"'{spec}'" for spec in specs)  # quotes: values may hold spaces
    return [*members[0], f"members=[{listed}]"]


def cartesian(overrides: list[Override]) -> list[list[str]]:
    """Every combination of the overrides' values, as Hydra's basic sweeper makes them: one
    list per key (a later override of a key replaces an earlier one), a sweep's values each."""
    by_key: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            by_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            by_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            kind = override.value_type.name if override.value_type else "?"
            raise HydraException(f"{key}: the d2bench sweeper sweeps lists, not {kind} sweeps")
    return [list(combo) for combo in itertools.product(*by_key.values())]


def launch_size(max_batch_size: int | None) -> int | None:
    """hydra.sweeper.max_batch_size as the jobs per launch (None: all in one launch)."""
    if max_batch_size in (None, -1):
        return None
    if not isinstance(max_batch_size, int) or max_batch_size <= 0:
        raise HydraException(
            f"hydra.sweeper.max_batch_size={max_batch_size}; must be > 0, or -1 or null (all)"
        )
    return max_batch_size


def batches(jobs: list[list[str]], size: int | None) -> list[list[list[str]]]:
    """The jobs in launches of `size` each (None: all in one)."""
    step = size or len(jobs) or 1
    return [jobs[i : i + step] for i in range(0, len(jobs), step)]


class D2benchSweeper(Sweeper):
    def __init__(self, max_batch_size=None, params=None, variants=None, backends=None) -> None:
        self.params = dict(params or {})
        if backends:  # the listed backend points replace a `backend` param
            self.params.pop("backend", None)
        self.max_batch_size = max_batch_size
        self.variants = dict(variants or {})
        self.backends = [str(spec) for spec in backends or []]
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def job_overrides(self, arguments: list[str]) -> list[list[str]]:
        """Every job's override list: variant points x the cartesian product of the rest."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        parsed = parser.parse_overrides(params + list(arguments))
        chosen = None
        rest = []
        for override in parsed:
            if override.get_key_element().lstrip("+~") == "variant" and self.variants:
                chosen = (
                    list(override.sweep_string_iterator())
                    if override.is_sweep_override()
                    else [override.get_value_element_as_str()]
                )
            else:
                rest.append(override)
        combos = cartesian(rest)
        if self.backends:
            if any(is_backend_override(o) for combo in combos for o in combo):
                raise HydraException(
                    "backend set on the command line and by the sweep's backends "
                    f"{self.backends}; run without sweep=... to choose backends"
                )
            combos = [combo + spec.split() for combo in combos for spec in self.backends]
        if not self.variants:
            return combos
        unknown = sorted(set(chosen or []) - set(self.variants))
        if unknown:
            raise HydraException(
                f"unknown variant(s) {unknown}; this sweep has {list(self.variants)}"
            )
        jobs = []
        for name, point in self.variants.items():
            if chosen is not None and name not in chosen:
                continue
            for combo in combos:
                clash = sorted({_key(o) for o in combo} & set(point))
                if clash:
                    raise HydraException(
                        f"{clash} set by the sweep's variants; choose variants with variant=A,B "
                        "or run without sweep=..."
                    )
                fixed = [f"{k}={value_text(v)}" for k, v in point.items()] + [f"variant={name}"]
                jobs.append(fixed + combo)
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        try:
            jobs = self.job_overrides(arguments)
            size = launch_size(self.max_batch_size)
        except HydraException as error:  # a mistake in the sweep itself: one line, no traceback
            refuse(f"sweep: {error}")
        for number, group in enumerate(sessions(jobs)):  # hydra.verbose=hydra_plugins: the
            log.debug("session #%d : %s", number, job_text(group))  # whole plan
        jobs, invalid = self.legal(jobs)
        if invalid and not jobs:  # nothing can run: one line, exit 2, nothing written
            refuse(refused_sweep(invalid))
        for overrides, reason in invalid:
            log.error("invalid job %s: %s", overrides, reason)
        groups = sessions(jobs)
        # what every job's config says of the sweep: its command (for the rows), and how many
        # jobs started when (for their progress lines)
        sweep = [
            f"command={quoted(shlex.join(['python', '-m', 'runner', *sys.argv[1:]]))}",
            f"sweep_jobs={len(groups)}",
            f"sweep_started={time.time()}",
        ]
        launched = [session_job(group) + sweep for group in groups]
        shown = {  # what the launcher's `#N : ...` line shows of each job
            " ".join(filter_overrides(job)): job_text(group)
            for job, group in zip(launched, groups, strict=True)
        }
        show_jobs_as(self.launcher, shown)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("sweep: %d runs in %d sessions -> %s", len(jobs), len(groups), sweep_dir)

        returns, first = [], 0
        for batch in batches(launched, size):
            returns.append(self.launcher.launch(batch, initial_job_idx=first))
            first += len(batch)
        results = [r for batch in returns for r in batch]
        self._summarize(results, invalid, [len(group) for group in groups], shown)
        return returns

    def legal(self, jobs: list[list[str]]) -> tuple[list[list[str]], list[tuple[str, str]]]:
        """Jobs whose config composes and passes preflight, and (overrides, reason) for those
        that do not (a value of the wrong type, an unknown key, input preflight refuses)."""
        legal, invalid = [], []
        for overrides in jobs:
            try:
                job = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                reason = refusal(job)
            except Exception as error:  # noqa: BLE001 - Hydra and OmegaConf raise many kinds
                reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            if reason is None:
                legal.append(overrides)
            else:
                invalid.append((" ".join(overrides), reason))
        return legal, invalid

    @staticmethod
    def _summarize(
        results, invalid: list[tuple[str, str]], sizes: list[int], shown: dict[str, str]
    ) -> None:
        """Count every run's outcome; a session job returns one row (or None) per member.
        `shown`: each launched job's text (job_text), by its overrides joined."""
        counts = collections.Counter(invalid=len(invalid))
        failures = [
            f"{overrides}: invalid configuration: {reason}" for overrides, reason in invalid
        ]
        for result, size in zip(results, sizes, strict=False):
            job = " ".join(filter_overrides(result.overrides))
            job = shown.get(job, job)
            try:
                value = result.return_value
            except Exception as error:  # the job itself raised
                counts["error"] += size
                failures.append(f"{job}: {type(error).__name__}: {error}")
                continue
            rows = value if isinstance(value, list) else [value] * (1 if value else size)
            for row in rows:
                if row is None:  # invalid configuration, already reported by the job
                    counts["invalid"] += 1
                    failures.append(f"{job}: invalid configuration")
                    continue
                counts[row.status] += 1
                if row.status in ("error", "parity_fail"):
                    first_line = (row.error or "").splitlines()[0] if row.error else ""
                    failures.append(f"{row.output_dir}: {row.status}: {first_line}")
        failed = counts["error"] + counts["parity_fail"] + counts["invalid"]
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if n)
        log.info("sweep done: %d runs: %s", sum(counts.values()), summary)
        for line in failures:
            log.error("failed: %s", line)
        if failed:
            raise SystemExit(1)
