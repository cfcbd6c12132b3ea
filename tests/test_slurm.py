"""The `slurm` tier: `python -m runner --multirun ... hydra/launcher=slurm` on a real one-node
SLURM cluster (slurmctld, slurmd, munged from Debian's packages, started by
scripts/slurm/cluster.sh), with the small CPU detector of tests/helpers.SMALL_CPU_RUN.

It shows, with SLURM's own machinery (sbatch job arrays, its job states, its time limit, scancel):
a sweep is one job array whose jobs run at once and leave one row each; a job killed at its time
limit, a job whose process dies by a signal, and a cancelled array each end as error rows that
name the cause, without the sweep waiting forever; re-running a cancelled sweep keeps its
finished rows and runs the rest; inside a job SLURM, not the lock files, decides which GPU a
run gets.

It runs only when asked (pytest --slurm; `make test-all`, which CI runs): it installs packages
with apt and starts daemons. Needs root and apt. Elsewhere the tier skips, saying so, except
where CI=true: there a cluster that cannot start fails the tier with the daemons' logs.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, SMALL_CPU_RUN, clean_environment, process_gone

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm" / "cluster.sh"
# the launcher's defaults (one GPU a job: the cluster has two stand-ins) with what a 2-core CI
# machine can give each job
SLURM = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_start() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root to start munged, slurmctld and slurmd (scripts/slurm/cluster.sh)"
    have = all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not have and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 65000:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free consecutive ports")


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    pids: dict[str, int]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def sweep(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        """`python -m runner --multirun SMALL_CPU_RUN SLURM ARGS`, as a user types it."""
        return self.run(
            sys.executable, "-m", "runner", "--multirun", *SMALL_CPU_RUN, *SLURM, *args,
            timeout=timeout,
        )  # fmt: skip

    def without_sacct_stand_in(self) -> dict[str, str]:
        """The environment with Debian's own sacct, which fails: no accounting here."""
        shim = str(SCRIPT.parent / "bin")
        path = os.pathsep.join(p for p in self.env["PATH"].split(os.pathsep) if p != shim)
        return {**self.env, "PATH": path}

    def start_sweep(self, *args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "w") as handle:  # the child keeps its own copy of the file
            return subprocess.Popen(
                [sys.executable, "-m", "runner", "--multirun", *SMALL_CPU_RUN, *SLURM, *args],
                env=env or self.env,
                cwd=REPO,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def records(self, job: str) -> dict[str, dict[str, str]]:
        """sacct's records of `job` (an array: every task), by job id."""
        done = self.run("sacct", "-j", job, "-o", "JobID,State,Start,End,ExitCode", "-P")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        names = lines[0].split("|")
        records = (dict(zip(names, x.split("|"), strict=True)) for x in lines[1:])
        return {r["JobID"]: r for r in records}


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this session's own (folder, ports, munged); stopped at the end, each daemon
    by its PID, and checked gone."""
    reason = cannot_start()
    if reason and not in_ci():
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="d2bench-slurm-"))
    env = clean_environment()
    env.update(D2BENCH_SLURM_DIR=str(folder), D2BENCH_SLURM_PORT=str(free_port_pair()))
    started = time.monotonic()
    up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.fail(
            f"the SLURM cluster did not start (rc {up.returncode}):\n{up.stderr}\n{up.stdout}",
            pytrace=False,
        )
    print(f"slurm cluster up in {time.monotonic() - started:.0f} s: {up.stderr.strip()}")
    for line in up.stdout.splitlines():  # `export NAME=VALUE` lines: what a user would eval
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("$PATH", env["PATH"])
    env["OMP_NUM_THREADS"] = "1"  # one CPU per job: one thread per job
    pids = {
        name: int((folder / f"{name}.pid").read_text())
        for name in ("munged", "slurmctld", "slurmd")
    }
    again = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already up" in again.stderr, again.stderr  # idempotent
    yield Cluster(folder, env, pids)
    down = subprocess.run(
        [str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120
    )
    left = [f"{name} ({pid})" for name, pid in pids.items() if not process_gone(pid, 10)]
    assert down.returncode == 0 and not left, f"still running: {left}\n{down.stderr}"
    shutil.rmtree(folder, ignore_errors=True)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "result.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def array_jobs(sweep: Path) -> list[str]:
    """The sweep's SLURM job ids, in task order: ARRAY_TASK, or a plain id where submitit
    submitted a single run as a plain job."""
    found = [
        p.name for p in (sweep / ".submitit").iterdir() if (p / f"{p.name}_submitted.pkl").exists()
    ]
    return sorted(found, key=lambda job: int(job.rpartition("_")[2]))


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"gave up waiting {timeout:.0f} s for {what}")


def finish(process: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the sweep was still waiting after {timeout:.0f} s:\n{log.read_text()}")
    return log.read_text()


def test_a_sweep_is_one_job_array_whose_runs_run_at_once_one_row_each(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    done = cluster.sweep(
        "inputs.height=128,160,192",
        "hydra.launcher.array_parallelism=3",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
    )
    took = time.monotonic() - started
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "sweep done: 3 runs: 3 ok" in log
    jobs = array_jobs(sweep)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_{i}" for i in range(3)], jobs  # one sbatch --array, 3 tasks
    assert (
        "#SBATCH --array=0-2%3"
        in (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()
    )
    folders = run_folders(sweep)
    assert len(folders) == 3
    for folder in folders:
        (row,) = rows(folder)  # exactly one row per run
        assert row["status"] == "ok", row["error"]
    records = cluster.records(array)
    spans = sorted(
        (records[job]["Start"], records[job]["End"]) for job in jobs
    )  # ISO times: sort as they read
    assert all(records[job]["State"] == "COMPLETED" for job in jobs), records
    # the node has 2 CPUs and 2 GPUs: two jobs run at once, the third waits for a slot
    assert spans[1][0] < spans[0][1], f"no two jobs ran at once: {spans}"
    merged = tmp_path / "merged.csv"
    report = cluster.run(sys.executable, "-m", "runner.report", str(sweep), "--out", str(merged))
    assert report.returncode == 0, report.stdout + report.stderr
    with open(merged, newline="") as handle:
        merged_rows = list(csv.DictReader(handle))
    assert sorted(r["image_hw"] for r in merged_rows) == ["128x224", "160x224", "192x224"]
    print(f"3-run array sweep: {took:.0f} s, spans {spans}")


def test_a_job_killed_at_its_time_limit_is_an_error_row_naming_it(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    done = cluster.sweep(
        "bench.iters=1000000",  # far more than a minute of timed calls
        "hydra.launcher.timeout_min=1",
        f"hydra.sweep.dir={sweep}",
        timeout=300,  # SLURM checks limits every 30 s, then waits KillWait (5 s here)
    )
    took = time.monotonic() - started
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    (folder,) = run_folders(sweep)
    (row,) = rows(folder)
    assert row["status"] == "error"
    assert row["error"].startswith("slurm: job "), row["error"]
    assert "killed at its time limit (TIMEOUT, hydra.launcher.timeout_min=1" in row["error"]
    assert "DUE TO TIME LIMIT" in row["error"]  # slurmstepd's own line
    assert "1 runs: 1 error" in log and "killed at its time limit" in log
    (job,) = array_jobs(sweep)
    assert cluster.records(job)[job]["State"] == "TIMEOUT"
    assert took < 240, took
    print(f"time-limit sweep: {took:.0f} s")


def job_pids(cluster: Cluster, job: str) -> dict[str, list[int]]:
    """`scontrol listpids`: the job's task process (step 0, local id 0) and all the others."""
    done = cluster.run("scontrol", "listpids", job)
    found: dict[str, list[int]] = {"task": [], "all": []}
    for line in done.stdout.splitlines()[1:]:
        pid, _, step, local, *_ = line.split() + ["", "", "", ""]
        found["all"].append(int(pid))
        if step == "0" and local == "0":
            found["task"].append(int(pid))
    return found


def test_a_job_whose_process_dies_by_a_signal_is_an_error_row(cluster, tmp_path):
    """Its process, the one that would write the rows, dies by SIGSEGV. The job is a session
    of two backends (the sweeper's one job for runs that differ only in their backend): each
    gets its error row. The sweep runs with the sacct that fails without accounting: the
    launcher falls back on slurmctld's job states."""
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    env = cluster.without_sacct_stand_in()
    assert cluster.run("sacct", "-j", "1").returncode == 0  # the stand-in answers
    no_accounting = subprocess.run(["sacct", "-j", "1"], env=env, capture_output=True, text=True)
    assert no_accounting.returncode != 0, no_accounting.stdout  # the real one does not
    started = time.monotonic()
    process = cluster.start_sweep(
        "backend=eager,torchscript",
        "bench.iters=1000000",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        log=log,
        env=env,
    )
    # the session is measuring: a member's folder has the measuring child's log
    wait_for(lambda: list(sweep.glob("*/child.log")), 180, "the session to start measuring")
    (job,) = array_jobs(sweep)  # one job for the session
    pids = wait_for(lambda: job_pids(cluster, job), 30, "the job's processes")
    (task,) = pids["task"]
    assert "submitit" in Path(f"/proc/{task}/cmdline").read_text()
    os.kill(task, signal.SIGSEGV)  # the process that would write the rows crashes
    text = finish(process, log, 120)
    took = time.monotonic() - started
    assert process.returncode == 1, text
    assert "2 runs: 2 error" in text, text
    folders = run_folders(sweep)
    assert sorted(f.name.split("backend=")[1].split(",")[0] for f in folders) == [
        "eager",
        "torchscript",
    ]
    for folder in folders:
        (row,) = rows(folder)
        assert row["status"] == "error"
        assert row["error"].startswith(f"slurm: job {job} failed (FAILED"), row["error"]
        assert "killed by SIGSEGV" in row["error"], row["error"]
        assert row["hostname"] == socket.gethostname().split(".")[0]  # the node, from SLURM
    left = [pid for pid in pids["all"] if not process_gone(pid, 10)]
    assert not left, f"processes of the crashed job still running: {left}"
    print(f"crash sweep: {took:.0f} s")


def test_a_cancelled_array_resumes_when_the_same_command_runs_again(cluster, tmp_path):
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    args = (
        "inputs.height=128,160,192",
        "hydra.launcher.array_parallelism=1",  # one at a time: cancel between runs
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
    )
    started = time.monotonic()
    process = cluster.start_sweep(*args, log=log)

    def finished_rows():
        return [f for f in sweep.glob("*/result.csv") if rows(f.parent)[0]["status"] == "ok"]

    (first,) = wait_for(finished_rows, 240, "the first run's row")
    array = array_jobs(sweep)[0].split("_")[0]
    cancel = cluster.run("scancel", array)
    assert cancel.returncode == 0, cancel.stderr
    text = finish(process, log, 120)
    assert process.returncode == 1, text
    kept = rows(first.parent)[0]
    statuses = {f.name: rows(f)[0] for f in run_folders(sweep)}
    assert len(statuses) == 3, statuses
    cancelled = [r for r in statuses.values() if r["status"] == "error"]
    assert len(cancelled) == 2, statuses
    for row in cancelled:
        assert row["error"].startswith("slurm: job "), row["error"]
        assert " cancelled" in row["error"].splitlines()[0], row["error"]

    again = cluster.sweep(*args)
    took = time.monotonic() - started
    log2 = again.stdout + again.stderr
    assert again.returncode == 0, log2
    assert "sweep done: 3 runs: 3 ok" in log2
    after = {f.name: rows(f) for f in run_folders(sweep)}
    assert all(len(r) == 1 and r[0]["status"] == "ok" for r in after.values()), after
    (same,) = after[first.parent.name]
    assert same == kept, "the finished run was measured again instead of kept"
    print(f"cancel and resume: {took:.0f} s")


SUBMITIT_CRASH = """
import os, signal, sys, time
import submitit
executor = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
executor.update_parameters(timeout_min=5, slurm_cpus_per_task=1)
job = executor.submit(os.kill, 0, signal.SIGKILL)  # the job's process group dies at once
started = time.monotonic()
try:
    job.result()
except submitit.core.utils.UncompletedJobError as error:
    print("state", job.state, "after", round(time.monotonic() - started), "s")
    print(" ".join(str(error).split()))
"""


def test_submitit_itself_learns_a_hard_failure_from_the_sacct_stand_in(cluster, tmp_path):
    """submitit's own `.result()` (no d2bench code) on a job killed by SIGKILL: with
    scripts/slurm/bin/sacct on PATH it raises, naming the state, instead of waiting forever."""
    done = cluster.run(
        sys.executable, "-c", SUBMITIT_CRASH, str(tmp_path / "submitit"), timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "state FAILED" in done.stdout, done.stdout
    assert "has not produced any output (state: FAILED)" in done.stdout, done.stdout


GPU_PROBE = """
import json, os, time
from runner.run import gpus
with gpus.claim("cuda", poll_s=0.1) as gpu:
    held = time.time()
    time.sleep(3)
    print(json.dumps({
        "gpu": gpu, "held": held, "released": time.time(), "lock_dir": str(gpus.lock_dir()),
        "job": os.environ["SLURM_JOB_ID"], "slurm_gpus": os.environ.get("SLURM_JOB_GPUS"),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }))
"""


def test_slurm_not_the_lock_files_decides_a_jobs_gpu(cluster, tmp_path):
    """Two jobs given one GPU each by SLURM (gres; placeholder devices on this CPU machine)
    run the pool's claim as a run on device=cuda does: each takes the GPU SLURM gave it (what
    the row's gpu_index records), both at once, although this process holds the host-wide
    locks of both GPUs the whole time: inside a job the pool does not wait on them."""
    locks = tmp_path / "locks"
    locks.mkdir()
    held = []
    for gpu in ("0", "1"):
        handle = open(locks / f"gpu{gpu}.lock", "a")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(handle)
    env = {**cluster.env, "D2BENCH_LOCK_DIR": str(locks)}
    outputs = [tmp_path / f"job{i}.json" for i in range(2)]
    jobs = [
        subprocess.Popen(
            [
                "sbatch",
                "--wait",
                "--gpus-per-node=1",
                "--cpus-per-task=1",
                f"--output={out}",
                "--wrap",
                f"{sys.executable} -c '{GPU_PROBE}'",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for out in outputs
    ]
    try:
        for job in jobs:
            job.wait(90)
    except subprocess.TimeoutExpired:
        cluster.run("scancel", "--user", "root")
        pytest.fail("a job waited for a GPU that SLURM had given it (host-wide lock)")
    finally:
        for handle in held:
            handle.close()
    for job in jobs:
        assert job.returncode == 0, job.stdout.read()
    claims = [json.loads(out.read_text().strip().splitlines()[-1]) for out in outputs]
    assert {c["gpu"] for c in claims} == {"0", "1"}, claims
    for claim in claims:
        assert claim["gpu"] == claim["slurm_gpus"] == claim["visible"], claim
        assert claim["lock_dir"] == str(locks / f"slurm-job-{claim['job']}"), claim
    first, second = claims
    assert max(first["held"], second["held"]) < min(first["released"], second["released"]), (
        f"the two jobs did not hold their GPUs at the same time: {claims}"
    )
