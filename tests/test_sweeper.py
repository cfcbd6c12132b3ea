"""The d2bench sweeper, through real `python -m runner` processes: sweep=seed expands to the
seven variants x params, command-line values replace params, variant=A,B picks variants, and
mistakes are refused before any job runs. Jobs are made invalid on purpose (bench.iters=-1) where
only the job list matters: each is then refused in a fraction of a second."""

from __future__ import annotations

import itertools
import re

import pytest

from runner.run.record import read_rows
from tests.helpers import run_runner, seed_variants

# every job refused by validation: nothing measured; the sweeper lists the jobs it made (debug)
NO_RUN = ("bench.iters=-1", "device=cpu", "hydra.verbose=hydra_plugins")
REFUSED = "invalid configuration: bench.iters=-1; must be >= 1 (all {} jobs of the sweep)"


def launched_jobs(log: str) -> list[dict[str, str]]:
    """The runs of the jobs Hydra's launcher logged ('#3 : a=1 b=2', or the sweeper's plan
    before it refused them all: 'session #3 : a=1 b=2'): a session's job (its shared overrides,
    then each member's backend after a '|': 'a=1 | backend=A | backend=B') stands for one run
    per member."""
    jobs = []
    for line in log.splitlines():
        found = re.search(r"#(\d+) : (.*)$", line)
        if found:
            shared, *members = found.group(2).split(" | ")
            job = dict(item.split("=", 1) for item in shared.split())
            for spec in members or [""]:
                jobs.append({**job, **dict(item.split("=", 1) for item in spec.split())})
    return jobs


def launched_sessions(log: str) -> int:
    return len(re.findall(r"#(\d+) : ", log))


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_sweep_seed_runs_every_variant_at_every_precision_and_backend(tmp_path):
    done = run_runner("sweep=seed", *NO_RUN, f"hydra.sweep.dir={tmp_path}", timeout=300)
    log = done.stdout + done.stderr
    jobs = launched_jobs(log)
    variants = seed_variants()
    expected = {
        (name, precision, backend)
        for name, precision, backend in itertools.product(
            variants, ("fp32", "fp16"), ("eager", "torchscript")
        )
    }
    assert len(jobs) == 28 == len(expected)
    assert launched_sessions(log) == 14  # eager and torchscript of a variant and precision
    assert {(j["variant"], j["precision"], j["backend"]) for j in jobs} == expected
    for job in jobs:
        for key, value in variants[job["variant"]].items():
            assert job[key] == _text(value), job
    assert REFUSED.format(28) in log  # once, not once per job; and exit code 2
    assert "multirun.yaml" not in {p.name for p in tmp_path.iterdir()}
    assert done.returncode != 0  # every job was refused


def test_command_line_values_replace_params_and_variant_picks(tmp_path):
    done = run_runner(
        "sweep=seed",
        "variant=MaskRCNNFPN_b2,RetinaNet",
        "backend=eager",
        *NO_RUN,
        f"hydra.sweep.dir={tmp_path}",
        timeout=300,
    )
    jobs = launched_jobs(done.stdout + done.stderr)
    assert {(j["variant"], j["precision"], j["backend"]) for j in jobs} == {
        ("RetinaNet", "fp32", "eager"),
        ("RetinaNet", "fp16", "eager"),
        ("MaskRCNNFPN_b2", "fp32", "eager"),
        ("MaskRCNNFPN_b2", "fp16", "eager"),
    }
    assert all(j["batch"] == "2" for j in jobs if j["variant"] == "MaskRCNNFPN_b2")


def test_an_unknown_variant_is_refused_listing_the_variants(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner("sweep=seed", "variant=Nope", *NO_RUN, f"hydra.sweep.dir={sweep}")
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "unknown variant(s) ['Nope']" in log
    for name in seed_variants():
        assert name in log
    assert not sweep.exists()


def test_a_key_the_variants_set_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner("sweep=seed", "model=retinanet", *NO_RUN, f"hydra.sweep.dir={sweep}")
    assert done.returncode != 0
    assert "['model'] set by the sweep's variants" in done.stdout + done.stderr
    assert not sweep.exists()


@pytest.mark.parametrize("mistake", ["variant=Nope", "model=retinanet"])
def test_sweep_mistakes_are_reported_without_a_traceback(tmp_path, mistake):
    done = run_runner("sweep=seed", mistake, *NO_RUN, f"hydra.sweep.dir={tmp_path / 's'}")
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.detectron2
def test_a_seed_variant_runs_for_real(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_runner(
        "sweep=seed",
        "variant=RetinaNet",
        "precision=fp32",
        "backend=torchscript",
        "device=cpu",
        "bench.warmup=0",
        "bench.iters=1",
        "bench.repeats=1",
        "bench.rewarm=0",
        "inputs.height=192",
        "inputs.width=256",
        f"hydra.sweep.dir={sweep}",
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "sweep done: 1 runs: 1 ok" in log
    (result,) = sweep.rglob("result.csv")
    (row,) = read_rows(result)
    assert (row.variant, row.model, row.export, row.postprocess) == (
        "RetinaNet",
        "retinanet",
        "trace",
        True,
    )
    assert row.status == "ok" and row.parity_pass is True
    assert "sweep=seed" in row.command


SMALL = (
    "model=tv_fasterrcnn_mobilenet",
    "device=cpu",
    "bench.warmup=1",
    "bench.iters=2",
    "bench.repeats=1",
    "bench.rewarm=0",
    "inputs.height=160",
    "inputs.width=224",
)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_gpus", "submitit_local"])
def test_other_launchers_run_the_jobs_and_report_failures(tmp_path, launcher):
    """conf/hydra/launcher/local_gpus.yaml (joblib) and submitit_local, the local stand-in for
    conf/hydra/launcher/slurm.yaml: one real job and one refused one."""
    sweep = tmp_path / "sweep"
    done = run_runner(
        "--multirun",
        *SMALL,
        f"hydra/launcher={launcher}",
        "bench.iters=2,-1",
        f"hydra.sweep.dir={sweep}",
    )
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert "sweep done: 2 runs: 1 invalid, 1 ok" in log, log
    (result,) = sweep.rglob("result.csv")
    (row,) = read_rows(result)
    assert row.status == "ok" and row.iters == 2


@pytest.mark.slow
def test_local_gpus_with_two_parallel_jobs_measures_both(tmp_path):
    """Two joblib (loky) workers at once, each running a session of two backends: each worker
    composes its members' configs and spawns their measuring children. A loky worker's start
    method is 'loky', which a plainly spawned child cannot resolve; this is the path a 2-GPU
    host takes and one job per worker (the default on a GPU-less CI) never does."""
    sweep = tmp_path / "sweep"
    done = run_runner(
        "--multirun",
        *SMALL,
        "hydra/launcher=local_gpus",
        "hydra.launcher.n_jobs=2",
        "backend=eager,torchscript",
        "bench.iters=2,3",
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "sweep done: 4 runs: 4 ok" in log, log
    rows = [read_rows(path)[0] for path in sorted(sweep.rglob("result.csv"))]
    assert sorted((row.iters, row.backend) for row in rows) == [
        (2, "eager"),
        (2, "torchscript"),
        (3, "eager"),
        (3, "torchscript"),
    ]
    assert all(row.status == "ok" for row in rows)
    sessions = {row.iters: set() for row in rows}
    for row in rows:
        sessions[row.iters].add(row.session)
    assert all(len(found) == 1 for found in sessions.values())  # one session per job
    assert sessions[2] != sessions[3]


def test_sweep_static_runs_each_variant_with_five_backend_points_in_one_session(tmp_path):
    done = run_runner(
        "sweep=static", "variant=RetinaNet", *NO_RUN, f"hydra.sweep.dir={tmp_path}", timeout=300
    )
    log = done.stdout + done.stderr
    jobs = launched_jobs(log)
    assert launched_sessions(log) == 2  # fp32 and fp16
    assert sorted(
        (
            j["precision"],
            j["backend"],
            j.get("backend.options.compile", ""),
            j.get("backend.options.fold_bn", ""),
        )
        for j in jobs
    ) == sorted(
        (precision, backend, compiled, plain)
        for precision in ("fp32", "fp16")
        for backend, compiled, plain in (
            ("eager", "", ""),
            ("torchscript", "", ""),
            ("static_graph", "", ""),
            ("static_graph", "true", ""),
            ("static_graph", "", "false"),
        )
    )
    assert REFUSED.format(10) in log


def test_a_backend_on_the_command_line_clashes_with_the_sweeps_backends(tmp_path):
    done = run_runner("sweep=static", "backend=eager", *NO_RUN, f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 2
    assert "backend set on the command line and by the sweep's backends" in done.stdout + (
        done.stderr
    )


@pytest.mark.parametrize(
    "argv",
    [["--multirun", "model=a,b"], ["+x='it''s'", "a=b\\c", "d=e\\"], ['q="x"', "p=a\\'b"]],
)
def test_the_sweeps_command_reaches_its_jobs_as_one_quoted_override(argv):
    """The sweeper hands its command to every job as `command=...` (not an environment
    variable); whatever the shell quoted, the job reads back the same text."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.d2bench_sweeper.d2bench_sweeper import quoted

    command = shlex.join(["python", "-m", "runner", *argv])
    (override,) = OverridesParser.create().parse_overrides([f"command={quoted(command)}"])
    assert override.value() == command


def test_a_job_whose_overrides_name_a_folder_too_long_for_the_file_system_runs(tmp_path):
    """Hydra names a job's folder after its overrides; past 255 bytes the file system refuses
    it (a session member with several backend options did, on the H200). The folder is cut to
    200 bytes plus a digest of the whole name, and running the sweep again finds it."""
    long = ("bench.match_iou=0.7", "bench.timeout_s=1800", "bench.gc=collect", "seed=0")
    args = (
        "--multirun",
        *SMALL,
        "backend=eager,torchscript",
        *long,
        "bench.pin_cpus=false",
        "batch=1",
        "redo=false",
        f"hydra.sweep.dir={tmp_path}",
    )
    done = run_runner(*args)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    folders = {result.parent.name for result in tmp_path.rglob("result.csv")}
    assert len(folders) == 2 and all(len(f.encode()) <= 200 for f in folders), folders
    assert any(len(f) == 200 and "backend=eager" in f for f in folders), folders
    again = run_runner(*args)
    assert "kept" in again.stdout + again.stderr, again.stdout + again.stderr


# ---- the sweeper's own product and launches (Hydra's public Sweeper interface) -------------


def parsed(*overrides: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def test_the_product_is_the_one_hydras_basic_sweeper_makes():
    """A later value of a key replaces an earlier one (the command line replaces params)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the oracle only

    from hydra_plugins.d2bench_sweeper.d2bench_sweeper import cartesian

    overrides = parsed("batch=1", "seed=0,1", "+model.arch_options.x=3", "batch=2,4", "~variant")
    assert cartesian(overrides) == BasicSweeper.split_arguments(overrides, None)[0]
    assert cartesian(overrides)[0] == [
        "batch=2",
        "seed=0",
        "+model.arch_options.x=3",
        "~variant=null",
    ]
    assert len(cartesian(overrides)) == 4


def test_a_sweep_the_product_cannot_list_is_refused():
    from hydra.errors import HydraException

    from hydra_plugins.d2bench_sweeper.d2bench_sweeper import cartesian

    with pytest.raises(HydraException, match="seed: the d2bench sweeper sweeps lists"):
        cartesian(parsed("seed=interval(0,1)"))


def test_jobs_are_launched_in_batches_of_max_batch_size():
    from hydra.errors import HydraException

    from hydra_plugins.d2bench_sweeper.d2bench_sweeper import batches, launch_size

    jobs = [[f"seed={i}"] for i in range(5)]
    assert [len(b) for b in batches(jobs, launch_size(2))] == [2, 2, 1]
    assert batches(jobs, launch_size(None)) == batches(jobs, launch_size(-1)) == [jobs]
    assert batches([], launch_size(None)) == []
    with pytest.raises(HydraException, match="max_batch_size=0"):
        launch_size(0)


PLUMBING = ("members=", "command=", "sweep_jobs=", "sweep_started=")


@pytest.mark.slow
def test_a_sweeps_log_says_whose_each_line_is(tmp_path):
    """Issue 24: the session's children logged `[child]` alone, so two "repeat 0: median ..."
    lines could not be told apart, and the launcher's `#0 : ...` line showed the keys the
    sweeper adds for its jobs. Now each child line names its backend and options, and the job
    line shows the session's shared overrides and its backends."""
    sweep = tmp_path / "sweep"
    backends = "['backend=eager','backend=torchscript backend.options.freeze=true']"
    done = run_runner(
        "--multirun", *SMALL, "bench.repeats=2", f"hydra.sweeper.backends={backends}",
        f"hydra.sweep.dir={sweep}", timeout=600,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    (job_line,) = [line for line in log.splitlines() if re.search(r"#0 : ", line)]
    assert job_line.endswith(" | backend=eager | backend=torchscript backend.options.freeze=true")
    assert not [key for key in PLUMBING if key in job_line], job_line
    shared = dict(o.split("=", 1) for o in (*SMALL, "bench.repeats=2"))
    frozen = {"backend": "torchscript", "backend.options.freeze": "true"}
    assert launched_jobs(log) == [{**shared, "backend": "eager"}, {**shared, **frozen}]
    for repeat in (0, 1):
        lines = [line for line in log.splitlines() if f"INFO] repeat {repeat}: opt " in line]
        whose = sorted(re.search(r"\[child ([^\]]*\]?)\]", line).group(1) for line in lines)
        assert whose == ["backend=eager", "backend=torchscript[freeze=true]"], lines
    # each run's own child.log names its backend the same way
    for folder in sweep.iterdir():
        if (folder / "child.log").exists():
            (row,) = read_rows(folder / "result.csv")[-1:]
            label = "backend=eager" if row.backend == "eager" else "backend=torchscript[freeze"
            assert f"[child {label}" in (folder / "child.log").read_text()
