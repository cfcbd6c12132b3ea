"""`python -m runner [group=option ...] [key=value ...]`: compose the config, run, record.

Hydra composes conf/config.yaml with one file from each group; `run_job` validates it and hands
it to runner.run.bench.run. In a single run the exit code is 0 for ok and unsupported rows, 1 for
errors and parity failures, 2 for input no run can use. In --multirun the sweeper collects the
rows and sets the exit code once every job has run. Ctrl-C stops the run or the sweep with one
line and exit code 130; the interrupted run's row says so, and the same command resumes (a run's
folder is named by its overrides, conf/config.yaml): the line says which repeats it keeps and
which it measures.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import preflight
from runner.config import ConfigError, check_command_line, job_dirname, register_schema, split
from runner.identity import describe
from runner.run import gpus
from runner.run.bench import run
from runner.run.progress import Progress
from runner.run.record import Row

log = logging.getLogger("runner")


def command_line() -> str:
    """The command of this process, as a row names it (a sweep's jobs get the sweep's)."""
    return shlex.join(["python", "-m", "runner", *sys.argv[1:]])


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def remove_if_only_hydra_wrote(folder: Path, job_name: str) -> None:
    """Hydra makes the run folder (.hydra/ and the job's log) before the job starts; a job
    refused for bad input removes what Hydra wrote, and the folder (and outputs/runs/ above it)
    if nothing else is in it, so that bad input leaves nothing behind and never takes anything
    else with it."""
    hydra_dir, job_log = folder / ".hydra", folder / f"{job_name}.log"
    if hydra_dir.is_dir() and {p.name for p in hydra_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(hydra_dir, ignore_errors=True)
    job_log.unlink(missing_ok=True)
    # the folder, then the parents Hydra made for it (outputs/runs/), each only while empty and
    # below the working directory
    cwd = Path.cwd().resolve()
    for path in (folder.resolve(), *folder.resolve().parents):
        if path != folder.resolve() and (path == cwd or cwd not in path.parents):
            break
        try:
            path.rmdir()  # only if empty
        except OSError:
            break


class Stopped(KeyboardInterrupt):
    """Ctrl-C stopped a run; what it measured is recorded (a run that measured nothing yet has
    a row with error `interrupted: ...`)."""


def resuming_command(hydra_cfg: DictConfig, single: bool) -> str:
    """What resumes this run or sweep: the same command, which finds its folder again (a run's
    is named by its overrides, conf/config.yaml), or where the folder is named by the time
    (`${now:...}`: a --multirun's default outputs/multirun/<time>/, or such a hydra.run.dir)
    the same command naming that folder."""
    key, node = ("hydra.run.dir", hydra_cfg.run) if single else ("hydra.sweep.dir", hydra_cfg.sweep)
    if "${now:" not in str(OmegaConf.to_container(node, resolve=False).get("dir")):
        return "the same command"
    folder = Path(hydra_cfg.runtime.output_dir)
    if not single:  # the job's folder is the sweep's folder / its overrides (job_dirname)
        for _ in Path(job_dirname(hydra_cfg.job.override_dirname)).parts:
            folder = folder.parent
    return f"the same command with {key}={shlex.quote(str(folder))}"


def run_job(cfg: DictConfig) -> Row | None:
    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode == RunMode.RUN
    try:
        config, job = split(cfg)
        preflight.check(config)
    except ConfigError as error:
        remove_if_only_hydra_wrote(Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.name)
        if single:
            preflight.refuse(str(error))
        log.error("%s%s", preflight.REFUSAL, error)  # a sweep's job: the sweep goes on
        return None
    job.command = job.command or command_line()
    index = None if single else hydra_cfg.job.num
    named = describe(config, job.members)
    with Progress(named, index, (job.sweep_jobs, job.sweep_started)):
        try:
            row = run(config, job)
        except KeyboardInterrupt as stop:  # the children are dead, the rows written (run.bench)
            rest = "" if single else "; the sweep's finished runs are kept, the others measured"
            again = resuming_command(hydra_cfg, single)
            raise Stopped(f"{named}: stopped; {again} resumes: {stop}{rest}") from None
    if single and row.status in ("error", "parity_fail"):
        raise SystemExit(1)
    return row


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Row | None:
    return run_job(cfg)


def entry(argv: list[str]) -> None:
    try:
        check_command_line(argv)
    except ConfigError as error:
        preflight.refuse(str(error))  # nothing has been written yet
    register_schema()
    OmegaConf.register_new_resolver("d2bench_gpus", lambda: len(gpus.visible_gpus()))
    main()


if __name__ == "__main__":
    try:
        entry(sys.argv[1:])
    except KeyboardInterrupt as stop:  # Ctrl-C: one line, not tracebacks
        where = str(stop) or "before a run was recorded; the same command resumes"
        sys.stderr.write(f"interrupted (Ctrl-C): {where}\n")
        raise SystemExit(130) from None
