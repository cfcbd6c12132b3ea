"""hydra/launcher=slurm: hydra-submitit-launcher's SLURM launcher, made to finish every sweep.

Takes the sweep's jobs, submits them as one SLURM job array (sbatch --array=0-N%parallelism)
and returns one Hydra JobReturn per job whose value is the run's Row, as the local launchers
do. What it adds to submitit_slurm:

- A job that SLURM ends before it returned (killed at its time limit, by a signal or the OOM
  killer, cancelled, its node lost) becomes an `error` row in the run's own folder, written
  here on the submitting side, with SLURM's state and message: `slurm: job 12_3 killed at its
  time limit (TIMEOUT) ...`. The sweep goes on, its summary lists the row and the exit code is
  1; re-running the same command measures such runs again and keeps the finished ones.
- Job states are polled on a fixed rhythm (every 5 to 60 s, not submitit's up to 10 minutes),
  and every job state counts: a job SLURM says is over is collected even without a result, so
  nothing is waited for forever. States come from `sacct`; on a cluster without accounting put
  scripts/slurm/bin first on PATH (a sacct that answers from scontrol and the job-completion
  log).
- A run cannot be checkpointed (requeueing it would only measure it again from the start), so
  the job ignores submitit's warning signal (USR2, signal_delay_s before the limit) and SLURM
  enforces the limit itself.
"""

from __future__ import annotations

import copy
import csv
import datetime
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the [slurm] extra is absent: Hydra's own error names submitit_slurm
    SlurmLauncher = object

log = logging.getLogger(__name__)

# what a final SLURM state says happened, for the row's first line
ENDINGS = {
    "TIMEOUT": "killed at its time limit",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "OUT_OF_MEMORY": "killed for using more memory than it asked for",
    "NODE_FAIL": "lost with its node",
    "PREEMPTED": "preempted",
    "BOOT_FAIL": "not started: its node failed to boot",
    "DEADLINE": "not run before its deadline",
    "COMPLETED": "ended without returning a result",
}


def state_poll_s(elapsed_s: float) -> float:
    """Seconds between two job-state queries: 5 s early on, one a minute for long sweeps."""
    return min(60.0, max(5.0, elapsed_s / 10))


INCOMPLETE = ("", "UNKNOWN", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING")


def sacct_record(job_id: str) -> dict[str, str]:
    """sacct's record of one job (State, ExitCode, NodeList, Start, End), {} if it has none
    (or sacct has no accounting to ask)."""
    fields = "JobID,State,ExitCode,NodeList,Start,End"
    try:
        done = subprocess.run(
            ["sacct", "-j", job_id, "-o", fields, "--parsable2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        return {}
    names = lines[0].split("|")
    for line in lines[1:]:
        record = dict(zip(names, line.split("|"), strict=False))
        if record.get("JobID") == job_id:
            return record
    return {}


def scontrol_records(base: str) -> dict[str, dict[str, str]]:
    """Records of job `base` (an array: each task, as ARRAY_TASK) from slurmctld's memory
    (`scontrol show job`: pending, running, and finished jobs for MinJobAge seconds)."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", base], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    records = {}
    for line in done.stdout.splitlines():
        pairs = dict(re.findall(r"(\S+?)=(\S*)", line))
        task = pairs.get("ArrayTaskId", "")
        key = f"{pairs.get('ArrayJobId')}_{task}" if task.isdigit() else pairs.get("JobId", "")
        records[key] = {
            "State": pairs.get("JobState", ""),
            "ExitCode": pairs.get("ExitCode", ""),
            "NodeList": pairs.get("NodeList", ""),
            "Start": pairs.get("StartTime", ""),
            "End": pairs.get("EndTime", ""),
        }
    return records


def slurm_record(job_id: str) -> dict[str, str]:
    """What SLURM knows of a job: sacct, else scontrol."""
    return sacct_record(job_id) or scontrol_records(job_id.split("_")[0]).get(job_id, {})


def exit_text(code: str) -> str:
    """SLURM's ExitCode `status:signal` in words: `0:9` -> `killed by SIGKILL`."""
    status, _, number = code.partition(":")
    if number.isdigit() and int(number):
        try:
            return f"killed by {signal.Signals(int(number)).name}"
        except ValueError:
            return f"killed by signal {number}"
    if status.isdigit() and int(status) > 128:
        try:
            return f"killed by {signal.Signals(int(status) - 128).name} (exit code {status})"
        except ValueError:
            pass
    return f"exit code {status}" if status else ""


def slurm_messages(job) -> list[str]:
    """SLURM's own lines in the job's logs (`slurmstepd-node: error: *** JOB 12 ON node
    CANCELLED AT ... DUE TO TIME LIMIT ***`, `srun: error: node: task 0: Killed`)."""
    lines = []
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if (line.startswith("slurmstepd") and "*** JOB" in line) or line.startswith(
                "srun: error:"
            ):
                lines.append(line)
    return list(dict.fromkeys(lines))[-3:]


def cause(job, state: str, timeout_min: Any) -> tuple[str, str]:
    """The error text of a job that SLURM ended before it returned a result, and its node."""
    record = slurm_record(job.job_id)
    state = (record.get("State") or state or "UNKNOWN").split()[0]
    ending = ENDINGS.get(state, "ended")
    detail = [state]
    if state == "TIMEOUT":
        detail.append(f"hydra.launcher.timeout_min={timeout_min}")
    code = exit_text(record.get("ExitCode", ""))
    if code and state != "CANCELLED":
        detail.append(code)
    if state == "CANCELLED" and record.get("Start") in ("Unknown", "None", ""):
        ending = "cancelled before it started"
    lines = [f"slurm: job {job.job_id} {ending} ({', '.join(detail)})"]
    lines += slurm_messages(job)
    lines.append(f"log: {job.paths.stderr}")
    return "\n".join(lines), record.get("NodeList", "")


class D2benchSlurmLauncher(SlurmLauncher):  # type: ignore[misc,valid-type]
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # Runs in the job. submitit binds USR2 (SLURM's warning, signal_delay_s before the
        # limit) to checkpoint-and-requeue, and SLURM sends it to every process of the job,
        # the measuring child too. A run cannot resume from a checkpoint, so the whole job
        # ignores it (the child inherits SIG_IGN) and SLURM enforces the limit itself.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        log.info(
            "slurm: the time-limit warning (USR2) is ignored; SLURM stops the job at its limit"
        )
        return super().__call__(*args, **kwargs)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        params = dict(self.params)
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params["submitit_folder"],
            slurm_max_num_timeout=params.get("max_num_timeout", 0),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        array = jobs[0].job_id.split("_", 1)[0]
        log.info(
            "slurm: array job %s, %d job(s), at most %s at once; logs in %s",
            array,
            len(jobs),
            params.get("array_parallelism"),
            jobs[0].paths.folder.parent,
        )
        return self._collect(jobs, job_overrides, initial_job_idx)

    def _collect(self, jobs, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        """Every job's JobReturn once it is over. A job is over when its result is there and
        its row is not an error, or when SLURM says it has ended; the row of a job that SLURM
        stopped (time limit, cancel, signal, node) names SLURM's cause."""
        returns: list[JobReturn | None] = [None] * len(jobs)
        results: dict[int, JobReturn] = {}
        waiting = set(range(len(jobs)))
        started = last_query = time.monotonic()
        result_seen: dict[int, float] = {}
        fallback: dict[int, str] = {}  # job states from scontrol where sacct has none
        watcher = jobs[0].watcher
        while waiting:
            now = time.monotonic()
            if now - last_query >= state_poll_s(now - started):
                watcher.update()
                last_query = now
                # without accounting sacct knows nothing: ask slurmctld, so that a job that
                # ended without its result is never waited for
                unknown = [
                    i for i in waiting if watcher.get_state(jobs[i].job_id, "cache") == "UNKNOWN"
                ]
                known: dict[str, dict[str, str]] = {}
                for base in {jobs[i].job_id.split("_")[0] for i in unknown}:
                    known.update(scontrol_records(base))
                for i in unknown:
                    state = known.get(jobs[i].job_id, {}).get("State", "")
                    fallback[i] = state or fallback.get(i, "")
            for i in sorted(waiting):
                job, overrides, idx = jobs[i], job_overrides[i], initial_job_idx + i
                ended = watcher.is_done(job.job_id, mode="cache")
                state = watcher.get_state(job.job_id, mode="cache") if ended else ""
                if not ended and fallback.get(i, "") not in INCOMPLETE:
                    ended, state = True, fallback[i]
                if i not in results and job.paths.result_pickle.exists():
                    results[i] = self._returned(job, overrides, idx)
                    result_seen[i] = now
                if i in results:
                    if not ended and erroneous(results[i]) and now - result_seen[i] < 60:
                        last_query = min(last_query, now - 4)  # ask SLURM again in a second
                        continue  # an error row: wait for SLURM's word on why the job ended
                    returns[i] = self._stopped(job, state, overrides, idx, results[i])
                elif ended:
                    returns[i] = self._stopped(job, state, overrides, idx, None)
                else:
                    continue
                waiting.discard(i)
            if waiting:
                time.sleep(1)
        return returns  # type: ignore[return-value]

    def _returned(self, job, overrides, idx: int) -> JobReturn:
        """The JobReturn a job wrote; an error row if the job raised instead of returning."""
        try:
            result = job.results()[0]
        except Exception as error:  # submitit: the job's own exception, or no result after all
            text = str(error).strip().splitlines()
            return self._failed(
                overrides, idx, f"slurm: job {job.job_id}: {text[0] if text else error!r}"
            )
        if result.status == JobStatus.FAILED:
            error = result._return_value
            return self._failed(
                overrides, idx, f"exception: {type(error).__name__}: {error}", result
            )
        return result

    def _stopped(self, job, state: str, overrides, idx: int, result: JobReturn | None):
        """`result` as it is, unless SLURM ended the job other than by its own completion and
        the run has no finished row: then an error row naming SLURM's cause (with what the run
        itself reported, if it had time to)."""
        if state in ("", "COMPLETED") and result is not None:
            return result
        if state == "COMPLETED":  # ended normally: its result file may still be on its way
            try:
                return self._returned(job, overrides, idx)
            except Exception:  # noqa: BLE001 - handled below as an ending without a result
                pass
        if result is not None and not erroneous(result):
            return result  # measured before SLURM stopped it: the row stands
        text, node = cause(job, state, self.params.get("timeout_min"))
        if result is not None:
            text += f"\nthe run reported: {reported(result)}"
        log.error("%s", text.replace("\n", "; "))
        return self._failed(overrides, idx, text, hostname=node)

    def _failed(
        self, overrides, idx: int, text: str, result: JobReturn | None = None, hostname: str = ""
    ):
        """JobReturn whose value is what the job would have returned, its rows written into
        the run's folder (each member's, for a session of backends): an error row, or the
        finished rows already there if the run completed before its job was stopped."""
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides)
        )
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = idx
        out = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = os.path.abspath(out)
        task_cfg = copy.deepcopy(sweep_config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
            task_cfg.output_dir = os.path.abspath(out)
        ret = result or JobReturn()
        ret.overrides, ret.cfg, ret.working_dir = list(overrides), task_cfg, os.getcwd()
        try:
            value = failure_rows(sweep_config, task_cfg, text, hostname)
        except Exception as error:  # noqa: BLE001 - e.g. a config no run can use: no row
            log.error("slurm: no error row for %s: %s", " ".join(overrides), error)
            ret.status, ret.return_value = JobStatus.FAILED, error
            return ret
        ret.status, ret.return_value = JobStatus.COMPLETED, value
        return ret


def _rows(value) -> list:
    return value if isinstance(value, list) else [value]


def erroneous(result: JobReturn) -> bool:
    """The job raised, or returned no row or an error row (any member's, for a session)."""
    if result.status != JobStatus.COMPLETED:
        return True
    value = result._return_value
    if value is None:
        return True
    return any(row is not None and row.status == "error" for row in _rows(value))


def reported(result: JobReturn) -> str:
    value = result._return_value
    texts = [getattr(row, "error", "") for row in _rows(value) if row is not None]
    text = next((t for t in texts if t and t.strip()), "") or str(value)
    return text.strip().splitlines()[0] if text.strip() else repr(value)


def failure_rows(sweep_config: DictConfig, task_cfg: DictConfig, text: str, hostname: str):
    """What the stopped job would have returned (runner.run.bench.run): one row, or one per
    member of a session of backends (None for a member whose config is refused)."""
    from hydra.core.hydra_config import HydraConfig

    from runner.config import split
    from runner.run import member

    cfg, job = split(task_cfg)  # its command: the sweep's (the sweeper sets it in each job)
    if not job.members:
        return failure_row(cfg, job, text, hostname)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(sweep_config)  # as inside the job (member folders)
    try:
        members = member.member_runs(job)
    finally:
        HydraConfig.instance().cfg = saved
    return [None if m is None else failure_row(*m, text, hostname) for m in members]


def failure_row(cfg, job, text: str, hostname: str = ""):
    """Write (and return) the error row of a run whose job ended without finishing it, as
    runner.run.member does for a run that failed (the row alone in result.csv). A run whose every
    repeat is already measured, with this config and code, is kept: its last row."""
    from runner import provenance
    from runner.identity import fingerprint, recorded
    from runner.run import record

    out = Path(job.output_dir)
    code = fingerprint(cfg, provenance.code_digest())  # as runner.run.bench: the code's content
    out.mkdir(parents=True, exist_ok=True)
    with record.locked(out / ".lock"):
        try:
            rows = [r for r in record.read_rows(out / "result.csv") if r.fingerprint == code]
        except (OSError, ValueError, csv.Error):
            rows = []
        measured = [r for r in rows if r.status in record.MEASURED]
        if measured and {r.repeat for r in measured} >= set(range(cfg.bench.repeats)):
            return measured[-1]
        row = record.Row(
            **recorded(cfg, job),
            status="error",
            error=text,
            hostname=hostname if hostname not in ("None", "(null)") else "",
            git_sha=record.git_sha(),
            timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            fingerprint=code,
        )
        record.write_rows(out / "result.csv", [row])
    return row
