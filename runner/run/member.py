"""One member of a session, as the parent sees it: takes a Config and its Job, keeps its folder's
rows, its worker and the rows it measures (what the run is: runner.identity). Also the Configs
and Jobs of the members that the sweeper asked for (member_runs)."""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path

from runner import provenance
from runner.config import NO_DATASET, Config, ConfigError, Job, is_backend_override, override_key
from runner.identity import describe, fingerprint, recorded
from runner.run import record, steps
from runner.run.record import Row
from runner.run.steps import Block, Environment, Prepared
from runner.run.workers import ChildFailed

log = logging.getLogger(__name__)

Run = tuple[Config, Job]  # what a session measures for one member, and where


# ---- members of a sweep's session --------------------------------------------------------


def member_runs(job: Job) -> list[Run | None]:
    """The Config and Job of each member of the session the sweeper asked for (inside its Hydra
    job): the job's overrides with the backend's replaced by the member's, in the folder Hydra
    would give that job on its own. None (logged) where a member's config is refused."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from runner import preflight
    from runner.config import job_dirname, split

    hydra_cfg = HydraConfig.get()
    shared = [
        o
        for o in hydra_cfg.overrides.task
        if not is_backend_override(o) and override_key(o) != "members"
    ]
    sweep_dir = Path(hydra_cfg.runtime.output_dir)  # sweep.dir / subdir (override_dirname)
    for _ in Path(job_dirname(hydra_cfg.job.override_dirname)).parts:
        sweep_dir = sweep_dir.parent
    runs: list[Run | None] = []
    for spec in job.members:
        overrides = shared + spec.split()
        try:
            composed = compose("config", overrides=overrides, return_hydra_config=True)
            folder = sweep_dir / job_dirname(composed.hydra.job.override_dirname)
            with open_dict(composed):
                del composed["hydra"]
                composed.output_dir = str(folder)
                composed.command = job.command
                composed.members = []
            member, member_job = split(composed)
            preflight.check(member)
        except ConfigError as error:
            log.error("invalid configuration %s: %s", " ".join(overrides), error)
            runs.append(None)
            continue
        except Exception as error:  # noqa: BLE001 - Hydra raises many kinds for bad overrides
            log.error("invalid configuration %s: %s", " ".join(overrides), error)
            runs.append(None)
            continue
        runs.append((member, member_job))
    return runs


# ---- one member of a session -------------------------------------------------------------


class Member:
    """The parent's view of one config: its folder, kept rows, worker and new rows."""

    def __init__(self, cfg: Config, job: Job):
        self.cfg, self.job = cfg, job
        self.out = Path(job.output_dir)
        self.fingerprint = fingerprint(cfg, provenance.code_digest())  # content
        self.kept: dict[int, Row] = {}  # measured rows of this fingerprint, by repeat
        self.kept_unsupported: Row | None = None
        self.new: dict[int, Row] = {}
        self.blocks: dict[int, Block] = {}
        self.prepared: Prepared | None = None
        self.final: Row | None = None  # an unsupported or error row ends the member
        self.worker = None
        self.started = time.monotonic()

    def read_kept(self) -> None:
        """Rows already in the folder that count as done for this fingerprint."""
        try:
            rows = record.read_rows(self.out / "result.csv")
        except (OSError, ValueError, csv.Error):
            return
        rows = [r for r in rows if r.fingerprint == self.fingerprint]
        if len(rows) == 1 and rows[0].status == "unsupported":
            self.kept_unsupported = rows[0]
            return
        repeats = range(self.cfg.bench.repeats)
        self.kept = {
            r.repeat: r for r in rows if r.status in record.MEASURED and r.repeat in repeats
        }

    def missing(self) -> set[int]:
        if self.kept_unsupported is not None:
            return set()
        return set(range(self.cfg.bench.repeats)) - set(self.kept)

    def end(self, prepared: Prepared, gpu: str = "") -> Row:
        """Finish this member with one unsupported or error row (its file holds only it)."""
        if not prepared.environment.torch_version:  # the child never reported its environment
            here = Environment(**record.environment(self.cfg.device), gpu_index=gpu)
            prepared = dataclasses.replace(prepared, environment=here)
        self.final = steps.row(
            recorded(self.cfg, self.job), prepared.fields(), {"fingerprint": self.fingerprint}
        )
        record.write_rows(self.out / "result.csv", [self.final])
        self.close()
        log.warning(
            "run: %s in %.0f s: %s: %s",
            self.final.status,
            time.monotonic() - self.started,
            describe(self.cfg),
            (self.final.error.splitlines() or [""])[0],
        )
        return self.final

    def fail(self, failure: Exception, gpu: str) -> Row:
        """End with an error row: the child failed (ChildFailed), or the parent met a value it
        could not use (any other exception: a bug, but still a row saying so)."""
        return self.end(Prepared("error", self._reason(failure)), gpu)

    def fail_after_timing(self, stage: str, failure: Exception) -> list[Row]:
        """The child failed in a step after its timed blocks (`stage`: accuracy or finish), whose
        rows are already written: they stay, the failure written into them, so that a run
        cancelled, killed or broken after it was measured loses no measurement. An accuracy
        pass that was asked for (a dataset) and did not end makes them error rows, as a failed
        pass does (steps.Accuracy); a failed finish keeps their status and leaves out only the
        profiler pass and the backend's notes."""
        reason = self._reason(failure)
        asked = stage == "accuracy" and self.cfg.dataset.name != NO_DATASET
        for repeat, row in self.new.items():
            if asked:  # as a failed pass: steps.Accuracy's error rows
                changes = steps.Accuracy(failure=reason).fields(row)
            else:
                changes = {"error": f"{stage}: {reason}" + (f"; {row.error}" if row.error else "")}
            self.new[repeat] = steps.row(dataclasses.asdict(row), changes)
        self.write()
        self.close()
        log.warning(
            "run: %s after its timed blocks, which stand: %s: %s",
            stage,
            describe(self.cfg),
            f"{stage}: {reason.splitlines()[0]}",
        )
        return self.rows()

    def _reason(self, failure: Exception) -> str:
        if isinstance(failure, ChildFailed):
            if failure.detail:
                (self.out / "error.txt").write_text(failure.detail)
            return f"{failure.cause}: {failure}"
        log.exception("run: the parent failed on %s", describe(self.cfg))
        return f"parent: {type(failure).__name__}: {failure}"

    def add_block(self, repeat: int, block: Block, session: str) -> None:
        self.blocks[repeat] = block
        self.new[repeat] = steps.row(
            recorded(self.cfg, self.job),
            self.prepared.fields(),
            block.fields(self.cfg.batch),
            {"repeat": repeat, "session": session, "fingerprint": self.fingerprint},
        )

    def rows(self) -> list[Row]:
        merged = {**self.kept, **self.new}
        return [merged[r] for r in sorted(merged)]

    def write(self) -> None:
        """result.csv with one row per repeat; samples.csv with every timed call of them."""
        record.write_rows(self.out / "result.csv", self.rows())
        lines = ["repeat,shape,image_hw,call,latency_ms"]
        keep = set(self.kept) - set(self.new)
        lines += [
            line
            for line in _sample_lines(self.out / "samples.csv")
            if int(line.split(",", 1)[0]) in keep
        ]
        for repeat in sorted(self.blocks):
            block = self.blocks[repeat]
            for shape, values in block.samples.items():
                hw = block.image_hw[shape]
                lines += [f"{repeat},{shape},{hw},{i},{v!r}" for i, v in enumerate(values)]
        record.write_atomic(self.out / "samples.csv", "\n".join(lines) + "\n")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def interrupt(self) -> None:
        """Ctrl-C: kill the child now; a run that has measured nothing gets a row saying it was
        interrupted (measured repeats are in result.csv already; the same command adds the rest)."""
        if self.worker is not None and hasattr(self.worker, "kill"):
            self.worker.kill()
        if self.final is None and not self.rows():
            took = time.monotonic() - self.started
            reason = (
                f"interrupted: Ctrl-C (SIGINT) after {took:.0f} s; child and its workers killed"
            )
            self.end(Prepared("error", reason))


def _sample_lines(path: Path) -> list[str]:
    """The data lines of a samples.csv with a repeat column (older files have none: [])."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    if not lines or not lines[0].startswith("repeat,"):
        return []
    return [line for line in lines[1:] if line and line.split(",", 1)[0].isdigit()]
